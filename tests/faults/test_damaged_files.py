"""Fault injection: every kind of file in a run directory truncated, garbled in the middle (same size) or
edited (valid format, wrong content) is refused in one line naming it, or rebuilt where it can be."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from labelrefinery.cli import main
from labelrefinery.rundir import RunDir

from ..conftest import interrupt_after_first_epoch, tiny_run
from .conftest import garble, one_line_error, resume, tree, truncate


DAMAGE = {"truncated": truncate, "garbled": garble}


READERS = {  # file -> the command that must read it
    "config.yaml": "run", "seed-0/gen-2/summary.json": "run", "seed-0/gen-1/labels.npz": "run",
    "seed-0/gen-1/model.safetensors": "evaluate", "seed-0/gen-2/model.safetensors": "evaluate",
    "ensemble.json": "run",
}


def _read_with(command, copy):
    if command == "run":
        return resume(copy)
    return main(["evaluate", str(copy), "--ensemble", "1,2", "--device", "cpu"])


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", sorted(READERS))
def test_damaged_file_is_one_line_naming_it(copy, capsys, name, damage):
    DAMAGE[damage](copy / name)
    assert _read_with(READERS[name], copy) == 2
    one_line_error(capsys, os.path.basename(name))


def test_damaged_summary_names_the_generation_to_delete(copy, capsys):
    garble(copy / "seed-0/gen-2/summary.json")
    assert resume(copy) == 2
    one_line_error(capsys, "summary.json", "seed-0/gen-2")


def _rewrite_labels(copy, edit):
    path = copy / "seed-0/gen-1/labels.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


LABEL_EDITS = {
    "nan": lambda a: a["labels"].__setitem__((0, 0), np.nan),
    "negative": lambda a: a["labels"].__setitem__((0, slice(0, 2)), [-0.5, 1.5]),
    "rows-do-not-sum-to-1": lambda a: a.__setitem__("labels", a["labels"] * 2),
    "wrong-shape": lambda a: a.__setitem__("labels", a["labels"][:, :5]),
    "wrong-rows": lambda a: a.__setitem__("labels", a["labels"][:-3]),
}


@pytest.mark.parametrize("edit", sorted(LABEL_EDITS))
@pytest.mark.parametrize("with_hash", [True, False])
def test_edited_labels_are_refused(copy, capsys, edit, with_hash):
    """Labels that are valid npz but not probability rows of the run's shape are never trained on."""
    _rewrite_labels(copy, LABEL_EDITS[edit])
    if not with_hash:  # a run directory from before file hashes were recorded
        for g in (1, 2):
            p = copy / f"seed-0/gen-{g}/summary.json"
            s = json.loads(p.read_text())
            s.pop("files", None)
            s.pop("sha256", None)  # older versions wrote neither file checksums nor the summary's own
            p.write_text(json.dumps(s))
    shutil.rmtree(copy / "seed-0/gen-2")  # generation 2 must be retrained from generation 1's labels
    assert resume(copy) == 2
    one_line_error(capsys, "labels.npz")


def test_weights_replaced_by_nan_are_refused(copy, capsys):
    path = copy / "seed-0/gen-1/model.safetensors"
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, path, metadata=meta)
    assert main(["evaluate", str(copy), "--ensemble", "1,2", "--device", "cpu"]) == 2
    one_line_error(capsys, "model.safetensors")


def test_edited_summary_values_are_refused(copy, capsys):
    """Refused before anything is rewritten: run.json and config.yaml stay as they were."""
    p = copy / "seed-0/gen-2/summary.json"
    s = json.loads(p.read_text())
    s["test_top1"] = "ninety"
    p.write_text(json.dumps(s))
    before = tree(copy)
    assert resume(copy) == 2
    one_line_error(capsys, "summary.json")
    after = tree(copy)
    after.pop(".lock"), before.pop(".lock")  # the lock is taken (and its pid written) before anything is read
    assert after == before


def test_edited_config_value_is_refused(copy, capsys):
    p = copy / "config.yaml"
    cfg = yaml.safe_load(p.read_text())
    cfg["training"]["lr"] = "fast"
    p.write_text(yaml.safe_dump(cfg))
    assert resume(copy) == 2
    one_line_error(capsys, "config.yaml")


def test_partial_last_metrics_line_is_read(copy, capsys):
    with open(copy / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "epoch", "seed": 0, "gen')
    assert resume(copy) == 0
    records = RunDir(copy).read_metrics()
    assert records and all("kind" in r for r in records)


def test_derived_files_are_rebuilt(copy):
    """results.json, results.md and split.npz are rebuilt from what the run holds."""
    truncate(copy / "results.json")
    garble(copy / "seed-0/split.npz")
    before = json.loads((copy.parent.parent / "finished0" / "run" / "results.json").read_text()) \
        if (copy.parent.parent / "finished0").exists() else None
    assert resume(copy) == 0
    results = json.loads((copy / "results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [1, 2]
    with np.load(copy / "seed-0/split.npz") as z:
        assert len(z["train_indices"]) > 0
    del before


def test_leftovers_of_a_killed_run_are_removed(copy):
    (copy / "seed-0/gen-1/.labels.npz.abc123.tmp").write_bytes(b"partial")
    (copy / ".config.yaml.xyz.tmp").write_bytes(b"partial")
    torch.save({"epoch": 0}, copy / "seed-0/gen-1/train-state.pt")  # killed after summary, before unlink
    assert resume(copy) == 0
    assert not list(copy.rglob("*.tmp"))
    assert not (copy / "seed-0/gen-1/train-state.pt").exists()


@pytest.fixture
def interrupted(tmp_path, monkeypatch):
    """A run killed after the first epoch of generation 2 (its train-state.pt is there)."""
    with interrupt_after_first_epoch(monkeypatch, "gen-2"):
        assert tiny_run(tmp_path, "mid", "--epochs", "2") == 130
    return tmp_path / "mid"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_resume_file_is_one_line(interrupted, capsys, damage):
    DAMAGE[damage](interrupted / "seed-0/gen-2/train-state.pt")
    assert tiny_run(interrupted.parent, "mid", "--epochs", "2") == 2
    one_line_error(capsys, "train-state.pt", "delete")


@pytest.mark.parametrize("flag", ["--trusted", "--true-labels"])
def test_an_edited_verified_label_file_is_refused_on_resume_and_nothing_is_rewritten(tmp_path, capsys, flag):
    """The run's split.npz holds what its --trusted / --true-labels file said; a resume after an edit stops before
    config.yaml, run.json or anything else is written (a refused resume must not leave --generations 3 behind)."""
    from labelrefinery.data import load_dataset

    ds = load_dataset("digits")
    f = tmp_path / "verified.csv"
    rows = [(i, int(ds.train.labels[i])) for i in range(0, 600, 12)]
    f.write_text("index,label\n" + "".join(f"{i},{y}\n" for i, y in rows))
    assert tiny_run(tmp_path, "v", flag, str(f)) == 0
    run = tmp_path / "v"
    before = tree(run)
    i, y = rows[3]
    f.write_text(f.read_text().replace(f"\n{i},{y}\n", f"\n{i},{(y + 1) % 10}\n"))
    assert main(["run", "--resume", str(run), "--generations", "3"]) == 2
    one_line_error(capsys, "split.npz", "--trusted/--true-labels file changed")
    after = tree(run)
    after.pop(".lock"), before.pop(".lock")
    assert after == before
