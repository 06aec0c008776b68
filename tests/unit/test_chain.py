"""The chain of a whole run (``chain.run``): cleaning up after a failure, controls kept once asked for."""

import json

import pytest

from labelrefinery.cli import main
from labelrefinery.rundir import RunDir

from ..conftest import SHORT_RUN


def test_internal_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only UserError is bad input: any other exception propagates with its traceback."""
    import labelrefinery.chain as chain

    def broken(*a, **k):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(chain, "run_seed", broken)
    with pytest.raises(ValueError, match="internal bug"):
        main(["run", "--dataset", "digits", "--epochs", "1", "--no-progress", "--runs-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing finished: the fresh directory is gone


@pytest.mark.slow
def test_controls_rows_and_resume(tmp_path):
    args = [*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "c", "--generations", "2"]
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


@pytest.mark.slow
def test_controls_cannot_be_dropped(tmp_path, capsys):
    args = [*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "k", "--generations", "2"]
    assert main([*args, "--controls"]) == 0
    assert main([*args, "--seeds", "2"]) == 0  # without --controls: kept, and trained for the new seed
    assert "keeping --controls" in capsys.readouterr().err
    assert RunDir(tmp_path / "k").read_config().refinement.controls
    assert RunDir(tmp_path / "k").finished_controls(1) == ["equal-compute", "label-smoothing"]
    assert "of 2 seeds]" not in (tmp_path / "k/results.md").read_text()


@pytest.mark.slow
def test_students_train_their_own_shorter_schedule(tmp_path):
    """--student-epochs 1 with --epochs 2: R1 trains 2 epochs, R2 1 (its one-cycle schedule ends in it), and the
    equal-compute control the chain's 3."""
    args = [*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "s", "--generations", "2", "--student-epochs", "1",
            "--lr-schedule", "onecycle", "--controls"]
    assert main(args) == 0
    run = tmp_path / "s"
    runs = {g: json.loads((run / f"seed-0/{g}/summary.json").read_text())["epochs_run"]
            for g in ("gen-1", "gen-2", "control-equal-compute")}
    assert runs == {"gen-1": 2, "gen-2": 1, "control-equal-compute": 3}
    lrs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lrs if r["kind"] == "epoch" and r["generation"] == 2] == [1]


@pytest.mark.slow
def test_a_run_with_mixup_trains_a_plain_control_and_names_its_gain(tmp_path):
    """--mixup with --controls adds the no-mixup control (R1's recipe, plain cross-entropy); results.md's
    Which-model line gives the chosen generation's gain over it as well as over R1; without mixup there is none."""
    from labelrefinery.generation import control_training, run_controls
    from labelrefinery.config import resolve_config

    args = [*SHORT_RUN, "--runs-dir", str(tmp_path), "--generations", "2", "--controls", "--label-issues"]
    assert main([*args, "--name", "m", "--mixup", "1"]) == 0
    run = tmp_path / "m"
    assert RunDir(run).finished_controls(0) == ["equal-compute", "label-smoothing", "no-mixup"]
    results = json.loads((run / "results.json").read_text())
    plain = results["controls"]["no-mixup"]["per_seed"]["0"]["test_top1"]
    best = results["best_by_validation"]["per_seed"]["0"]
    md = (run / "results.md").read_text()
    assert "| no-mixup control |" in md
    assert (f"{best['test_top1'] - plain:+.2f} over plain training (R1's recipe without mixup)") in md
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "no-mixup" in {r["generation"] for r in epochs if r["kind"] == "epoch"}
    cfg = resolve_config("quick", {"mixup": 1.0, "controls": True})
    assert run_controls(cfg) == ("label-smoothing", "equal-compute", "no-mixup")
    assert control_training(cfg, "no-mixup").mixup == 0.0 and cfg.training.mixup == 1.0
    assert run_controls(resolve_config("quick", {"controls": True})) == ("label-smoothing", "equal-compute")
    assert run_controls(resolve_config("quick", {"mixup": 1.0})) == ()
