"""Faults fixed by the restructure: tiny one-cycle schedules, resuming a compiled run without --compile,
old run directories, and which errors are the user's (one line, exit 2) and which are bugs (traceback)."""

import pytest
import torch
import yaml

from labelrefinery.cli import main
from labelrefinery.config import RunConfig, TrainConfig, resolve_config
from labelrefinery.data import load_digits
from labelrefinery.engine import FitHooks, TrainData, TrainSetup, fit
from labelrefinery.schedule import LRSchedule
from labelrefinery.errors import RunDirError
from labelrefinery.fileio import atomic_write_text
from labelrefinery.models import ModelSpec, build_model
from labelrefinery.batch import Pipeline
from labelrefinery.rundir import RunDir, TrainStateFile
from labelrefinery.targets import StoredTargets

CPU = torch.device("cpu")


@pytest.mark.parametrize("total_steps", [1, 2, 3, 4, 5, 8])
def test_onecycle_with_few_steps_runs_and_peaks(total_steps):
    """OneCycleLR divided by zero when 25% of all steps was exactly one step; every length now schedules."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    schedule = LRSchedule(opt, TrainConfig(epochs=1, lr=0.1, lr_schedule="onecycle"), total_steps)
    used = []  # the lr of each optimizer step
    for _ in range(total_steps):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.after_batch()
    if total_steps <= 2:
        assert used == [pytest.approx(0.1)] * total_steps
    else:
        assert max(used) > 0.09 and used[0] < 0.01 and used[-1] < max(used)  # warm up, peak, anneal


def test_cli_one_epoch_large_batch_on_digits(tmp_path, capsys):
    """The issue's crash: 4 steps in all (1,221 images, batch 400, one epoch)."""
    code = main(["run", "--dataset", "digits", "--epochs", "1", "--batch-size", "400", "--generations", "1",
                 "--no-progress", "--runs-dir", str(tmp_path)])
    assert code == 0
    assert "| R1 |" in capsys.readouterr().out


def _digits_fit(state_file, epochs, compile):
    ds = load_digits()
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 8))
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=3e-3, lr_schedule="plateau", early_stop_patience_epochs=0)
    p = Pipeline.create(CPU, ds.mean, ds.std)
    fit(model, TrainData(ds.train.images[:400], StoredTargets(ds.train.labels[:400]), ds.test.images, ds.test.labels),
        TrainSetup(cfg, p, (0, 1), compile=compile), FitHooks(state_file=state_file))
    return model


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


def test_old_flat_config_resumes(tmp_path, capsys):
    """Run directories written before the sectioned config (flat keys, comma strings) still resume."""
    args = ["run", "--dataset", "digits", "--epochs", "1", "--generations", "1", "--no-progress",
            "--runs-dir", str(tmp_path), "--name", "old", "--ensemble", ""]
    assert main(args) == 0
    rd = RunDir(tmp_path / "old")
    flat = {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in rd.read_config().flat().items()}
    atomic_write_text(rd.config_path, yaml.safe_dump(flat, sort_keys=False))
    first = rd.read_summary(0, 1)
    assert main(args[:-6] + ["--generations", "2", "--runs-dir", str(tmp_path), "--name", "old"]) == 0
    assert rd.read_summary(0, 1) == first and rd.is_finished(0, 2)
    assert rd.read_config().generations == 2
    assert "data" in yaml.safe_load(rd.config_path.read_text())  # rewritten in the sectioned layout


def test_config_round_trip_keeps_lists():
    cfg = resolve_config("paper", {"ensemble": [2, 3], "generations": 3})
    text = yaml.safe_dump(cfg.to_dict())
    assert "lr_steps:\n  - 140\n  - 170" in text.replace("- 140", "  - 140").replace("- 170", "  - 170") or \
        yaml.safe_load(text)["training"]["lr_steps"] == [140, 170]
    again = RunConfig.from_dict(yaml.safe_load(text))
    assert again == cfg and again.refinement.ensemble == [2, 3]


def test_write_failure_is_one_line_not_a_traceback(tmp_path, capsys):
    """A directory that cannot be written (here: read-only) is the user's to fix: one line, exit 2."""
    import os

    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        runs = blocker / "runs"  # a path below a regular file cannot be made, even by root
    else:
        runs = tmp_path / "ro"
        runs.mkdir(mode=0o500)
    code = main(["run", "--dataset", "digits", "--epochs", "1", "--generations", "1", "--no-progress",
                 "--runs-dir", str(runs)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(runs) in err


def test_internal_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only UserError is bad input: any other exception propagates with its traceback."""
    import labelrefinery.chain as chain

    def broken(*a, **k):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(chain, "run_seed", broken)
    with pytest.raises(ValueError, match="internal bug"):
        main(["run", "--dataset", "digits", "--epochs", "1", "--no-progress", "--runs-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing finished: the fresh directory is gone


def test_atomic_write_failure_is_a_run_dir_error(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="cannot write"):
        atomic_write_text(blocker / "sub" / "a.txt", "hello")
