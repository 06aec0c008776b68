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
    (["--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["--dataset", "imagenet-21k"], "unknown dataset 'imagenet-21k'"),
    (["--label-form", "topk:0"], "--label-form"),
    (["--ensemble", "1,9"], "--ensemble"),
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
