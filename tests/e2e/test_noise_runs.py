"""Runs with label noise, end to end: the split, summaries and tables, `refinery label-issues`, cross-fitting
and noise priors."""

import csv
import json
import re

import numpy as np
import pytest
import torch

from labelrefinery.cli import main
from labelrefinery.data import load_dataset
from labelrefinery.noise import given_label_scores, noise_concentration
from labelrefinery.rundir import RunDir

from ..conftest import SHORT_RUN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("noisy")
    assert main([*SHORT_RUN, "--runs-dir", str(d), "--name", "n", "--generations", "2",
                 "--label-noise", "symmetric:0.3", "--label-smoothing", "0.1", "--gt-weight", "0.3"]) == 0
    return d / "n"


def test_noisy_run_split_summary_and_table(noisy_run):
    ds = load_dataset("digits")
    split = np.load(noisy_run / "seed-0/split.npz")
    clean_all = ds.train.labels.numpy()
    assert np.array_equal(split["clean_train_labels"], clean_all[split["train_indices"]])
    assert np.array_equal(split["clean_val_labels"], clean_all[split["val_indices"]])
    assert np.array_equal(split["train_flipped"], split["train_labels"] != split["clean_train_labels"])
    assert np.array_equal(split["val_labels"][~split["val_flipped"]], split["clean_val_labels"][~split["val_flipped"]])
    assert split["val_flipped"].any() and 0.2 < split["train_flipped"].mean() < 0.4
    assert np.array_equal(split["test_labels"], ds.test.labels.numpy())
    summary = json.loads((noisy_run / "seed-0/gen-1/summary.json").read_text())
    q = summary["label_quality"]
    assert set(q) == {"disputed", "flipped", "corrected", "harmed", "detection_precision", "detection_recall",
                      "detection_f1"}
    assert q["flipped"] == pytest.approx(split["train_flipped"].mean())
    assert set(summary["phase_time_s"]) == {"fit", "recalibrate", "relabel", "evaluate"}
    results = json.loads((noisy_run / "results.json").read_text())
    assert results["ensemble"][0]["generations"] == [1, 2]  # every run reports the ensemble of all generations
    best = results["best_by_validation"]["per_seed"]["0"]
    gens = results["per_seed"]["0"]
    assert best["val_top1"] == max(g["val_top1"] for g in gens)
    assert results["generations"][1]["gain_over_r1"]["mean"] == pytest.approx(gens[1]["test_top1"] - gens[0]["test_top1"])
    md = (noisy_run / "results.md").read_text()
    assert "| best by validation |" in md and "ensemble R1+R2" in md and "flipped corrected" in md


def test_stored_labels_are_the_refinerys_own(noisy_run):
    """With --gt-weight, labels.npz holds what the refinery said, not the mix with the ground truth."""
    from labelrefinery.batch import Pipeline
    from labelrefinery.device import resolve_precision
    from labelrefinery.inference import predict

    rd = RunDir(noisy_run)
    saved = rd.load_labels(0, 1)
    ds = load_dataset("digits")
    model, _ = rd.load_model(0, 1, torch.device("cpu"))
    pipe = Pipeline.create(torch.device("cpu"), ds.mean, ds.std, resolve_precision("auto", torch.device("cpu")))
    probs = predict(model, ds.train.images[torch.from_numpy(saved["indices"])], pipe).softmax(1).numpy()
    assert saved["refinery_only"] and np.allclose(saved["labels"], probs, atol=2e-3)


