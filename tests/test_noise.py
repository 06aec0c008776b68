"""Label noise, label quality, label smoothing, the results rows and `refinery label-issues`."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from labelrefinery.cli import main
from labelrefinery.config import parse_label_noise, resolve_config
from labelrefinery.data import load_dataset
from labelrefinery.errors import ConfigError
from labelrefinery.report.labelissues import given_label_scores, rank_label_issues
from labelrefinery.losses import smooth_targets
from labelrefinery.noise import label_statistics
from labelrefinery.noise import inject_label_noise
from labelrefinery.protocol import seed_data, with_label_noise
from labelrefinery.rundir import RunDir
from labelrefinery.seeding import label_noise_generator
from labelrefinery.targets import StoredTargets


def test_symmetric_noise_rate_and_classes():
    labels = torch.arange(60000) % 10
    noise = inject_label_noise(labels, "symmetric:0.4", 10, label_noise_generator())
    rate = noise.flipped.float().mean().item()
    assert abs(rate - 0.4) < 4 * math.sqrt(0.4 * 0.6 / 60000)  # within binomial error
    assert torch.equal(noise.clean, labels) and torch.equal(noise.flipped, noise.noisy != labels)
    # every other class is reached about equally often from class 0
    moved = noise.noisy[(labels == 0) & noise.flipped]
    counts = torch.bincount(moved, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.6 * counts[1:].float().mean()
    again = inject_label_noise(labels, "symmetric:0.4", 10, label_noise_generator())
    assert torch.equal(again.noisy, noise.noisy)  # one stream, the same corruption every time


def test_pairflip_moves_to_next_class():
    labels = torch.arange(1000) % 4
    noise = inject_label_noise(labels, "pairflip:0.3", 4, label_noise_generator())
    assert torch.equal(noise.noisy[noise.flipped], (labels[noise.flipped] + 1) % 4)
    assert 0.25 < noise.flipped.float().mean() < 0.35


@pytest.mark.parametrize("spec", ["uniform:0.2", "symmetric", "symmetric:-0.1", "symmetric:1", "pairflip:x"])
def test_bad_noise_spec(spec):
    with pytest.raises(ConfigError, match="--label-noise must be symmetric:P or pairflip:P"):
        parse_label_noise(spec)


def test_noise_rate_bound_needs_classes():
    with pytest.raises(ConfigError, match=r"P must be in \[0, 0.750\) for 4 classes"):
        inject_label_noise(torch.zeros(10, dtype=torch.int64), "symmetric:0.8", 4, label_noise_generator())


def test_noise_touches_training_split_only_and_every_seed_sees_it():
    ds = load_dataset("digits")
    noisy, noise = with_label_noise(ds, "symmetric:0.3")
    assert torch.equal(noisy.test.labels, ds.test.labels) and torch.equal(noisy.train.images, ds.train.images)
    assert torch.equal(noise.clean, ds.train.labels) and torch.equal(noisy.train.labels, noise.noisy)
    cfg = resolve_config("quick", {"dataset": "digits", "label_noise": "symmetric:0.3"})
    for seed in (0, 1):
        data = seed_data(noisy, cfg, seed, torch.device("cpu"), noise)
        assert torch.equal(data.views.labels, noise.noisy[data.views.indices])
        assert torch.equal(data.clean_labels, ds.train.labels[data.views.indices])
        assert torch.equal(data.val_labels, noise.noisy[data.val_idx])  # validation is as noisy as training
        assert torch.equal(data.test_labels, ds.test.labels)


def test_label_quality_hand_made():
    # 6 images, 3 classes. clean: 0 0 1 1 2 2; given: flips at 1 (0->1) and 4 (2->0).
    clean = torch.tensor([0, 0, 1, 1, 2, 2])
    given = torch.tensor([0, 1, 1, 1, 0, 2])
    # refined argmax: 0 0 1 2 1 2 -> image 1 corrected; image 4 disputed but wrong; image 3 clean and harmed.
    refined = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 2, 1, 2]), 3).float().numpy()
    clean, given = clean.numpy(), given.numpy()
    q = label_statistics(given, refined, clean)
    assert q["disputed"] == pytest.approx(3 / 6)
    assert q["flipped"] == pytest.approx(2 / 6)
    assert q["corrected"] == pytest.approx(1 / 2)
    assert q["harmed"] == pytest.approx(1 / 4)
    assert q["detection_precision"] == pytest.approx(2 / 3) and q["detection_recall"] == pytest.approx(1.0)
    assert q["detection_f1"] == pytest.approx(0.8)
    assert set(label_statistics(given, refined)) == {"mean_entropy", "agreement", "disputed", "changed"}
    assert label_statistics(given, refined)["agreement"] == pytest.approx(0.5)
    none_flipped = label_statistics(clean, refined, clean)
    assert none_flipped["corrected"] is None and none_flipped["detection_recall"] is None


def test_smooth_targets():
    t = smooth_targets(torch.tensor([2, 0]), 4, 0.2)
    assert torch.allclose(t, torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]]))
    soft = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert torch.allclose(smooth_targets(soft, 4, 0.2), torch.tensor([[0.45, 0.45, 0.05, 0.05]]))
    idx = torch.tensor([1])
    assert smooth_targets(idx, 4, 0.0) is idx
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        smooth_targets(idx, 4, 1.0)


def test_rank_label_issues_order():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.2, 0.8]], dtype=np.float32)
    given = np.array([0, 0, 0, 1])
    assert rank_label_issues(probs, given).tolist() == [1, 2, 3, 0]


COMMON = ["run", "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("noisy")
    assert main([*COMMON, "--runs-dir", str(d), "--name", "n", "--generations", "2",
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
    assert list(rows[0]) == ["rank", "index", "given_label", "suggested_label", "p_given", "p_suggested", "margin",
                             "top3", "clean_label", "flipped"]
    p_given = [float(r["p_given"]) for r in rows]
    assert p_given == sorted(p_given) and all(r["given_label"] != r["suggested_label"] for r in rows)
    assert all(float(r["margin"]) < 0 for r in rows)
    probs = np.load(noisy_run / "label_issues_pred_probs.npy")
    labels = np.load(noisy_run / "label_issues_labels.npy")
    indices = np.load(noisy_run / "label_issues_indices.npy")
    assert probs.shape == (len(labels), 10) and np.all(np.diff(indices) > 0)
    split = np.load(noisy_run / "seed-0/split.npz")
    disputed = (given_label_scores(probs, labels)[1] < 0).sum()  # a tie with the top class is no dispute
    assert len(rows) == disputed and set(indices) == set(split["train_indices"])
    # every image with --all, to a path of one's own
    assert main(["label-issues", str(noisy_run), "--all", "--out", str(tmp_path / "all.csv")]) == 0
    assert len(list(csv.DictReader((tmp_path / "all.csv").open()))) == len(labels)
    assert (tmp_path / "all_pred_probs.npy").is_file()


@pytest.mark.parametrize("args, message", [
    (["--label-noise", "uniform:0.2"], "--label-noise must be"),
    (["--label-noise", "symmetric:0.95"], "P must be in"),
    (["--label-smoothing", "1.0"], "--label-smoothing must be in [0, 1)"),
])
def test_bad_noise_flags_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    assert main([*COMMON, "--runs-dir", str(tmp_path), "--name", "bad", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_changed_noise_refuses_to_continue(noisy_run, capsys):
    assert main([*COMMON, "--runs-dir", str(noisy_run.parent), "--name", "n", "--generations", "2",
                 "--label-noise", "symmetric:0.2", "--label-smoothing", "0.1", "--gt-weight", "0.3"]) == 2
    assert "label_noise" in capsys.readouterr().err


def test_label_issues_bad_input(tmp_path, noisy_run, capsys):
    assert main(["label-issues", str(tmp_path)]) == 2
    assert main(["label-issues", str(noisy_run), "--generation", "7"]) == 2
    assert main(["label-issues", str(noisy_run), "--seed", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "not a run directory" in err[0] and "not finished" in err[1] and "seed 3" in err[2]


def test_cross_fit_never_labels_an_image_with_a_model_that_trained_on_it(monkeypatch):
    import labelrefinery.generation as generation
    from labelrefinery.chain import prepare

    cfg = resolve_config("quick", {"dataset": "digits", "epochs": 1, "batch_size": 64, "cross_fit": 3,
                                   "augment": "static", "static_copies": 1, "progress": False})
    from labelrefinery.augment import static_copies

    exp = prepare(cfg, RunDir("/nonexistent/never-made"))
    data = seed_data(exp.dataset, cfg, 0, torch.device("cpu"), static_copies=static_copies)
    trained_on, labelled = [], []
    real_predict = generation.predict

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def subset(self, positions):
            trained_on.append(set(data.views.indices[positions].tolist()))
            return self.inner.subset(positions)

    def predict(model, images, pipeline, *a, **k):
        labelled.append(len(images))
        return real_predict(model, images, pipeline, *a, **k)

    monkeypatch.setattr(generation, "predict", predict)
    targets = Recording(StoredTargets(data.ground_truth, num_classes=10))
    refined = generation.cross_fit_labels(exp, data, 1, targets)
    assert refined.shape == (len(data.views.indices), 10) and torch.allclose(refined.sum(1), torch.ones(len(refined)))
    assert len(trained_on) == 3 and sum(labelled) == len(data.views.indices)
    everything = set(data.views.indices.tolist())
    held = [everything - t for t in trained_on]
    assert set().union(*held) == everything  # every image is labelled ...
    assert sum(len(h) for h in held) == len(everything)  # ... by exactly one fold model, which never saw it
    # stratified: every fold holds every class in about the same share
    given = dict(zip(data.views.indices.tolist(), data.views.labels.tolist()))
    for h in held:
        counts = np.bincount([given[i] for i in h], minlength=10)
        assert counts.min() > 0.25 * counts.mean()


def test_cross_fit_run_and_bad_values(tmp_path, capsys):
    assert main([*COMMON, "--runs-dir", str(tmp_path), "--name", "cf", "--generations", "2", "--cross-fit", "3",
                 "--label-noise", "pairflip:0.2"]) == 0
    summary = json.loads((tmp_path / "cf/seed-0/gen-2/summary.json").read_text())
    assert summary["label_quality"]["corrected"] is not None
    assert "cross-fit fold 3/3" in capsys.readouterr().err
    for bad, message in (("1", "--cross-fit must be 0 or in [2"), ("500", "--cross-fit 500 exceeds")):
        assert main([*COMMON, "--runs-dir", str(tmp_path), "--name", "bad", "--cross-fit", bad]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_controls_rows_and_resume(tmp_path):
    args = [*COMMON, "--runs-dir", str(tmp_path), "--name", "c", "--generations", "2"]
    assert main(args) == 0
    assert main([*args, "--controls"]) == 0  # adding the controls continues the run
    run = tmp_path / "c"
    ls = json.loads((run / "seed-0/control-label-smoothing/summary.json").read_text())
    eq = json.loads((run / "seed-0/control-equal-compute/summary.json").read_text())
    assert ls["epochs_run"] == 2 and eq["epochs_run"] == 4  # R1's epochs; generations x epochs
    results = json.loads((run / "results.json").read_text())
    r1 = results["per_seed"]["0"][0]["test_top1"]
    assert results["controls"]["equal-compute"]["gain_over_r1"]["mean"] == pytest.approx(eq["test_top1"] - r1)
    assert [g["generation"] for g in results["generations"]] == [1, 2]  # controls are not generations
    md = (run / "results.md").read_text()
    assert "| label-smoothing control |" in md and "| equal-compute control |" in md
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["generation"] for r in epochs if r["kind"] == "epoch"} == {1, 2, "label-smoothing", "equal-compute"}


def test_label_issues_out_never_overwrites_run_files(noisy_run, tmp_path, capsys):
    summary = noisy_run / "seed-0/gen-1/summary.json"
    before = summary.read_bytes()
    for out in (summary, noisy_run / "seed-0/gen-1/issues.csv", tmp_path, tmp_path / "x.txt"):
        assert main(["label-issues", str(noisy_run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--out" in err
    assert summary.read_bytes() == before
    assert not list(tmp_path.glob("*.npy")) and not list((noisy_run / "seed-0/gen-1").glob("issues*"))


def test_noise_spec_is_compared_by_value():
    a = resolve_config("quick", {"label_noise": "symmetric:0.30"}).data.label_noise
    b = resolve_config("quick", {"label_noise": "symmetric:.3"}).data.label_noise
    assert a == b == "symmetric:0.3"


def test_controls_cannot_be_dropped(tmp_path, capsys):
    args = [*COMMON, "--runs-dir", str(tmp_path), "--name", "k", "--generations", "2"]
    assert main([*args, "--controls"]) == 0
    assert main([*args, "--seeds", "2"]) == 0  # without --controls: kept, and trained for the new seed
    assert "keeping --controls" in capsys.readouterr().err
    assert RunDir(tmp_path / "k").read_config().refinement.controls
    assert RunDir(tmp_path / "k").finished_controls(1) == ["equal-compute", "label-smoothing"]
    assert "of 2 seeds]" not in (tmp_path / "k/results.md").read_text()


def _noisy_rows(clean: torch.Tensor, rate: float, num_classes: int) -> torch.Tensor:
    """What a refinery sure of each image's true class predicts after fitting labels with symmetric noise."""
    rows = torch.full((len(clean), num_classes), rate / (num_classes - 1))
    return rows.scatter_(1, clean.view(-1, 1), 1 - rate)


