"""The training engine: fit, epochs, early stopping, progressive resizing, resuming a fit from its state file."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelrefinery.batch import Pipeline
from labelrefinery.config import TrainConfig, resolve_config
from labelrefinery.data import load_digits
from labelrefinery.engine import EpochSteps, FitHooks, TrainData, TrainSetup, fit, train_one_epoch
from labelrefinery.inference import evaluate, predict
from labelrefinery.models import ModelSpec, build_model
from labelrefinery.rundir import TrainStateFile
from labelrefinery.targets import StoredTargets


CPU = torch.device("cpu")


def _pipeline(ds, amp=None):
    return Pipeline.create(CPU, ds.mean, ds.std, amp)


def _fit_data(ds, n: int, m: int):
    """The first n training images of ``ds`` with their labels as targets, then the next m as validation."""
    return (ds.train.images[:n], StoredTargets(ds.train.labels[:n]), ds.train.images[n:n + m],
            ds.train.labels[n:n + m])


def _seeded_convnet(seed: int):
    """A factory of identical 8-px ``convnet`` models (torch seeded with ``seed`` before each)."""
    def new_model():
        torch.manual_seed(seed)
        return build_model(ModelSpec("convnet", 10, 1, 8))

    return new_model


def test_offline_targets_follow_the_permutation(digits):
    """Soft targets that are a fixed function of each image are learnt only if indexed like the images."""
    ds = digits
    n = 512
    images, labels = ds.train.images[:n], ds.train.labels[:n]
    targets = torch.nn.functional.one_hot((labels + 3) % 10, 10).float()  # a relabelling
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 8))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    p = _pipeline(ds)
    for e in range(15):
        stats = train_one_epoch(model, opt, TrainData(images, StoredTargets(targets)), p,
                                EpochSteps(64, torch.Generator().manual_seed(e)))
    acc = (predict(model, images, p).argmax(1) == (labels + 3) % 10).float().mean()
    assert stats["train_top1"] > 90 and acc > 0.9


@pytest.mark.slow
def test_fit_resume_matches_uninterrupted(digits, tmp_path):
    ds = digits
    # stopped early by lowering cfg.epochs: nothing here may depend on it (one-cycle, progressive resizing)
    cfg = resolve_config("quick", {"epochs": 4, "lr_schedule": "plateau", "plateau_patience_epochs": 1,
                                   "batch_size": 128, "train_scale_start": 1.0}).training
    p = _pipeline(ds)
    imgs, labels, vi, vl = _fit_data(ds, 600, 200)
    new_model = _seeded_convnet(1)
    a = new_model()
    res_a = fit(a, TrainData(imgs, labels, vi, vl), TrainSetup(cfg, p, (0, 1)))
    b = new_model()
    state = TrainStateFile(tmp_path / "state.pt")
    cfg.epochs = 2
    fit(b, TrainData(imgs, labels, vi, vl), TrainSetup(cfg, p, (0, 1)), FitHooks(state_file=state))
    cfg.epochs = 4
    b2 = new_model()
    res_b = fit(b2, TrainData(imgs, labels, vi, vl), TrainSetup(cfg, p, (0, 1)), FitHooks(state_file=state))
    assert res_b.best_val_top1 == res_a.best_val_top1 and res_b.best_epoch == res_a.best_epoch
    for k, v in a.state_dict().items():
        assert torch.equal(v, b2.state_dict()[k]), k


@pytest.mark.slow
def test_early_stopping_and_restore_best(digits):
    ds = digits
    cfg = resolve_config("quick", {"epochs": 30, "lr_schedule": "plateau", "early_stop_patience_epochs": 2,
                                   "early_stop_min_delta": 50.0}).training
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 8))
    p = _pipeline(ds)
    res = fit(model, TrainData(ds.train.images[:500], StoredTargets(ds.train.labels[:500]), ds.train.images[500:700],
                               ds.train.labels[500:700]), TrainSetup(cfg, p, (0, 1)))
    assert res.stopped_early and res.epochs_run == 3  # a 50-point min_delta: only epoch 1 counts
    assert evaluate(model, ds.train.images[500:700], ds.train.labels[500:700], p)["top1"] == pytest.approx(
        res.best_val_top1)


class SideSpy(nn.Module):
    """A tiny classifier that records the side of every batch it sees, in train and in eval mode."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 10)
        self.sides = {True: [], False: []}

    def forward(self, x):
        self.sides[self.training].append(x.shape[-1])
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class TargetSpy(StoredTargets):
    def __init__(self, labels):
        super().__init__(labels, num_classes=10)
        self.sides = []

    def for_batch(self, idx, x, student, pipeline, generator):
        self.sides.append(x.shape[-1])
        return super().for_batch(idx, x, student, pipeline, generator)