def test_label_issues_command(noisy_run, tmp_path, capsys):
    assert main(["label-issues", str(noisy_run), "--generation", "1"]) == 0
    assert "disputed" in capsys.readouterr().out
    rows = list(csv.DictReader((noisy_run / "label_issues.csv").open()))
    assert list(rows[0]) == ["rank", "index", "split", "given_label", "suggested_label", "p_given", "p_suggested",
                             "margin", "top3", "clean_label", "flipped"]
    p_given = [float(r["p_given"]) for r in rows]
    assert p_given == sorted(p_given) and all(r["given_label"] != r["suggested_label"] for r in rows)
    assert all(float(r["margin"]) < 0 for r in rows)
    probs = np.load(noisy_run / "label_issues_pred_probs.npy")
    labels = np.load(noisy_run / "label_issues_labels.npy")
    indices = np.load(noisy_run / "label_issues_indices.npy")
    assert probs.shape == (len(labels), 10) and np.all(np.diff(indices) > 0)
    split = np.load(noisy_run / "seed-0/split.npz")
    disputed = (given_label_scores(labels, probs)[1] < 0).sum()  # a tie with the top class is no dispute
    assert len(rows) == disputed  # training and validation images, each checked once
    assert sorted(indices) == sorted([*split["train_indices"], *split["val_indices"]])
    splits = np.load(noisy_run / "label_issues_splits.npy")
    assert (splits == "val").sum() == len(split["val_indices"]) and {r["split"] for r in rows} == {"train", "val"}
    # every image with --all, to a path of one's own
    assert main(["label-issues", str(noisy_run), "--all", "--out", str(tmp_path / "all.csv")]) == 0
    assert len(list(csv.DictReader((tmp_path / "all.csv").open()))) == len(labels)
    assert (tmp_path / "all_pred_probs.npy").is_file()


def test_changed_noise_refuses_to_continue(noisy_run, capsys):
    assert main([*SHORT_RUN, "--runs-dir", str(noisy_run.parent), "--name", "n", "--generations", "2",
                 "--label-noise", "symmetric:0.2", "--label-smoothing", "0.1", "--gt-weight", "0.3"]) == 2
    assert "label_noise" in capsys.readouterr().err


def test_label_issues_bad_input(tmp_path, noisy_run, capsys):
    assert main(["label-issues", str(tmp_path)]) == 2
    assert main(["label-issues", str(noisy_run), "--generation", "7"]) == 2
    assert main(["label-issues", str(noisy_run), "--seed", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "not a run directory" in err[0] and "not finished" in err[1] and "seed 3" in err[2]


def test_a_swap_noise_run_swaps_within_the_similar_pairs(tmp_path):
    """--label-noise swap:P in a run: every flipped training or validation label is its class's partner."""
    from labelrefinery.noise.inject import similar_class_pairs

    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "sw", "--generations", "1", "--epochs", "1",
                 "--label-noise", "swap:0.3"]) == 0
    ds = load_dataset("digits")
    partner = np.arange(10)
    for a, b in similar_class_pairs(ds.train.images, ds.train.labels, 10):
        partner[a], partner[b] = b, a
    split = np.load(tmp_path / "sw/seed-0/split.npz")
    for part in ("train", "val"):
        given, clean = split[f"{part}_labels"], split[f"clean_{part}_labels"]
        moved = given != clean
        assert moved.any() and np.array_equal(given[moved], partner[clean[moved]])