def test_symmetric_noise_estimate():
    from labelrefinery.noise import estimate_symmetric_noise

    clean = torch.arange(500) % 10
    given = clean.clone()
    given[:250] = (clean[:250] + 3) % 10  # half the given labels wrong: the cap (disputed share) is 0.5
    assert estimate_symmetric_noise(given, _noisy_rows(clean, 0.4, 10)) == pytest.approx(0.4, abs=1e-5)
    assert estimate_symmetric_noise(given, _noisy_rows(clean, 0.1, 10)) == pytest.approx(0.1, abs=1e-5)
    assert estimate_symmetric_noise(given, torch.eye(10)[clean]) == 0.0  # memorised: nothing to estimate
    # an ambiguous second class on every image does not move the estimate
    rows = _noisy_rows(clean, 0.4, 10)
    rows[torch.arange(500), (clean + 1) % 10] += 0.2
    rows[torch.arange(500), clean] -= 0.2
    assert estimate_symmetric_noise(given, rows) == pytest.approx(0.4, abs=1e-5)
    # an under-trained refinery, unsure of every image but disputing only 2% of the labels: capped at 0.02
    unsure = _noisy_rows(clean, 0.6, 10)
    assert estimate_symmetric_noise(torch.where(torch.arange(500) < 10, (clean + 1) % 10, clean), unsure) == \
        pytest.approx(0.02)


