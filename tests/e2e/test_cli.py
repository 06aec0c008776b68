"""`refinery run` end to end from the command line: resuming, logs, reports, config files, seeds."""

import json
import subprocess
import sys

import pytest

from labelrefinery.cli import main

from ..conftest import run_cli

pytestmark = pytest.mark.slow


def test_changed_config_refused(tmp_path, capsys):
    base = ["run", "--dataset", "digits", "--epochs", "1", "--generations", "1", "--name", "d"]
    assert run_cli(base, tmp_path) == 0
    assert run_cli(base[:-2] + ["--name", "d", "--lr", "0.01"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "different configuration (lr: 0.003 -> 0.01)" in err and "same flags" in err


def test_resume_rules_logs_and_file_modes(tmp_path, capsys):
    base = ["run", "--dataset", "digits", "--epochs", "1", "--name", "d"]
    assert run_cli(base + ["--generations", "2"], tmp_path) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Test top-1 accuracy") and "starting" in err and "[seed 0 R2]" in err
    assert run_cli(base + ["--generations", "1"], tmp_path) == 0  # runs nothing new, forgets nothing
    run_dir = tmp_path / "runs" / "d"
    assert "generations: 2" in (run_dir / "config.yaml").read_text()
    assert "| R2 |" in (run_dir / "results.md").read_text()
    import os
    umask = os.umask(0)
    os.umask(umask)
    assert ((run_dir / "results.json").stat().st_mode & 0o777) == 0o666 & ~umask


def test_validation_accuracy_uses_recalibrated_statistics(tmp_path):
    import json

    assert run_cli(["run", "--dataset", "digits", "--epochs", "1", "--generations", "1", "--name", "v"], tmp_path) == 0
    run_dir = tmp_path / "runs" / "v"
    epoch = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][0]
    summary = json.loads((run_dir / "seed-0/gen-1/summary.json").read_text())
    assert abs(epoch["val_top1"] - summary["val_top1"]) < 3.0 and summary["val_top1"] > 50


def test_report_columns_are_distinct(tmp_path, capsys):
    base = ["run", "--dataset", "digits", "--epochs", "1", "--generations", "1"]
    assert run_cli(base + ["--name", "a"], tmp_path) == 0
    assert run_cli(base + ["--name", "b", "--no-recalibrate-bn"], tmp_path) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs/a"), str(tmp_path / "runs/b")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2] == "| generation | a | b |"  # columns by run directory
    runs = next(line for line in out.splitlines() if line.startswith("Runs: "))
    assert "a: dataset=digits augment=none recalibrate_bn=True" in runs and "b: " in runs
    assert "recalibrate_bn=False" in runs


@pytest.mark.multiprocess
def test_log_file_gets_one_plain_line_per_epoch(tmp_path):
    """Redirected stderr (not a terminal): no redrawn bars, one line per epoch with loss, KL, accuracy, lr, speed."""
    out = subprocess.run([sys.executable, "-m", "labelrefinery", "run", "--dataset", "digits", "--epochs", "2",
                          "--generations", "2", "--batch-size", "64", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert "\r" not in out.stderr
    lines = [x for x in out.stderr.splitlines() if " epoch " in x]
    assert len(lines) == 4 and "[seed 0 R1] epoch 2/2: loss" in lines[1] and "[seed 0 R2] epoch 2/2" in lines[3]
    for part in ("KL", "train", "val", "lr", "images/s", "left in this fit", "chain ETA"):
        assert part in lines[0]
    assert lines[-1].endswith("chain ETA 0s")  # the last epoch of the chain: nothing left


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (the test extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["run", "--dataset", "digits", "--epochs", "2", "--generations", "2", "--batch-size", "64",
                 "--no-progress", "--tensorboard", "--runs-dir", str(tmp_path), "--name", "tb"]) == 0
    acc = EventAccumulator(str(tmp_path / "tb/tb/seed-0"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"R1/val_top1", "R2/train_kl", "R1/lr", "generation/test_top1"} <= set(tags)
    assert [e.step for e in acc.Scalars("R2/val_top1")] == [1, 2]
    results = json.loads((tmp_path / "tb/results.json").read_text())
    assert [e.value for e in acc.Scalars("generation/test_top1")] == pytest.approx(
        [s["test_top1"] for s in results["per_seed"]["0"]])


@pytest.mark.multiprocess
def test_subset_sizes_in_start_line_and_run_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "labelrefinery", "run", "--dataset", "digits", "--epochs", "1",
                          "--generations", "1", "--batch-size", "64", "--train-size", "600", "--test-size", "100",
                          "--runs-dir", str(tmp_path), "--name", "sub"], capture_output=True, text=True, check=True)
    assert "digits (600 of 1437 train, 100 of 360 test)" in out.stderr
    info = json.loads((tmp_path / "sub/run.json").read_text())["dataset"]
    assert (info["train"], info["train_available"], info["test"], info["test_available"]) == (600, 1437, 100, 360)


def test_config_file_reproduces_a_run_and_resume_continues_one(tmp_path, capsys):
    base = ["run", "--dataset", "digits", "--epochs", "2", "--generations", "1", "--batch-size", "64",
            "--lr", "0.002", "--no-progress", "--runs-dir", str(tmp_path)]
    assert main([*base, "--name", "a"]) == 0
    a = json.loads((tmp_path / "a/results.json").read_text())
    # a run's own config.yaml as --config reproduces it
    assert main(["run", "--config", str(tmp_path / "a/config.yaml"), "--runs-dir", str(tmp_path), "--name", "b"]) == 0
    b = json.loads((tmp_path / "b/results.json").read_text())
    assert b["config"] == a["config"]
    assert b["per_seed"]["0"][0]["test_top1"] == a["per_seed"]["0"][0]["test_top1"]
    # a hand-written file with flag-style names; flags given override it
    (tmp_path / "mine.yaml").write_text("dataset: digits\nbatch-size: 64\nepochs: 1\ngenerations: 1\nlr: 0.01\n")
    assert main(["run", "--config", str(tmp_path / "mine.yaml"), "--lr", "0.002", "--no-progress",
                 "--runs-dir", str(tmp_path), "--name", "c"]) == 0
    c = json.loads((tmp_path / "c/results.json").read_text())["config"]
    assert (c["epochs"], c["batch_size"], c["lr"]) == (1, 64, 0.002)
    # --resume: the saved settings, extended by --generations, nothing else retyped
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path / "a"), "--generations", "2"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert [s["generation"] for s in json.loads((tmp_path / "a/results.json").read_text())["per_seed"]["0"]] == [1, 2]
    for bad, message in ((["--resume", str(tmp_path / "a"), "--epochs", "5"], "--epochs would change"),
                         (["--resume", str(tmp_path / "a"), "--name", "x"], "leave out --name"),
                         (["--resume", str(tmp_path)], "not a run directory"),
                         (["--config", str(tmp_path / "nope.yaml")], "--config"),
                         (["--config", str(tmp_path / "a/metrics.jsonl")], "--config")):
        assert main(["run", *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    (tmp_path / "typo.yaml").write_text("batch_sise: 64\n")
    assert main(["run", "--config", str(tmp_path / "typo.yaml")]) == 2
    assert "batch_sise" in capsys.readouterr().err


def test_relative_and_absolute_paths_are_the_same_setting(tmp_path, monkeypatch, capsys):
    base = ["run", "--dataset", "digits", "--epochs", "1", "--generations", "1", "--batch-size", "64",
            "--no-progress", "--runs-dir", str(tmp_path), "--name", "p"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert main([*base, "--data-dir", "data"]) == 0
    capsys.readouterr()
    assert main([*base, "--data-dir", str(tmp_path / "data"), "--generations", "2"]) == 0
    assert "resuming" in capsys.readouterr().err
    saved = (tmp_path / "p/config.yaml").read_text()
    assert f"data_dir: {tmp_path / 'data'}" in saved


def test_explicit_seed_list(tmp_path, capsys):
    base = ["run", "--dataset", "digits", "--epochs", "1", "--generations", "1", "--batch-size", "64",
            "--no-progress", "--runs-dir", str(tmp_path), "--name", "s"]
    assert main([*base, "--seeds", "3,7"]) == 0
    assert "x 2 seeds (3,7)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "s").glob("seed-*")) == ["seed-3", "seed-7"]
    assert main([*base, "--seeds", "7,11"]) == 0  # extends the run with seed 11
    results = json.loads((tmp_path / "s/results.json").read_text())
    assert sorted(results["per_seed"]) == ["11", "3", "7"] and results["config"]["seeds"] == [3, 7, 11]
    for bad in ("3,3", "-1,2", "x", "0"):
        assert main([*base, "--seeds", bad]) == 2
        assert "--seeds" in capsys.readouterr().err


def test_a_run_made_before_a_preset_changed_continues_with_resume(tmp_path, capsys):
    """A quick-preset run directory of a version without --train-scale-start (its config.yaml lacks the key,
    which reads as 1, full size): the same flags are refused naming --resume, which continues it."""
    import yaml

    args = ["run", "--dataset", "digits", "--epochs", "1", "--generations", "1"]
    assert run_cli([*args, "--name", "old"], tmp_path) == 0
    path = tmp_path / "runs/old/config.yaml"
    saved = yaml.safe_load(path.read_text())
    assert saved["training"].pop("train_scale_start") == 0.72
    path.write_text(yaml.safe_dump(saved))  # as older versions wrote it: no checksum line, no key
    capsys.readouterr()
    assert run_cli([*args[:-1], "2", "--name", "old"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "(train_scale_start: 1.0 -> 0.72)" in err and "refinery run --resume" in err
    assert main(["run", "--resume", str(tmp_path / "runs/old"), "--generations", "2", "--no-progress"]) == 0
    assert (tmp_path / "runs/old/seed-0/gen-2/summary.json").is_file()
