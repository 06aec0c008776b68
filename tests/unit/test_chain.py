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
