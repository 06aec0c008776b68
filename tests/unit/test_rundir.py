"""The run directory: how labels.npz stores refined labels (``--label-storage``: float32, float16, top-J; read
back as float32 rows) and reading run directories of older versions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from labelrefinery.cli import main
from labelrefinery.fileio import atomic_write_text
from labelrefinery.rundir import LABEL_STORAGE_FLOAT32_MAX, RunDir, as_stored, label_storage

from ..conftest import interrupt_after_first_epoch


def _rows(m: int = 50, k: int = 10) -> torch.Tensor:
    return torch.softmax(torch.randn(m, k, generator=torch.Generator().manual_seed(0)) * 3, dim=1)


@pytest.mark.parametrize("storage", ["float32", "float16", "topk:3"])
def test_each_storage_reads_back_as_float32_rows(tmp_path, storage):
    rows = _rows()
    rd = RunDir(tmp_path / "run")
    rd.save_labels(0, 1, rows, torch.arange(50), torch.zeros(50, dtype=torch.int64), [f"c{k}" for k in range(10)],
                   storage)
    with np.load(rd.labels_path(0, 1)) as z:
        assert str(z["storage"]) == storage
        assert ("topk_indices" in z.files) == storage.startswith("topk")
        if storage == "float16":
            assert z["labels"].dtype == np.float16
    out = rd.load_labels(0, 1, 50, 10)
    labels = out["labels"]
    assert out["storage"] == storage and labels.dtype == np.float32 and labels.shape == (50, 10)
    np.testing.assert_allclose(labels.sum(1), 1, atol=1e-6)
    if storage == "topk:3":
        top = rows.topk(3, dim=1)
        expected = torch.zeros_like(rows).scatter_(1, top.indices, top.values)
        expected /= expected.sum(1, keepdim=True)
        np.testing.assert_allclose(labels, expected.numpy(), atol=2e-3)
        assert ((labels > 0).sum(1) == 3).all()
    else:
        np.testing.assert_allclose(labels, rows.numpy(), atol=1e-3 if storage == "float16" else 0)
    np.testing.assert_array_equal(as_stored(rows, storage).numpy(), labels)  # what a resumed chain reads


def test_auto_picks_float16_for_large_label_sets():
    assert label_storage("auto", 60000, 10) == "float32"
    assert label_storage("auto", 1_281_167, 1000) == "float16"  # ImageNet
    assert label_storage("auto", LABEL_STORAGE_FLOAT32_MAX // 10, 10) == "float32"
    assert label_storage("topk:10", 100, 10) == "float32" and label_storage("topk:5", 100, 10) == "topk:5"


def test_a_bad_storage_is_one_line(tmp_path, capsys):
    assert main(["run", "--dataset", "digits", "--label-storage", "topk:0", "--runs-dir", str(tmp_path)]) == 2
    assert "--label-storage" in capsys.readouterr().err


@pytest.mark.slow
def test_top_j_chain_resumes_to_the_same_labels(tmp_path, monkeypatch):
    args = ["run", "--dataset", "digits", "--model", "convnet", "--epochs", "2", "--generations", "3",
            "--label-storage", "topk:2", "--no-progress", "--threads", "1", "--runs-dir", str(tmp_path)]
    assert main([*args, "--name", "whole"]) == 0
    with interrupt_after_first_epoch(monkeypatch, "gen-3"):
        assert main([*args, "--name", "resumed"]) == 130
    assert main([*args, "--name", "resumed"]) == 0
    a, b = RunDir(tmp_path / "whole"), RunDir(tmp_path / "resumed")
    assert a.read_summary(0, 2)["label_storage"] == "topk:2"
    np.testing.assert_array_equal(a.load_labels(0, 3)["labels"], b.load_labels(0, 3)["labels"])
    assert a.read_summary(0, 3)["test_top1"] == b.read_summary(0, 3)["test_top1"]


@pytest.mark.slow
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
