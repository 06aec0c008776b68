"""The command line: flags checked before anything is written, one-line errors, --help, --version."""

import subprocess
import sys

import numpy as np
import pytest

from labelrefinery.cli import main

from ..conftest import run_cli, write_idx


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


@pytest.mark.slow
@pytest.mark.multiprocess
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


def test_no_abbreviated_flags(capsys):
    """`--seed 5` is not silently `--seeds 5`: every flag must be given whole."""
    for flags in (["--seed", "5"], ["--gen", "2"], ["--label-n", "symmetric:0.1"]):
        assert main(["run", "--dataset", "digits", *flags]) == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments" in err and flags[0] in err


def test_version_and_mps_device(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("refinery (labelrefinery) 0.")
    import torch

    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        assert main(["run", "--dataset", "digits", "--device", "mps"]) == 2
        assert "no usable MPS" in capsys.readouterr().err
    assert main(["run", "--dataset", "digits", "--device", "tpu"]) == 2
    assert "cuda:N or mps" in capsys.readouterr().err


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
