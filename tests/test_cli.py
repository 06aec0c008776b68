import json
import subprocess
import sys

import numpy as np
import pytest

from labelrefinery.cli import main

from .conftest import write_idx


def run_cli(args, tmp_path):
    return main(args + ["--runs-dir", str(tmp_path / "runs"), "--no-progress"])


@pytest.mark.parametrize("args,message", [
    (["--generations", "0"], "--generations must be >= 1, got 0"),
    (["--seeds", "0"], "--seeds must be a count in 1..1000 or a list of seeds, got 0"),
    (["--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["--dataset", "imagenet-21k"], "unknown dataset 'imagenet-21k'"),
    (["--label-form", "topk:0"], "--label-form"),
    (["--ensemble", "1,9"], "--ensemble"),
    (["--threads", "-3"], "--threads must be in [0, 1024] (0 = all cores), got -3"),
    (["--device", "cudafoo"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'cudafoo'"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature must be a finite number > 0"),
    (["--dataset", "digits", "--val-fraction", "0.001"], "--val-fraction between"),
    (["--dataset", "digits", "--train-size", "5000"], "--train-size 5000 exceeds the 1437 train images"),
    (["--dataset", "digits", "--model", "timm:not_a_model"], "timm has no model 'not_a_model'"),
    (["--dataset", "digits", "--refinery-checkpoint", "/nonexistent.safetensors"], "does not exist"),
    (["--name", ""], "--name must be a plain directory name"),
    (["--train-scale-start", "1.5"], "--train-scale-start must be a fraction of the image side in (0, 1]"),
    (["--dataset", "digits", "--train-scale-start", "0.4"],
     "--train-scale-start 0.4 trains the digits images at 3 px; use a fraction that keeps at least 4 px"),
])
def test_bad_flags_exit_2_one_line_no_files(args, message, tmp_path, capsys):
    assert run_cli(["run", *args], tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_corrupt_data_file_exit_2_no_files(tiny_idx_dir, tmp_path, capsys):
    p = tiny_idx_dir / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:50])
    code = run_cli(["run", "--data-dir", str(tiny_idx_dir), "--name", "x"], tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "runs" / "x").exists()


def test_labels_out_of_range_exit_2(tiny_idx_dir, tmp_path, capsys):
    write_idx(tiny_idx_dir / "train-labels-idx1-ubyte.gz", np.arange(120) % 11)
    assert run_cli(["run", "--data-dir", str(tiny_idx_dir), "--name", "x"], tmp_path) == 2
    assert "outside [0, 10)" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "x").exists()


def test_changed_config_refused(tmp_path, capsys):
    base = ["run", "--dataset", "digits", "--epochs", "1", "--generations", "1", "--name", "d"]
    assert run_cli(base, tmp_path) == 0
    assert run_cli(base[:-2] + ["--name", "d", "--lr", "0.01"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "different configuration (lr: 0.003 -> 0.01)" in err and "same flags" in err


def test_help_documents_units():
    out = subprocess.run([sys.executable, "-m", "labelrefinery", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--generations", "--seeds", "--augment", "--batch-size", "--early-stop-min-delta", "--precision"):
        assert flag in out.stdout
    assert "percentage points" in out.stdout and "per optimizer step" in out.stdout


def test_bad_refinery_files_leave_nothing(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02random bytes")
    assert run_cli(["run", "--dataset", "digits", "--refinery-checkpoint", str(junk), "--name", "j"], tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read checkpoint" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs" / "j").exists()
    assert run_cli(["run", "--dataset", "digits", "--refinery-checkpoint", str(tmp_path), "--name", "j"], tmp_path) == 2
    assert "is not a file" in capsys.readouterr().err


def test_runs_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["run", "--dataset", "digits", "--runs-dir", str(f), "--no-progress"]) == 2
    assert "cannot make run directory" in capsys.readouterr().err


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
    header = capsys.readouterr().out.splitlines()[2]
    assert "recalibrate_bn=True" in header and "recalibrate_bn=False" in header


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


def test_chain_clock():
    from labelrefinery.console import ChainClock, format_duration

    clock = ChainClock(10)
    assert clock.eta_s() is None and clock.eta_text() == "chain ETA ?"
    clock.epoch_done(3.0)
    clock.epoch_done(5.0)
    assert clock.eta_s() == pytest.approx(4.0 * 8)
    clock.skip(6)  # early stopping: 6 planned epochs will not run
    assert clock.eta_s() == pytest.approx(8.0) and clock.eta_text() == "chain ETA 8s"
    assert [format_duration(s) for s in (59.4, 61, 3725)] == ["59s", "1m01s", "1h02m"]


def test_planned_epochs_counts_what_is_left(tmp_path):
    from labelrefinery.config import resolve_config
    from labelrefinery.generation import planned_epochs
    from labelrefinery.rundir import RunDir

    cfg = resolve_config("quick", {"dataset": "digits", "epochs": 3, "generations": 2, "seeds": 2, "controls": True})
    rd = RunDir(tmp_path / "r")
    assert planned_epochs(cfg, rd) == 2 * (3 + 3 + 3 + 3 * 2)  # per seed: R1, R2, label smoothing, equal compute
    (tmp_path / "r/seed-0/gen-1").mkdir(parents=True)
    (tmp_path / "r/seed-0/gen-1/summary.json").write_text("{}")
    assert planned_epochs(cfg, rd) == 2 * 15 - 3


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


def test_refine_preset_is_patient_and_controlled():
    from labelrefinery.config import resolve_config
    from labelrefinery.generation import planned_epochs
    from labelrefinery.rundir import RunDir

    cfg = resolve_config("refine", {})
    assert cfg.refinement.controls and cfg.seeds >= 3 and cfg.refinement.labels == "offline"
    assert cfg.training.epochs >= 2 * resolve_config("quick", {}).training.epochs  # patient generations
    per_seed = planned_epochs(cfg, RunDir("/nonexistent")) // cfg.seeds
    assert per_seed == 112  # the figure --help quotes: 3 x 16 + label smoothing 16 + equal compute 48
    assert "112 epochs per seed" in " ".join(build_parser_help())


def build_parser_help():
    from labelrefinery.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    return run.format_help().split()


def test_no_abbreviated_flags(capsys):
    """`--seed 5` is not silently `--seeds 5`: every flag must be given whole."""
    for flags in (["--seed", "5"], ["--gen", "2"], ["--label-n", "symmetric:0.1"]):
        assert main(["run", "--dataset", "digits", *flags]) == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments" in err and flags[0] in err


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


def test_version_and_mps_device(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("refinery (labelrefinery) 0.")
    import torch

    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        assert main(["run", "--dataset", "digits", "--device", "mps"]) == 2
        assert "no usable MPS" in capsys.readouterr().err
    assert main(["run", "--dataset", "digits", "--device", "tpu"]) == 2
    assert "cuda:N or mps" in capsys.readouterr().err


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
