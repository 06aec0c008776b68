"""Reports: label statistics and image picks of `refinery inspect`, label-issue ranking, the results tables."""

import numpy as np
import pytest

from labelrefinery.noise import entropy, generation_label_stats
from labelrefinery.noise import rank_label_issues
from labelrefinery.report.labelstats import class_overlap, confusion, crop_disagreement, pick_images, top_k


def test_entropy_overlap_confusion_by_hand():
    probs = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.2, 0.6], [0.0, 0.0, 1.0]])
    labels = np.array([0, 0, 2, 2])
    assert entropy(probs).tolist() == pytest.approx([np.log(2), 0.0, -(2 * 0.2 * np.log(0.2) + 0.6 * np.log(0.6)), 0])
    overlap = class_overlap(probs, labels, 3)
    assert overlap[0].tolist() == pytest.approx([0.75, 0.25, 0.0])
    assert np.isnan(overlap[1]).all()  # no image is labelled 1
    assert overlap[2].tolist() == pytest.approx([0.1, 0.1, 0.8])
    assert confusion(labels, probs.argmax(1), 3).tolist() == [[2, 0, 0], [0, 0, 0], [0, 0, 2]]


def test_generation_stats_and_top_k_by_hand():
    given = np.array([0, 1, 1, 0])
    r1 = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.8, 0.2]])
    r2 = np.array([[0.4, 0.6], [0.3, 0.7], [0.6, 0.4], [0.8, 0.2]])
    s1, s2 = generation_label_stats(given, [r1, r2])
    assert s1["agreement"] == 0.75 and s1["changed"] == 0.25  # R1 against the given labels
    assert s2["agreement"] == 0.5 and s2["changed"] == 0.25  # R2 against R1's argmax
    assert s1["mean_entropy"] == pytest.approx(entropy(r1).mean())
    ks, ps = top_k(np.array([[0.1, 0.5, 0.1, 0.3]]), 3)
    assert ks.tolist() == [[1, 3, 0]] and ps.tolist() == [[0.5, 0.3, 0.1]]


def test_pick_images_by_hand():
    given = np.array([0, 0, 1, 1, 0])
    clean = np.array([0, 1, 1, 0, 0])  # images 1 and 3 were flipped
    r1 = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.7, 0.3], [0.7, 0.3]])
    r2 = np.array([[0.95, 0.05], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2], [0.15, 0.85]])
    groups = pick_images([r1, r2], given, 2, np.random.default_rng(0), clean)
    assert groups["disputed"].tolist() == [1, 4]  # p(given) in R2: 0.1, 0.15
    assert groups["changed"].tolist() == [4, 2]  # total variation R1 -> R2: 0.55, 0.2
    assert groups["flipped_corrected"].tolist() == [1, 3]  # both flips corrected, most confident first
    assert groups["flipped_missed"].tolist() == []
    assert groups["clean_harmed"].tolist() == [4]
    assert len(set(groups["random"].tolist())) == 2


def test_crop_disagreement_prefers_confident_different_crops():
    sure_apart = [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]]  # two confident crops, two classes
    unsure = [[0.4, 0.3, 0.3], [0.3, 0.4, 0.3]]  # two classes, neither crop confident
    same = [[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]]
    scores = crop_disagreement(np.array([sure_apart, unsure, same]))
    assert scores.argmax() == 0 and scores[0] >= 2 > scores[2] >= 1 > scores[1]


def test_rank_label_issues_order():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.2, 0.8]], dtype=np.float32)
    given = np.array([0, 0, 0, 1])
    assert rank_label_issues(given, probs).tolist() == [1, 2, 3, 0]