def test_fit_trains_small_then_full_and_evaluates_full(digits):
    """digits are 8 px: start 0.5 over 4 epochs trains at 4, 6, 8, 8 px; targets are made for the view the student
    trains on; recalibration and validation always see 8 px."""
    ds = digits
    cfg = resolve_config("quick", {"epochs": 4, "batch_size": 100, "train_scale_start": 0.5}).training
    model, targets = SideSpy(), TargetSpy(ds.train.labels[:300])
    epochs = []
    fit(model, TrainData(ds.train.images[:300], targets, ds.train.images[300:400], ds.train.labels[300:400]),
        TrainSetup(cfg, _pipeline(ds), (0, 1)), FitHooks(log=epochs.append))
    assert targets.sides == [4] * 3 + [6] * 3 + [8] * 6
    trained = [s for s in model.sides[True] if s != 8]  # recalibration runs train mode at 8 px
    assert trained == [4] * 3 + [6] * 3
    assert set(model.sides[False]) == {8} and len(epochs) == 4


def test_early_stop_before_full_size_warns(digits, capsys):
    """Early stopping at epoch 2 of 4 with --train-scale-start 0.5 ends while training at 6 of 8 px: a warning
    names the fix; a stop after the ramp says nothing."""
    ds = digits
    imgs, labels, vi, vl = _fit_data(ds, 300, 100)
    never_better = {"epochs": 4, "batch_size": 100, "train_scale_start": 0.5, "early_stop_patience_epochs": 1,
                    "early_stop_min_delta": 100.0}
    result = fit(_seeded_convnet(0)(), TrainData(imgs, labels, vi, vl),
                 TrainSetup(resolve_config("quick", never_better).training, _pipeline(ds), (0, 1)))
    assert result.stopped_early and result.epochs_run == 2
    err = capsys.readouterr().err
    assert "stopped early at epoch 2 while still training on images resized to 0.75" in err
    assert "--train-scale-start 1" in err
    fit(_seeded_convnet(0)(), TrainData(imgs, labels, vi, vl),
        TrainSetup(resolve_config("quick", {**never_better, "train_scale_start": 1.0}).training, _pipeline(ds), (0, 1)))
    assert "resized" not in capsys.readouterr().err


class StopAfterFirstSave(TrainStateFile):
    def save(self, state):
        super().save(state)
        raise KeyboardInterrupt


def test_resume_in_the_middle_of_the_ramp_matches_uninterrupted(digits, tmp_path):
    """Interrupted after epoch 1 of 4 (trained at 4 px; epoch 2 trains at 6 px): the resumed fit ends with the
    uninterrupted one's weights."""
    ds = digits
    cfg = resolve_config("quick", {"epochs": 4, "batch_size": 100, "train_scale_start": 0.5}).training
    p = _pipeline(ds)
    imgs, labels, vi, vl = _fit_data(ds, 400, 100)
    new_model = _seeded_convnet(2)
    a = new_model()
    fit(a, TrainData(imgs, labels, vi, vl), TrainSetup(cfg, p, (0, 1)))
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(), TrainData(imgs, labels, vi, vl), TrainSetup(cfg, p, (0, 1)),
            FitHooks(state_file=StopAfterFirstSave(tmp_path / "state.pt")))
    b = new_model()
    fit(b, TrainData(imgs, labels, vi, vl), TrainSetup(cfg, p, (0, 1)),
        FitHooks(state_file=TrainStateFile(tmp_path / "state.pt")))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


class NanAfterFirstStep(nn.Module):
    """Finite logits for the first batch, NaN after (as a diverging bf16 run would give)."""

    def __init__(self):
        super().__init__()
        self.fc, self.calls = nn.Linear(1, 10), 0

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.mean((2, 3)))
        return out if self.calls == 1 or not self.training else out * float("nan")


def test_a_diverged_epoch_stops_before_its_weights_are_used(digits, tmp_path):
    from labelrefinery.errors import DivergedError

    ds = digits
    cfg = resolve_config("quick", {"epochs": 2, "batch_size": 100}).training
    imgs, labels, vi, vl = _fit_data(ds, 300, 100)
    state = TrainStateFile(tmp_path / "state.pt")
    with pytest.raises(DivergedError, match=r"the training loss became nan in epoch 1 .*lower --lr"):
        fit(NanAfterFirstStep(), TrainData(imgs, labels, vi, vl), TrainSetup(cfg, _pipeline(ds), (0, 1)),
            FitHooks(state_file=state, desc="[seed 0 R1]"))
    assert state.load(CPU) is None  # nothing saved from the diverged epoch