def test_cross_fit_run_and_bad_values(tmp_path, capsys):
    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "cf", "--generations", "2", "--cross-fit", "3",
                 "--label-noise", "pairflip:0.2"]) == 0
    summary = json.loads((tmp_path / "cf/seed-0/gen-2/summary.json").read_text())
    assert summary["label_quality"]["corrected"] is not None
    assert "cross-fit fold 3/3" in capsys.readouterr().err
    for bad, message in (("1", "--cross-fit must be 0 or in [2"), ("500", "--cross-fit 500 exceeds")):
        assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "bad", "--cross-fit", bad]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_label_issues_out_never_overwrites_run_files(noisy_run, tmp_path, capsys):
    summary = noisy_run / "seed-0/gen-1/summary.json"
    before = summary.read_bytes()
    for out in (summary, noisy_run / "seed-0/gen-1/issues.csv", tmp_path, tmp_path / "x.txt"):
        assert main(["label-issues", str(noisy_run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--out" in err
    assert summary.read_bytes() == before
    assert not list(tmp_path.glob("*.npy")) and not list((noisy_run / "seed-0/gen-1").glob("issues*"))


def test_noise_prior_run_fits_the_posterior(tmp_path, monkeypatch):
    """--noise-prior auto: R1 records its estimate, R2 fits the posterior of R1's de-noised labels at that rate,
    R3 the posterior of R2's labels as they are."""
    from labelrefinery.targets import LabelRecipe

    calls = []
    original = LabelRecipe.mix

    def spy(self, refined, ground_truth, transition=None, denoise=False):
        calls.append((refined.clone(), ground_truth.clone(), transition, denoise))
        return original(self, refined, ground_truth, transition, denoise)

    monkeypatch.setattr(LabelRecipe, "mix", spy)
    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "np", "--generations", "3", "--epochs", "1",
                 "--label-noise", "symmetric:0.4", "--noise-prior", "auto"]) == 0
    rd = RunDir(tmp_path / "np")
    estimate = rd.read_summary(0, 1)["symmetric_noise_estimate"]
    assert 0 < estimate < 0.9
    from labelrefinery.noise import symmetric_transition

    assert [denoise for *_, denoise in calls] == [True, False]
    assert all(torch.allclose(t, symmetric_transition(10, estimate)) for *_, t, _ in calls)
    r1 = torch.from_numpy(rd.load_labels(0, 1)["labels"])
    assert torch.allclose(calls[0][0], r1)
    assert "symmetric_noise_estimate" not in rd.read_summary(0, 2)
    assert f"suggest about {100 * estimate:.0f}% of the given labels are wrong" in (tmp_path / "np/results.md").read_text()


def test_classwise_noise_prior_run(tmp_path, monkeypatch, capsys):
    """--noise-prior classwise: R2 and R3 fit posteriors under the matrix estimated from R1's stored labels at the
    temperature that calibrates R1 on validation (R3's read back from disk), and R1's summary and results.md report
    the estimate."""
    from labelrefinery.noise import estimate_noise_transition, temperature_scaled
    from labelrefinery.targets import LabelRecipe

    calls = []
    original = LabelRecipe.mix

    def spy(self, refined, ground_truth, transition=None, denoise=False):
        calls.append((transition, denoise))
        return original(self, refined, ground_truth, transition, denoise)

    monkeypatch.setattr(LabelRecipe, "mix", spy)
    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "cw", "--generations", "3", "--epochs", "2",
                 "--label-noise", "pairflip:0.3", "--noise-prior", "classwise"]) == 0
    rd = RunDir(tmp_path / "cw")
    saved, split = rd.load_labels(0, 1), rd.read_split(0)
    by_index = torch.full((int(split["train_indices"].max()) + 1,), -1)
    by_index[torch.from_numpy(split["train_indices"])] = torch.from_numpy(split["train_labels"])
    given = by_index[torch.from_numpy(saved["indices"])]
    assert [denoise for _, denoise in calls] == [True, False]
    temperature = rd.read_summary(0, 1)["calibration_temperature"]
    assert temperature > 0 and temperature != 1.0
    assert torch.allclose(calls[0][0], estimate_noise_transition(
        given, temperature_scaled(torch.from_numpy(saved["labels"]), temperature)))
    assert torch.equal(calls[0][0], calls[1][0])  # R3's matrix, from R1's labels read back, is R2's
    t = calls[0][0]
    shares = torch.bincount(given, minlength=10).float() / len(given)
    estimate = rd.read_summary(0, 1)["classwise_noise_estimate"]
    assert estimate["rate"] == pytest.approx(float((shares * (1 - t.diagonal())).sum()))
    assert estimate["concentration"] == pytest.approx(noise_concentration(given, t))
    assert len(estimate["largest"]) == 5 and all(t[c, y] == pytest.approx(v, abs=1e-4)
                                                 for c, y, v in estimate["largest"])
    assert "classwise_noise_estimate" not in rd.read_summary(0, 2)
    assert "Class by class (`--noise-prior classwise`)" in (tmp_path / "cw/results.md").read_text()
    assert "(--noise-prior classwise uses these)" in capsys.readouterr().err  # the log names the confusions it uses


def test_resume_names_an_invalid_value_before_comparing_settings(tmp_path, capsys):
    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "r", "--generations", "1", "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path / "r"), "--noise-prior", "bogus", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--noise-prior must be auto, classwise, evidence, verified or a share P" in err and "would change" not in err


