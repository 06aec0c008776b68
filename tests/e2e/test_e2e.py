"""End to end on real Fashion-MNIST (a few thousand images): run directory, table, labels, resume."""

import json

import numpy as np
import pytest
import yaml

from labelrefinery.checkpoint import load_checkpoint
from labelrefinery.cli import main
from labelrefinery.data import load_dataset
from labelrefinery.rundir import RunDir

from ..conftest import interrupt_after_first_epoch, needs_fashion_mnist

pytestmark = [needs_fashion_mnist, pytest.mark.slow]

ARGS = ["run", "--dataset", "fashion-mnist", "--train-size", "3000", "--test-size", "1000", "--epochs", "2",
        "--batch-size", "128", "--no-progress"]


def refinery(tmp_path, name, *extra):
    return main(ARGS + ["--runs-dir", str(tmp_path), "--name", name, *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    assert refinery(d, "full", "--generations", "2") == 0
    return d / "full"


def test_run_directory_contents(full_run):
    for f in ("config.yaml", "run.json", "metrics.jsonl", "results.json", "results.md", "seed-0/split.npz"):
        assert (full_run / f).is_file(), f
    for g in (1, 2):
        for f in ("model.safetensors", "labels.npz", "summary.json"):
            assert (full_run / f"seed-0/gen-{g}/{f}").is_file()
        assert not (full_run / f"seed-0/gen-{g}/train-state.pt").exists()
    assert not list(full_run.rglob("*.tmp"))
    cfg = yaml.safe_load((full_run / "config.yaml").read_text())
    assert cfg["generations"] == 2 and cfg["model"] == "convnet"
    records = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 4 and {"train_loss", "train_kl", "val_top1", "lr", "epoch_time_s"} <= set(epochs[0])
    assert len([r for r in records if r["kind"] == "generation"]) == 2


def test_checkpoint_and_labels(full_run):
    ds = load_dataset("fashion-mnist")
    state, classes, spec, extra = load_checkpoint(full_run / "seed-0/gen-1/model.safetensors")
    assert classes == ds.classes and spec["name"] == "convnet" and extra["generation"] == 1
    labels = RunDir(full_run).load_labels(0, 1)
    split = np.load(full_run / "seed-0/split.npz")
    assert labels["labels"].dtype == np.float32 and labels["labels"].shape == (len(split["train_indices"]), 10)
    assert np.allclose(labels["labels"].sum(1), 1, atol=1e-4)
    assert np.array_equal(labels["indices"], split["train_indices"])
    assert set(labels["indices"]).isdisjoint(split["val_indices"])
    # Refined labels of a trained R1 mostly agree with the ground truth, and are not one-hot.
    agree = (labels["labels"].argmax(1) == ds.train.labels.numpy()[labels["indices"]]).mean()
    assert agree > 0.7 and labels["labels"].max(1).mean() < 0.999


def test_validation_and_test_labels_are_the_originals(full_run):
    ds = load_dataset("fashion-mnist")
    split = np.load(full_run / "seed-0/split.npz")
    assert split["val_labels"].tobytes() == ds.train.labels.numpy()[split["val_indices"]].tobytes()
    assert split["test_labels"].tobytes() == ds.test.labels.numpy()[:1000].tobytes()
    assert len(split["train_indices"]) + len(split["val_indices"]) == 3000
    assert np.bincount(ds.train.labels.numpy()[split["val_indices"]]).tolist() == [45] * 10


def test_table(full_run, capsys):
    text = (full_run / "results.md").read_text()
    assert "| R1 |" in text and "| R2 |" in text and "fashion-mnist aug=none" in text
    results = json.loads((full_run / "results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [1, 2]
    assert results["generations"][0]["test_top1_mean"] > 60
    assert main(["report", str(full_run)]) == 0
    assert "| R2 |" in capsys.readouterr().out


def test_resume_after_generation_1_gives_same_labels(full_run, tmp_path):
    assert refinery(tmp_path, "resumed", "--generations", "1") == 0
    assert not (tmp_path / "resumed/seed-0/gen-2").exists()
    assert refinery(tmp_path, "resumed", "--generations", "2") == 0
    a = RunDir(full_run).load_labels(0, 2)["labels"]
    b = RunDir(tmp_path / "resumed").load_labels(0, 2)["labels"]
    assert np.array_equal(a, b)


def test_resume_mid_generation_gives_same_labels(full_run, tmp_path, monkeypatch):
    with interrupt_after_first_epoch(monkeypatch, "gen-2"):
        assert refinery(tmp_path, "mid", "--generations", "2") == 130
    assert (tmp_path / "mid/seed-0/gen-2/train-state.pt").exists()
    assert not (tmp_path / "mid/seed-0/gen-2/summary.json").exists()
    assert refinery(tmp_path, "mid", "--generations", "2") == 0
    a = RunDir(full_run).load_labels(0, 2)["labels"]
    b = RunDir(tmp_path / "mid").load_labels(0, 2)["labels"]
    assert np.array_equal(a, b)
    epochs = [json.loads(x) for x in (tmp_path / "mid/metrics.jsonl").read_text().splitlines()]
    assert [(r["generation"], r["epoch"]) for r in epochs if r["kind"] == "epoch"] == [(1, 1), (1, 2), (2, 1), (2, 2)]