def _digits_fit(state_file, epochs, compile):
    ds = load_digits()
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 8))
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=3e-3, lr_schedule="plateau", early_stop_patience_epochs=0)
    p = Pipeline.create(CPU, ds.mean, ds.std)
    fit(model, TrainData(ds.train.images[:400], StoredTargets(ds.train.labels[:400]), ds.test.images, ds.test.labels),
        TrainSetup(cfg, p, (0, 1), compile=compile), FitHooks(state_file=state_file))
    return model


@pytest.mark.slow
def test_compiled_run_resumes_without_compile(tmp_path):
    """A state saved while training through torch.compile holds the plain module's names and resumes without it."""
    state = TrainStateFile(tmp_path / "train-state.pt")
    _digits_fit(state, 1, compile=True)
    saved = state.load()
    assert not any(k.startswith("_orig_mod.") for k in saved["model"])
    resumed = _digits_fit(state, 2, compile=False)
    plain = _digits_fit(None, 2, compile=False)
    after_one = saved["model"]["features.0.0.weight"]
    w = resumed.state_dict()["features.0.0.weight"]
    assert not torch.equal(w, after_one)  # the second epoch trained on from the compiled run's state
    resumed_params = dict(resumed.named_parameters())
    for k, v in plain.named_parameters():  # compiled kernels round differently: close, not equal
        assert torch.allclose(v, resumed_params[k], atol=2e-2), k


@pytest.mark.slow
def test_state_with_compile_prefix_from_older_versions_resumes(tmp_path):
    """Older versions saved the compiled wrapper's names (``_orig_mod.`` prefix): they load too."""
    state = TrainStateFile(tmp_path / "train-state.pt")
    _digits_fit(state, 1, compile=False)
    old = state.load()
    for key in ("model", "best_model"):
        old[key] = {f"_orig_mod.{k}": v for k, v in old[key].items()}
    state.save(old)
    resumed = _digits_fit(state, 2, compile=False)
    plain = _digits_fit(None, 2, compile=False)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_mixup_trains_on_mixed_pairs_reproducibly(digits, monkeypatch):
    """With --mixup the model sees lam x_i + (1 - lam) x_j and fits lam t_i + (1 - lam) t_j: the step's images
    are mixed (never the originals), the loss is the one against the mixed target rows, the epoch reproducible."""
    import labelrefinery.engine as engine
    from labelrefinery.augment import Mixup
    from labelrefinery.losses import distillation_loss

    images, targets, *_ = _fit_data(digits, 128, 0)
    seen = []
    real_draw = Mixup.draw

    def spy_draw(n, alpha, generator, device):
        mix = real_draw(n, alpha, generator, device)
        seen.append(mix)
        return mix

    monkeypatch.setattr(Mixup, "draw", staticmethod(spy_draw))
    results = []
    for _ in range(2):
        model = _seeded_convnet(0)()
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        results.append(train_one_epoch(model, opt, TrainData(images, targets), _pipeline(digits),
                                       EpochSteps(64, torch.Generator().manual_seed(1), mixup=1.0)))
    assert results[0] == {**results[1], "images_per_s": results[0]["images_per_s"],
                          "epoch_time_s": results[0]["epoch_time_s"]}
    assert len(seen) == 4 and all(0 <= m.lam <= 1 for m in seen) and len({m.lam for m in seen}) > 1
    mix, x = seen[0], torch.rand(64, 1, 8, 8)
    assert sorted(mix.partner.tolist()) == list(range(64))
    assert torch.allclose(mix.images(x), mix.lam * x + (1 - mix.lam) * x[mix.partner])
    logits, labels = torch.randn(64, 10), torch.randint(0, 10, (64,))
    rows = F.one_hot(labels, 10).float()
    mixed_rows = mix.lam * rows + (1 - mix.lam) * rows[mix.partner]
    assert torch.allclose(mix.loss(lambda t: distillation_loss(logits, t), labels),
                          distillation_loss(logits, mixed_rows), atol=1e-6)
    assert engine.EpochSteps(8, torch.Generator()).mixup == 0.0  # off unless asked