def test_annotator_like_noise_with_and_without_verified_labels(tmp_path, capsys):
    """idn noise: without --trusted the page says validation is as noisy as training (and R1's held-out
    disagreement with its interval); with --trusted N the verified labels are the validation split, give the
    share of wrong labels with its interval, and --noise-prior evidence corrects R1's labels on them."""
    base = [*SHORT_RUN, "--runs-dir", str(tmp_path), "--label-noise", "idn:0.3", "--generations", "2",
            "--noise-prior", "evidence"]
    assert main([*base, "--name", "plain"]) == 0
    plain = json.loads((tmp_path / "plain/seed-0/gen-1/summary.json").read_text())
    e = plain["noise_evidence"]
    assert e["source"] == "held-out" and e["low"] <= e["rate"] <= e["high"]
    assert e["rate"] == pytest.approx(1 - plain["val_top1"] / 100, abs=1 / e["images"])
    md = (tmp_path / "plain/results.md").read_text()
    assert "**Validation is as noisy as training**" in md and "--noise-prior evidence: " in capsys.readouterr().err
    assert main([*base, "--name", "trusted", "--trusted", "100"]) == 0
    err = capsys.readouterr().err
    assert "[seed 0 R2] --noise-prior evidence: verified (corrected on the verified labels)" in err
    r2 = json.loads((tmp_path / "trusted/seed-0/gen-2/summary.json").read_text())
    c = r2["verified_correction"]
    assert f"agree with {c['verified_top1_before']:.1f}% of them, corrected {c['verified_top1_after']:.1f}%" in err
    summary = json.loads((tmp_path / "trusted/seed-0/gen-1/summary.json").read_text())
    split = np.load(tmp_path / "trusted/seed-0/split.npz")
    wrong = float((split["val_labels"] != split["clean_val_labels"]).mean())
    assert wrong == 0.0 and len(split["val_indices"]) == 100  # validation = the verified labels
    given = noisy_given(split["val_indices"])
    e = summary["noise_evidence"]
    assert e["source"] == "trusted" and e["images"] == 100
    assert e["rate"] == pytest.approx(float((given != split["val_labels"]).mean()))
    md = (tmp_path / "trusted/results.md").read_text()
    assert f"**Wrong labels: {100 * e['rate']:.1f}% (95% interval" in md and "Validation is as noisy" not in md
    assert f"agree with {c['verified_top1_before']:.1f}% of the verified labels" in md


def noisy_given(indices):
    """The given (idn:0.3) labels of training images ``indices`` of digits."""
    from labelrefinery.noise import inject_label_noise
    from labelrefinery.seeding import label_noise_generator

    ds = load_dataset("digits")
    noisy = inject_label_noise(ds.train.labels, "idn:0.3", 10, label_noise_generator(), ds.train.images).noisy
    return noisy.numpy()[indices]


def test_a_bad_verified_label_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "v.csv"
    f.write_text("index,label\n3,seven\n")
    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "x", "--trusted", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2: label 'seven'" in err[0] and not (tmp_path / "x").exists()


def test_true_labels_score_the_refined_labels_on_their_images_only(tmp_path, capsys):
    """--true-labels FILE: corrected / harmed / detection on the listed training images, recomputed here from
    labels.npz by hand; the images train with their given labels."""
    ds = load_dataset("digits")
    truth = {i: (int(ds.train.labels[i]) + (1 if i % 4 == 0 else 0)) % 10 for i in range(0, len(ds.train), 3)}
    f = tmp_path / "true.csv"
    f.write_text("index,label\n" + "".join(f"{i},{ds.classes[y]}\n" for i, y in truth.items()))
    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "t", "--true-labels", str(f)]) == 0
    assert "against the" in capsys.readouterr().err
    summary = json.loads((tmp_path / "t/seed-0/gen-1/summary.json").read_text())
    labels = np.load(tmp_path / "t/seed-0/gen-1/labels.npz")
    idx, rows = labels["indices"], labels["labels"].astype(np.float32)
    given = ds.train.labels.numpy()[idx]
    listed = np.array([i in truth for i in idx])
    true = np.array([truth.get(int(i), -1) for i in idx])
    p_given = rows[np.arange(len(idx)), given]
    disputed = rows.max(1) > p_given
    suggested = np.where(disputed, rows.argmax(1), given)
    flipped = listed & (given != true)
    q = summary["label_quality"]
    assert summary["true_labels_scored"] == int(listed.sum())
    assert q["flipped"] == pytest.approx(flipped.sum() / listed.sum())
    assert q["corrected"] == pytest.approx((flipped & (suggested == true)).sum() / flipped.sum())
    assert q["harmed"] == pytest.approx((listed & ~flipped & disputed).sum() / (listed & ~flipped).sum())
    assert q["disputed"] == pytest.approx(disputed.mean())  # over every training image
    split = np.load(tmp_path / "t/seed-0/split.npz")
    assert np.array_equal(split["train_labels"], ds.train.labels.numpy()[split["train_indices"]])
    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "u", "--true-labels", str(f),
                 "--label-noise", "symmetric:0.2"]) == 2