def test_noisy_label_posterior_hand_made():
    from labelrefinery.noise import noisy_label_posterior, symmetric_transition

    # K = 3, r = 0.3: T[c, y] = 0.7 if c == y else 0.15.
    t = symmetric_transition(3, 0.3)
    assert torch.allclose(t, torch.tensor([[0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]]))
    refined = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    given = torch.tensor([0, 1])
    q = noisy_label_posterior(given, refined, t, denoise=False)
    expected = torch.tensor([[0.6 * 0.7, 0.3 * 0.15, 0.1 * 0.15], [0.6 * 0.15, 0.3 * 0.7, 0.1 * 0.15]])
    assert torch.allclose(q, expected / expected.sum(1, keepdim=True))
    assert q[1].argmax() == 1  # the refinery's 0.6 does not overrule a given label it gives 0.3
    # rows of a refinery that fitted noisy labels map back to the true class before Bayes' rule
    noisy = _noisy_rows(torch.tensor([2, 2]), 0.3, 3)
    q = noisy_label_posterior(torch.tensor([2, 0]), noisy, t, denoise=True)
    assert q[0, 2] > 0.999 and q[1].argmax() == 2  # a wrong given label is corrected
    assert torch.allclose(q.sum(1), torch.ones(2))
    # the closed form of the symmetric inverse: p_c = (p~_c - r/(K-1)) / (1 - r K/(K-1)), clipped, renormalised
    soft = torch.tensor([[0.5, 0.3, 0.2]])
    back = ((soft - 0.15) / (1 - 0.3 * 3 / 2)).clamp_min(1e-4)
    back = back / back.sum()
    lik = torch.tensor([[0.15, 0.15, 0.7]])
    assert torch.allclose(noisy_label_posterior(torch.tensor([2]), soft, t, denoise=True),
                          back * lik / (back * lik).sum(), atol=1e-6)
    with pytest.raises(ValueError, match="noise rate must be in"):
        symmetric_transition(3, 0.7)
    with pytest.raises(ValueError, match="must be 3 x 3"):
        noisy_label_posterior(given, refined, torch.eye(4), denoise=False)


