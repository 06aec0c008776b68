"""Image folders streamed from their files (``--data-in-memory no``) against the same folder held in memory.

The folder: 300 small JPEG and PNG files (scikit-learn's digits 0, 1 and 2, enlarged and coloured), in the
ImageNet layout ``train/<class>/``, ``val/<class>/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from labelrefinery.cli import main
from labelrefinery.data import load_dataset

from ..conftest import interrupt_after_first_epoch


def _run(args: list[str], runs: Path, name: str) -> int:
    return main(["run", *args, "--no-progress", "--threads", "1", "--runs-dir", str(runs), "--name", name])


def _common(folder: Path, cache: Path) -> list[str]:
    return ["--dataset", f"folder:{folder}", "--image-size", "16", "--cache-dir", str(cache), "--model", "convnet",
            "--epochs", "2", "--batch-size", "32", "--lr-schedule", "onecycle", "--lr", "3e-3",
            "--early-stop-patience-epochs", "0", "--workers", "2"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_streamed_run_equals_in_memory_run_and_resumes_mid_generation(digit_folder, tmp_path, monkeypatch):
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    args = [*_common(digit_folder, cache), "--generations", "2", "--augment", "crop", "--labels", "online"]
    assert _run([*args, "--data-in-memory", "yes"], runs, "memory") == 0
    with interrupt_after_first_epoch(monkeypatch, "gen-2"):
        assert _run([*args, "--data-in-memory", "no"], runs, "streamed") == 130
    assert (runs / "streamed" / "seed-0" / "gen-2" / "train-state.pt").exists()
    assert not (runs / "streamed" / "seed-0" / "gen-2" / "summary.json").exists()
    assert _run([*args, "--data-in-memory", "no"], runs, "streamed") == 0  # resumes after epoch 1 of R2
    info = json.loads((runs / "streamed" / "run.json").read_text())
    assert info["dataset"]["streamed"] is True and info["dataset"]["workers_per_process"] == 2
    for g in (1, 2):
        a = json.loads((runs / "memory" / "seed-0" / f"gen-{g}" / "summary.json").read_text())
        b = json.loads((runs / "streamed" / "seed-0" / f"gen-{g}" / "summary.json").read_text())
        assert (a["val_top1"], a["test_top1"]) == (b["val_top1"], b["test_top1"])
        la = np.load(runs / "memory" / "seed-0" / f"gen-{g}" / "labels.npz")["labels"]
        lb = np.load(runs / "streamed" / "seed-0" / f"gen-{g}" / "labels.npz")["labels"]
        np.testing.assert_array_equal(la, lb)
    assert a["test_top1"] > 60  # three digit classes: it learned


@pytest.mark.slow
@pytest.mark.multiprocess
def test_per_crop_labels_see_the_students_crops(digit_folder, tmp_path, monkeypatch):
    from labelrefinery import targets as targets_module

    pairs = []
    real = targets_module.RefineryTargets.for_batch

    def spy(self, index, images, student, pipeline, generator):
        got = {}
        hook = self.refinery.register_forward_pre_hook(lambda m, a: got.setdefault("refinery", a[0].clone()))
        out = real(self, index, images, student, pipeline, generator)
        hook.remove()

        def once(module, args):  # the student's next forward pass is this batch's training step
            pairs.append((got["refinery"], args[0].detach().clone(), images.shape))
            handle.remove()
        handle = student.register_forward_pre_hook(once)
        return out

    monkeypatch.setattr(targets_module.RefineryTargets, "for_batch", spy)
    args = [*_common(digit_folder, tmp_path / "cache"), "--generations", "2", "--augment", "crop", "--labels",
            "online", "--epochs", "1", "--data-in-memory", "no"]
    assert _run(args, tmp_path / "runs", "crops") == 0
    assert len(pairs) >= 7  # every batch of R2: 192 training images / 32
    for refinery_input, student_input, shape in pairs:
        assert shape[-1] == 14  # random resized crops of the 16 px images, 14 px (224/256)
        assert torch.equal(refinery_input, student_input)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_corrupt_file_named_then_skipped(digit_folder, tmp_path, capsys):
    import shutil

    folder = tmp_path / "imgs"
    shutil.copytree(digit_folder, folder)
    bad = folder / "train" / "one" / "zz-broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    args = [*_common(folder, tmp_path / "cache"), "--generations", "1", "--epochs", "1", "--data-in-memory", "no"]
    assert _run(args, tmp_path / "runs", "bad") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("refinery: error: cannot read image ") and str(bad) in err[-1]
    assert "--skip-bad-images" in err[-1]
    assert _run([*args, "--skip-bad-images"], tmp_path / "runs", "skip") == 0
    info = json.loads((tmp_path / "runs" / "skip" / "run.json").read_text())
    assert info["dataset"]["skipped_unreadable_files"] == 1 and info["dataset"]["train_available"] == 240
    assert "leaving out 1 unreadable image file(s), e.g. " + str(bad) in capsys.readouterr().err


def test_static_augment_and_unstreamable_datasets_refused(digit_folder, tmp_path, capsys):
    args = [*_common(digit_folder, tmp_path / "cache"), "--augment", "static", "--data-in-memory", "no"]
    assert _run(args, tmp_path / "runs", "static") == 2
    assert "--augment static" in capsys.readouterr().err
    assert _run(["--dataset", "digits", "--data-in-memory", "no"], tmp_path / "runs", "digits") == 2
    assert "only folder:PATH and csv:FILE datasets stream" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "static").exists() and not (tmp_path / "runs" / "digits").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ctrl_c_stops_the_workers(digit_folder, tmp_path):
    """SIGINT to the process group (what Ctrl-C sends): exit 130, the message, no worker process left."""
    cmd = [sys.executable, "-m", "labelrefinery", "run", *_common(digit_folder, tmp_path / "cache"),
           "--epochs", "50", "--data-in-memory", "no", "--threads", "1",
           "--runs-dir", str(tmp_path / "runs")]
    # A shell's background job inherits SIGINT ignored (so would the run): restore the default, as in a terminal.
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    while proc.poll() is None:  # stderr is not a terminal: one plain line per epoch
        lines.append(proc.stderr.readline())
        if "epoch 1/50:" in lines[-1]:
            break
    time.sleep(0.3)  # into the next epoch's pass, while its workers decode
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted; finished epochs and generations are kept" in rest
    assert "Traceback" not in rest
    deadline = time.time() + 10  # workers end on their own SIGINT; on a busy machine that may take a moment
    while (left := subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()) \
            and time.time() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left in the group: {left}"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_inspect_and_predict_a_streamed_run(digit_folder, tmp_path):
    """The report and the saved model read a streamed run's images from their files."""
    args = [*_common(digit_folder, tmp_path / "cache"), "--generations", "2", "--epochs", "1", "--data-in-memory",
            "no", "--label-storage", "float16"]
    assert _run(args, tmp_path / "runs", "s") == 0
    run = tmp_path / "runs" / "s"
    assert main(["inspect", str(run), "--images", "2"]) == 0
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") > 6  # plots and the images decoded from the folder's files
    from labelrefinery.classifier import load_classifier

    classifier = load_classifier(run, generation=1)
    memory = load_dataset(f"folder:{digit_folder}", image_size=16, in_memory="yes", cache_dir=tmp_path / "cache")
    correct = int((classifier.predict_proba(memory.test.images).argmax(1) == memory.test.labels).sum())
    summary = json.loads((run / "seed-0" / "gen-1" / "summary.json").read_text())
    assert 100 * correct / len(memory.test.labels) == summary["test_top1"] and summary["label_storage"] == "float16"


@pytest.mark.multiprocess
def test_config_file_yes_no_and_a_test_size_that_drops_classes(digit_folder, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("data_in_memory: no\nworkers: 1\n")  # YAML reads bare no as false
    args = [*_common(digit_folder, tmp_path / "cache"), "--generations", "1", "--epochs", "1", "--test-size", "20",
            "--config", str(tmp_path / "c.yaml")]
    args[args.index("--workers") : args.index("--workers") + 2] = []
    assert _run(args, tmp_path / "runs", "cfg") == 0
    err = capsys.readouterr().err
    assert "streamed from the files by 1 worker process" in err
    assert "warning: --test-size 20 keeps the first 20 test images, which hold only 1 of the test split's 3" in err