def test_all_seeds_rank_by_the_mean_of_every_seeds_opinion(tmp_path, capsys):
    """label-issues --all-seeds: each image's probabilities are the mean over the seeds that checked it (each
    seed's own file read back here), split says where each seed held it; the line names every seed."""
    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "s", "--seeds", "2", "--generations", "1",
                 "--label-noise", "symmetric:0.3", "--label-issues"]) == 0
    run = tmp_path / "s"
    # the run's own list (--label-issues, --preset noisy) is the seeds' mean opinion too
    assert re.search(r"label_issues.csv: .* by the mean of seed 0's R1, seed 1's R1", capsys.readouterr().err)
    own = {name: np.load(run / f"label_issues_{name}.npy") for name in ("indices", "pred_probs")}
    per_seed = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}.csv"
        assert main(["label-issues", str(run), "--seed", str(seed), "--out", str(out)]) == 0
        stem = out.with_suffix("")
        per_seed[seed] = {int(i): (p, s) for i, p, s in zip(np.load(f"{stem}_indices.npy"),
                                                            np.load(f"{stem}_pred_probs.npy"),
                                                            np.load(f"{stem}_splits.npy"))}
    capsys.readouterr()
    assert main(["label-issues", str(run), "--all-seeds", "--out", str(tmp_path / "all.csv")]) == 0
    assert re.search(r"by the mean of seed 0's R\d, seed 1's R\d, the best by validation", capsys.readouterr().out)
    indices, probs = np.load(tmp_path / "all_indices.npy"), np.load(tmp_path / "all_pred_probs.npy")
    assert np.array_equal(own["indices"], indices) and np.allclose(own["pred_probs"], probs)
    splits = np.load(tmp_path / "all_splits.npy")
    assert set(indices.tolist()) == set(per_seed[0]) | set(per_seed[1])
    for i, p, s in zip(indices.tolist(), probs, splits):
        opinions = [per_seed[seed][i] for seed in (0, 1) if i in per_seed[seed]]
        assert np.allclose(p, np.mean([o[0] for o in opinions], axis=0), atol=1e-6)
        assert set(s.split("+")) == {o[1] for o in opinions}
    assert "val+train" in set(splits.tolist())  # an image each seed held differently


def test_test_labels_are_checked_when_asked(noisy_run, capsys):
    """label-issues --test: the test images the run reports on, by the saved model, into label_issues_test.csv;
    index = position in the test split; the training list is left as it was."""
    from labelrefinery.classifier import load_classifier

    before = (noisy_run / "label_issues.csv").read_bytes() if (noisy_run / "label_issues.csv").exists() else None
    assert main(["label-issues", str(noisy_run), "--test", "--generation", "1", "--all"]) == 0
    out = capsys.readouterr().out
    ds = load_dataset("digits")
    assert f"{len(ds.test)} rows for all {len(ds.test)} images checked ({len(ds.test)} test) by seed 0's R1" in out
    rows = list(csv.DictReader((noisy_run / "label_issues_test.csv").open()))
    assert {r["split"] for r in rows} == {"test"} and len(rows) == len(ds.test)
    probs = load_classifier(noisy_run, generation=1).predict_proba(ds.test.images).numpy()
    for r in rows[:20]:
        i = int(r["index"])
        assert r["given_label"] == ds.classes[int(ds.test.labels[i])]
        assert float(r["p_given"]) == pytest.approx(float(probs[i, int(ds.test.labels[i])]), abs=1e-4)
    after = (noisy_run / "label_issues.csv").read_bytes() if (noisy_run / "label_issues.csv").exists() else None
    assert after == before
    assert main(["label-issues", str(noisy_run), "--test", "--write-labels", "x.csv"]) == 2