def _pairflip_rows(clean: torch.Tensor, rate: float, num_classes: int) -> torch.Tensor:
    """What a refinery sure of each image's true class predicts after fitting labels with pair-flip noise."""
    rows = torch.zeros(len(clean), num_classes)
    rows[torch.arange(len(clean)), clean] = 1 - rate
    rows[torch.arange(len(clean)), (clean + 1) % num_classes] += rate
    return rows


def test_noise_transition_estimate_class_by_class():
    from labelrefinery.noise import estimate_noise_transition, largest_transitions, noisy_label_posterior

    clean = torch.arange(1000) % 10
    given = torch.where(torch.arange(1000) % 100 < 30, (clean + 1) % 10, clean)  # 30% pair flips
    t = estimate_noise_transition(given, _pairflip_rows(clean, 0.3, 10))
    expected = 0.7 * torch.eye(10) + 0.3 * torch.roll(torch.eye(10), 1, dims=1)
    assert torch.allclose(t, expected, atol=1e-6)
    assert all(y == (c + 1) % 10 and v == 0.3 for c, y, v in largest_transitions(t, 3))
    # symmetric noise reads as the symmetric matrix
    sym = _noisy_rows(clean, 0.4, 10)
    given_sym = torch.where(torch.arange(1000) % 100 < 40, (clean + 3) % 10, clean)
    assert torch.allclose(estimate_noise_transition(given_sym, sym),
                          0.6 * torch.eye(10) + 0.4 / 9 * (1 - torch.eye(10)), atol=1e-6)
    # memorised labels: nothing to estimate; an unsure refinery disputing 2% of labels is capped at 2%
    assert torch.equal(estimate_noise_transition(given, torch.eye(10)[clean]), torch.eye(10))
    unsure = estimate_noise_transition(torch.where(torch.arange(1000) < 20, (clean + 1) % 10, clean),
                                       _pairflip_rows(clean, 0.4, 10))
    assert float((1 - unsure.diagonal()).mean()) == pytest.approx(0.02, abs=1e-6)
    # the posterior with the estimate corrects a pair-flipped label, which symmetric noise cannot
    q = noisy_label_posterior(torch.tensor([5]), _pairflip_rows(torch.tensor([4]), 0.3, 10), t, denoise=True)
    assert q.argmax() == 4 and q[0, 4] > 0.99
    # a singular estimate (two classes' rows alike) still gives probability rows, not an error
    singular = t.clone()
    singular[1] = singular[0]
    q = noisy_label_posterior(given[:20], _pairflip_rows(clean[:20], 0.3, 10), singular, denoise=True)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(20))


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
    assert main([*COMMON, "--runs-dir", str(tmp_path), "--name", "np", "--generations", "3", "--epochs", "1",
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


def test_classwise_noise_prior_run(tmp_path, monkeypatch):
    """--noise-prior classwise: R2 and R3 fit posteriors under the matrix estimated from R1's stored labels
    (R3's read back from disk), and R1's summary and results.md report the estimate."""
    from labelrefinery.noise import estimate_noise_transition
    from labelrefinery.targets import LabelRecipe

    calls = []
    original = LabelRecipe.mix

    def spy(self, refined, ground_truth, transition=None, denoise=False):
        calls.append((transition, denoise))
        return original(self, refined, ground_truth, transition, denoise)

    monkeypatch.setattr(LabelRecipe, "mix", spy)
    assert main([*COMMON, "--runs-dir", str(tmp_path), "--name", "cw", "--generations", "3", "--epochs", "2",
                 "--label-noise", "pairflip:0.3", "--noise-prior", "classwise"]) == 0
    rd = RunDir(tmp_path / "cw")
    saved, split = rd.load_labels(0, 1), rd.read_split(0)
    by_index = torch.full((int(split["train_indices"].max()) + 1,), -1)
    by_index[torch.from_numpy(split["train_indices"])] = torch.from_numpy(split["train_labels"])
    given = by_index[torch.from_numpy(saved["indices"])]
    assert [denoise for _, denoise in calls] == [True, False]
    assert torch.allclose(calls[0][0], estimate_noise_transition(given, torch.from_numpy(saved["labels"])))
    assert torch.equal(calls[0][0], calls[1][0])  # R3's matrix, from R1's labels read back, is R2's
    t = calls[0][0]
    shares = torch.bincount(given, minlength=10).float() / len(given)
    estimate = rd.read_summary(0, 1)["classwise_noise_estimate"]
    assert estimate["rate"] == pytest.approx(float((shares * (1 - t.diagonal())).sum()))
    assert len(estimate["largest"]) == 5 and all(t[c, y] == pytest.approx(v, abs=1e-4)
                                                 for c, y, v in estimate["largest"])
    assert "classwise_noise_estimate" not in rd.read_summary(0, 2)
    assert "Class by class (`--noise-prior classwise`)" in (tmp_path / "cw/results.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--noise-prior", "x"], "--noise-prior must be auto, classwise or a share P"),
    (["--noise-prior", "0.95"], "is not below 1 - 1/K = 0.9"),
    (["--noise-prior", "0.2", "--labels", "online", "--augment", "online"], "got --labels online"),
    (["--noise-prior", "0.2", "--label-form", "hard"], "needs --label-form soft"),
    (["--noise-prior", "0.2", "--temperature", "3"], "needs --temperature 1"),
    (["--noise-prior", "0.2", "--gt-weight", "0.3"], "use one of them"),
    (["--noise-prior", "0.2", "--label-storage", "topk:3"], "use --label-storage auto, float32 or float16"),
    (["--noise-prior", "0.2", "--label-smoothing", "0.1"], "leave out --label-smoothing 0.1"),
    (["--noise-prior", "auto", "--cross-fit", "2"], "read too noisy; give the share you believe, e.g. --noise-prior 0.2"),
])
def test_bad_noise_prior_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    assert main([*COMMON, "--runs-dir", str(tmp_path), "--name", "bad", "--generations", "2", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_noise_prior_from_yaml_number_and_its_canonical_text(tmp_path):
    from labelrefinery.config import config_file_values

    (tmp_path / "c.yaml").write_text("noise_prior: 0.25\n")
    assert resolve_config("quick", config_file_values(tmp_path / "c.yaml")).refinement.noise_prior == "0.25"
    for given, stored in (("-0", "0"), ("0.0", "0"), ("0.123456789", "0.123456789"), ("auto", "auto"),
                          ("classwise", "classwise")):
        assert resolve_config("quick", {"noise_prior": given}).refinement.noise_prior == stored
    # YAML 1.1 reads an exponent without a dot as text; a number setting takes it as the number it is
    (tmp_path / "e.yaml").write_text("lr: 3e-3\nweight_decay: 1E-4\n")
    cfg = resolve_config("quick", config_file_values(tmp_path / "e.yaml"))
    assert (cfg.training.lr, cfg.training.weight_decay) == (0.003, 0.0001)
    (tmp_path / "bad.yaml").write_text("lr: fast\n")
    with pytest.raises(ConfigError, match="lr must be a number, got 'fast'"):
        config_file_values(tmp_path / "bad.yaml")


def test_a_given_label_tied_with_the_top_class_is_not_disputed():
    """float16 rows tie now and then: the given label tied for the top stands, whatever the class order."""
    from labelrefinery.report.labelissues import issue_rows
    from labelrefinery.noise import suggested_labels
    from labelrefinery.noise import disputes

    probs = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32)
    given = np.array([1, 0, 1])
    assert disputes(torch.from_numpy(given), torch.from_numpy(probs)).tolist() == [False, False, True]
    assert label_statistics(given, probs)["disputed"] == pytest.approx(1 / 3)
    assert suggested_labels(given, probs).tolist() == [1, 0, 0]
    rows = issue_rows(probs, given, np.arange(3), ["a", "b", "c"])
    assert [r["index"] for r in rows] == [2]
    every = issue_rows(probs, given, np.arange(3), ["a", "b", "c"], include_all=True)
    assert {r["index"]: r["suggested_label"] for r in every} == {0: "b", 1: "a", 2: "a"}


def test_results_name_the_classwise_estimate_when_it_says_more_than_the_symmetric_one():
    from labelrefinery.report.tables import _label_table

    def table(symmetric, classwise, prior="0"):
        r = {"config": {"noise_prior": prior}, "generations": [
            {"generation": 1, "label_quality": {"disputed": 0.1}, "symmetric_noise_estimate": symmetric,
             "classwise_noise_rate": classwise}]}
        return "\n".join(_label_table(r, "x"))

    assert "Class by class" not in table(0.0, 0.034)  # clean labels: classes the model finds alike
    assert "they suggest 29%" in table(0.01, 0.29)  # pair flips: the symmetric estimate misses them
    assert "depend on the true class; try `--noise-prior classwise`." in table(0.01, 0.29)
    assert "depend on the true class." in table(0.01, 0.29, prior="classwise")
    assert "they suggest 3%" in table(0.0, 0.034, prior="classwise")  # always when used
    assert "depend on" not in table(0.0, 0.034, prior="classwise")


def test_an_estimate_of_no_noise_leaves_the_refined_labels_as_they_are():
    """auto reading 0, or classwise reading T = I (an R1 that memorised its labels): no posterior, as with
    --noise-prior 0; a non-zero estimate gives its matrix."""
    from types import SimpleNamespace

    from labelrefinery.generation import noise_transition
    from labelrefinery.noise import symmetric_transition

    from labelrefinery.config import parse_noise_prior

    def exp(prior, estimate=0.0):
        return SimpleNamespace(cfg=SimpleNamespace(refinement=SimpleNamespace(prior=parse_noise_prior(prior))),
                               dataset=SimpleNamespace(train=SimpleNamespace(num_classes=10)),
                               run_dir=SimpleNamespace(read_summary=lambda seed, g: {"symmetric_noise_estimate":
                                                                                       estimate}))

    labels = torch.arange(100) % 10
    data = SimpleNamespace(seed=0, views=SimpleNamespace(views=torch.zeros(100, dtype=torch.long), labels=labels))
    assert noise_transition(exp("0"), data) is None
    assert noise_transition(exp("auto", 0.0), data) is None
    assert torch.equal(noise_transition(exp("auto", 0.2), data), symmetric_transition(10, 0.2))
    assert noise_transition(exp("classwise"), data, torch.eye(10)[labels]) is None
    assert noise_transition(exp("classwise"), data, _pairflip_rows(labels, 0.3, 10)) is None  # disputes nothing
    flipped = torch.where(torch.arange(100) < 30, (labels + 1) % 10, labels)
    data.views.labels = flipped
    t = noise_transition(exp("classwise"), data, _pairflip_rows(labels, 0.3, 10))
    assert t is not None and t[0, 1] == pytest.approx(0.3, abs=1e-6)


def test_resume_names_an_invalid_value_before_comparing_settings(tmp_path, capsys):
    assert main([*COMMON, "--runs-dir", str(tmp_path), "--name", "r", "--generations", "1", "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path / "r"), "--noise-prior", "bogus", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--noise-prior must be auto, classwise or a share P" in err and "would change" not in err
