"""Runs with an external refinery and per-crop (online) labels, end to end."""

import json

import pytest

from labelrefinery.cli import main


@pytest.mark.slow
def test_cross_architecture_run_and_ensemble(digits, tmp_path, capsys):
    common = ["--dataset", "digits", "--epochs", "2", "--no-progress", "--runs-dir", str(tmp_path)]
    assert main(["run", *common, "--model", "resnet20", "--generations", "1", "--name", "big"]) == 0
    ref = tmp_path / "big/seed-0/gen-1/model.safetensors"
    assert main(["run", *common, "--model", "convnet", "--generations", "2", "--labels", "online",
                 "--augment", "crop", "--refinery-checkpoint", str(ref), "--ensemble", "1,2",
                 "--name", "small"]) == 0
    results = json.loads((tmp_path / "small/results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [1, 2]
    assert results["ensemble"][0]["generations"] == [1, 2]
    assert "ensemble R1+R2" in (tmp_path / "small/results.md").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "small"), "--ensemble", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "| 0 | R2 |" in out and "ensemble 1,2" in out
    acc = float(out.strip().splitlines()[-1].split("|")[3])
    assert acc == pytest.approx(results["ensemble"][0]["per_seed"]["0"], abs=0.006)


@pytest.mark.slow
def test_external_refinery_offline_labels_and_resume(tmp_path):
    common = ["--dataset", "digits", "--epochs", "1", "--no-progress", "--runs-dir", str(tmp_path)]
    assert main(["run", *common, "--model", "resnet20", "--generations", "1", "--name", "big"]) == 0
    ref = tmp_path / "big/seed-0/gen-1/model.safetensors"
    student = ["run", *common, "--refinery-checkpoint", str(ref), "--name", "small"]
    assert main(student + ["--generations", "1"]) == 0
    summary = json.loads((tmp_path / "small/seed-0/gen-1/summary.json").read_text())
    assert main(student + ["--generations", "2"]) == 0  # generation 1 is kept, not retrained
    assert json.loads((tmp_path / "small/seed-0/gen-1/summary.json").read_text()) == summary
    assert (tmp_path / "small/seed-0/gen-2/summary.json").exists()
