"""Fault injection, every number is the user's: an edited number is refused by every command that shows it;
read-only commands leave a run as it was (also on a read-only file system); damaged files are named."""

import json
import os
import shutil

import numpy as np
import pytest

from labelrefinery.cli import main
from labelrefinery.rundir import RunDir

from ..conftest import TINY, tiny_run
from .conftest import garble, one_line_error, resume, tree


@pytest.mark.parametrize("command", ["report", "evaluate", "inspect", "label-issues"])
def test_an_edited_number_is_refused_by_every_command_that_shows_it(copy, tmp_path, capsys, command):
    """A summary whose test top-1 was edited (valid JSON, a plausible number) is never shown as the run's."""
    p = copy / "seed-0/gen-2/summary.json"
    s = json.loads(p.read_text())
    s["test_top1"] = 12.5
    p.write_text(json.dumps(s, indent=2))
    extra = {"inspect": ["--out", str(tmp_path / "r.html")], "label-issues": ["--generation", "2"],
             "evaluate": ["--device", "cpu"], "report": []}[command]
    assert main([command, str(copy), *extra]) == 2
    assert "12.5" not in one_line_error(capsys, "gen-2/summary.json", "edited")


def test_an_edited_ensemble_number_is_refused(copy, capsys):
    p = copy / "ensemble.json"
    entries = json.loads(p.read_text())
    entries[0]["test_top1_mean"] = 99.9
    p.write_text(json.dumps(entries))
    assert main(["report", str(copy)]) == 2
    one_line_error(capsys, "ensemble.json", "edited")


@pytest.mark.slow
def test_damaged_metrics_and_run_facts_are_named_where_nothing_depends_on_them(copy, tmp_path, capsys):
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2] + "#garbled#"
    (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    garble(copy / "run.json")
    assert main(["inspect", str(copy), "--out", str(tmp_path / "r.html"), "--images", "1"]) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl line 2 is damaged" in err and "run.json is damaged" in err and "Traceback" not in err
    (copy / "metrics.jsonl").unlink()
    assert main(["inspect", str(copy), "--out", str(tmp_path / "r.html"), "--images", "1"]) == 0
    assert "metrics.jsonl is missing" in capsys.readouterr().err


@pytest.mark.slow
def test_read_only_commands_leave_the_run_directory_as_it_was(copy, tmp_path, capsys):
    """evaluate, report --out, label-issues --out, inspect --out and predict only read: no lock, no file."""
    from PIL import Image

    before = tree(copy)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(images / "a.png")
    for argv in (["evaluate", str(copy), "--device", "cpu"], ["report", str(copy), "--out", str(tmp_path / "rep")],
                 ["label-issues", str(copy), "--out", str(tmp_path / "issues.csv")],
                 ["inspect", str(copy), "--out", str(tmp_path / "page.html"), "--images", "1"],
                 ["predict", str(copy), str(images), "--device", "cpu"]):
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert tree(copy) == before


@pytest.fixture
def read_only(monkeypatch):
    """Make every directory given to it behave as on a read-only file system (as for root, whom permission bits
    do not stop): opening a file there for writing fails with EROFS."""
    import builtins
    import errno

    roots = []
    real_open, real_os_open = builtins.open, os.open

    def inside(path):
        try:
            resolved = os.path.realpath(os.fspath(path))
        except TypeError:
            return False
        return any(resolved == r or resolved.startswith(r + os.sep) for r in roots)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    return lambda root: roots.append(os.path.realpath(root))


@pytest.mark.slow
def test_commands_that_read_work_on_a_read_only_run_directory(copy, tmp_path, capsys, read_only):
    read_only(copy)
    assert main(["evaluate", str(copy), "--device", "cpu"]) == 0
    assert main(["report", str(copy)]) == 0  # the table is printed; results cannot be updated there
    captured = capsys.readouterr()
    assert "| R2 |" in captured.out and "not updated" in captured.err and "--out" in captured.err
    assert main(["label-issues", str(copy), "--out", str(tmp_path / "issues.csv")]) == 0
    assert main(["inspect", str(copy), "--out", str(tmp_path / "page.html"), "--images", "1"]) == 0
    capsys.readouterr()
    assert main(["label-issues", str(copy)]) == 2  # its default place is in the run: one line, say where else
    one_line_error(capsys, "label_issues.csv", "Read-only")


@pytest.mark.parametrize("command", ["run", "evaluate", "report", "inspect", "label-issues", "predict"])
def test_a_damaged_config_is_refused_by_every_command(copy, tmp_path, capsys, command):
    garble(copy / "config.yaml")
    argv = {"run": ["run", "--resume", str(copy)], "evaluate": ["evaluate", str(copy)],
            "report": ["report", str(copy)], "inspect": ["inspect", str(copy), "--out", str(tmp_path / "p.html")],
            "label-issues": ["label-issues", str(copy), "--out", str(tmp_path / "i.csv")],
            "predict": ["predict", str(copy), str(tmp_path)]}[command]
    assert main(argv) == 2
    one_line_error(capsys, "config.yaml")


def test_the_epoch_line_gives_the_epochs_peak_learning_rate(tmp_path, capsys):
    """One-cycle: the rate at an epoch's start is its lowest; the line and metrics give its peak."""
    assert tiny_run(tmp_path, "lr", "--lr-schedule", "onecycle", "--lr", "0.003", "--generations", "1",
               "--epochs", "2", "--progress") == 0
    epochs = [r for r in RunDir(tmp_path / "lr").read_metrics() if r.get("kind") == "epoch"]
    assert epochs[0]["lr"] < 0.001 and epochs[0]["lr_peak"] == pytest.approx(0.003)
    assert "peak lr 0.003" in capsys.readouterr().err


def test_an_edited_split_is_refused(copy, tmp_path, capsys):
    path = copy / "seed-0/split.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_labels"][:20] = (arrays["train_labels"][:20] + 1) % 10  # a valid npz, labels changed
    np.savez(path, **arrays)
    assert main(["label-issues", str(copy), "--out", str(tmp_path / "i.csv")]) == 2
    one_line_error(capsys, "split.npz", "edited")
    assert resume(copy) == 0  # a run rebuilds a damaged split from its seed
    assert main(["label-issues", str(copy), "--out", str(tmp_path / "i.csv")]) == 0