def test_results_name_the_classwise_estimate_when_it_says_more_than_the_symmetric_one():
    from labelrefinery.report.tables import _label_table

    def table(symmetric, classwise, prior="0", looks=True, concentration=0.9):
        r = {"config": {"noise_prior": prior, "label_issues": looks}, "generations": [
            {"generation": 1, "label_quality": {"disputed": 0.1}, "symmetric_noise_estimate": symmetric,
             "classwise_noise_rate": classwise, "classwise_noise_concentration": concentration,
             "classwise_noise_capped": classwise == 0.1,  # at the disputed share: the estimator capped it
             "calibration_temperature": 0.77}]}
        return "\n".join(_label_table(r, "x"))

    assert "Class by class" not in table(0.0, 0.034)  # clean labels: classes the model finds alike
    assert "they suggest 29%" in table(0.01, 0.29)  # pair flips: the symmetric estimate misses them
    assert "depend on the true class; try `--noise-prior classwise`." in table(0.01, 0.29)
    assert "depend on the true class." in table(0.01, 0.29, prior="classwise")
    assert "they suggest 3%" in table(0.0, 0.034, prior="classwise")  # always when used
    assert "depend on" not in table(0.0, 0.034, prior="classwise")
    assert "suggest" not in table(0.01, 0.29, looks=False)  # a plain run that does not ask about wrong labels
    assert "calibrated on the validation images (temperature 0.77), suggest about 1%" in table(0.01, 0.29)
    # symmetric noise with R1's own confusions on top: above, but spread, so no advice to switch models
    spread = table(0.34, 0.48, prior="evidence", concentration=0.26)
    capped = table(0.02, 0.1, prior="evidence", concentration=0.26)  # the label table's disputed share: 0.1
    assert "they suggest 10% (mean over seeds; at its cap, the share of labels R1 disputes;" in capped
    assert "at its cap" not in table(0.01, 0.29)
    assert "only 26% of the wrong labels go to their class's most frequent other class" in spread
    assert "try `--noise-prior classwise`" not in spread and "depend on the true class" not in spread
    assert "depend on the true class." in table(0.01, 0.29, prior="evidence")  # evidence chooses by itself


def test_a_loss_of_later_generations_is_explained_with_the_recipes_that_pay():
    from labelrefinery.report.tables import _below_r1_lines

    def lines(gains, config=None, ensemble=None):
        r = {"config": config or {"noise_prior": "0"}, "ensemble": ensemble or [],
             "generations": [{"generation": 1}] + [{"generation": g + 2, "gain_over_r1": {"mean": d}}
                                                   for g, d in enumerate(gains)]}
        return " ".join(_below_r1_lines(r, ""))

    text = lines([-0.21, -0.61])
    assert text.startswith("R2 (-0.21), R3 (-0.61) end below R1.") and "use R1" in text
    assert "--preset refine" in text and "--preset noisy" in text
    assert lines([-0.05, 0.3]) == ""  # within 0.1 of R1, or above it: nothing to explain
    assert lines([-0.5], {"label_noise": "symmetric:0.4", "noise_prior": "0"}) == ""  # noisy runs say their own
    assert lines([-0.5], {"noise_prior": "auto"}) == ""
    ens = [{"generations": [1, 2, 3], "gain_over_r1": {"mean": 0.12}}]
    assert "use the ensemble of R1+R2+R3 (+0.12)" in lines([-0.2, -0.4], ensemble=ens)


def test_the_next_label_file_never_names_the_runs_own():
    from labelrefinery.report.tables import next_label_file

    assert next_label_file("folder:/data/photos") == "fixed.csv"
    assert next_label_file("csv:/data/labels.csv") == "fixed.csv"
    assert next_label_file("csv:/tmp/fixed.csv") == "fixed-2.csv"
    assert next_label_file("csv:fixed-2.csv") == "fixed-3.csv"


def test_a_control_that_beats_the_chosen_generation_is_named():
    from labelrefinery.report.tables import _control_beats

    r = {"run_dir": "runs/x", "best_by_validation": {"test_top1_mean": 93.33},
         "controls": {"equal-compute": {"test_top1_mean": 95.83}, "label-smoothing": {"test_top1_mean": 93.0}}}
    text = _control_beats(r)
    assert "one model trained as long as the whole chain scored higher on test (95.83% against 93.33%" in text
    assert "runs/x/seed-0/control-equal-compute/model.safetensors" in text
    r["controls"]["equal-compute"]["test_top1_mean"] = 93.4  # within 0.1: no sentence
    assert _control_beats(r) == ""


def test_the_next_command_takes_the_opinion_the_run_wrote():
    """results.md's Next: `label-issues --write-labels` with --all-seeds when the run has several seeds (its own
    label_issues.csv is their mean opinion), without it for one seed; a dataset without files gets no command."""
    from labelrefinery.report.tables import _next_lines

    def text(seeds, dataset="folder:/data/photos"):
        gens = [{"generation": 1, "test_top1": 90.0}]
        r = {"run_dir": "runs/x", "config": {"dataset": dataset}, "generations": gens,
             "per_seed": {str(s): gens for s in range(seeds)},
             "best_by_validation": {"per_seed": {"0": {"generation": 1, "val_top1": 91.0, "test_top1": 90.0}}}}
        return " ".join(_next_lines(r))

    assert "`refinery label-issues runs/x --all-seeds --write-labels fixed.csv`" in text(3)
    assert "`refinery label-issues runs/x --write-labels fixed.csv`" in text(1)
    assert "--write-labels" not in text(3, "fashion-mnist")