@pytest.mark.slow
def test_a_seed_directory_from_another_run_is_refused_and_left_as_it_is(copy, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["run", *TINY, "--label-noise", "symmetric:0.3", "--runs-dir", str(tmp_path), "--name",
                 "other"]) == 0
    shutil.rmtree(copy / "seed-0")
    shutil.copytree(other / "seed-0", copy / "seed-0")
    before = tree(copy / "seed-0")
    for argv in (["report", str(copy)], ["evaluate", str(copy), "--device", "cpu"],
                 ["label-issues", str(copy), "--out", str(tmp_path / "i.csv")],
                 ["inspect", str(copy), "--out", str(tmp_path / "p.html")], ["predict", str(copy), str(tmp_path)]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        one_line_error(capsys, "belongs to another run")
    capsys.readouterr()
    assert resume(copy) == 2
    capsys.readouterr()
    assert tree(copy / "seed-0") == before  # a refused command changed nothing


def test_a_model_file_carries_its_own_checksum(copy, tmp_path, capsys):
    path = copy / "seed-0/gen-2/model.safetensors"
    loose = tmp_path / "model.safetensors"
    shutil.copy(path, loose)
    garble_tail = bytearray(loose.read_bytes())
    for i in range(len(garble_tail) - 64, len(garble_tail) - 48):  # weights, not the header
        garble_tail[i] ^= 0x5A
    loose.write_bytes(bytes(garble_tail))
    assert main(["predict", str(loose), str(tmp_path)]) == 2
    one_line_error(capsys, "model.safetensors", "weights do not match")


def test_evaluate_refuses_an_ensemble_of_one_generation_repeated_or_with_an_empty_item(copy, capsys):
    for value in ("1,1", "", "1,,2", "2,"):
        assert main(["evaluate", str(copy), "--ensemble", value]) == 2
        one_line_error(capsys, "--ensemble")
    assert "1, 1" not in (copy / "ensemble.json").read_text()


@pytest.mark.slow
def test_a_cut_metrics_file_is_named(copy, tmp_path, capsys):
    data = (copy / "metrics.jsonl").read_bytes()
    (copy / "metrics.jsonl").write_bytes(data[: len(data) // 3])
    assert main(["inspect", str(copy), "--out", str(tmp_path / "p.html"), "--images", "1"]) == 0
    assert "metrics.jsonl lacks the records of" in capsys.readouterr().err
