"""Smoke test of the benchmark scripts: each runs end to end on the tiniest input it allows, and every result
JSON carries ``meta`` (commit, command, ...) from ``benchmarks/benchmeta.py``.

One case per ``benchmarks/*.py`` script (``benchmeta.py``, ``noise_peers.py`` and ``dividemix.py`` are helpers, not
benchmarks). Scripts whose smallest run takes minutes (a full Fashion-MNIST epoch or more is built in) are listed
with the reason and skipped; ``streaming.py`` (seven Python processes, about 40 s on 2 cores) runs only with
``LABELREFINERY_SMOKE_ALL=1``. About 70 s on 2 cores for the rest; ``pytest -m 'not slow'`` leaves them out.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import HAVE_FASHION_MNIST

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

REPO = Path(__file__).resolve().parent.parent.parent
BENCH = REPO / "benchmarks"
ALL = os.environ.get("LABELREFINERY_SMOKE_ALL") == "1"

# script: (arguments, with {out} for the result JSON and {tmp} for a scratch folder; the reason to skip, or None)
CASES: dict[str, tuple[list[str], str | None]] = {
    "augment_warp.py": ([], None),  # no options, no JSON: one 256-image batch, 15 repeats
    "crop_speed.py": ([], None),  # no options, no JSON: one 64 x 3 x 256 x 256 batch, 9 repeats
    "predict_batch.py": (["--images", "64", "--batch-sizes", "32,64", "--repeats", "1", "--out", "{out}"], None),
    "throughput.py": (["--dataset", "digits", "--device", "cpu", "--images", "64", "--batch-size", "64",
                       "--repeats", "1", "--precisions", "fp32", "--matmul-size", "128", "--workers", "0",
                       "--out", "{out}"], None),
    # 200 digits, 1 epoch, 2 generations, 1 seed, without cleanlab (an optional package), no clean part
    "refinery_gain.py": (["--dataset", "digits", "--train-size", "200", "--epochs", "1", "--generations", "2",
                          "--seeds", "1", "--clean-seeds", "0", "--variants", "soft", "--no-cleanlab",
                          "--peers", "ce,coteaching,dividemix", "--out", "{out}"], None),
    # the quick preset's R1 on digits, one seed, its EMAs beside it
    "weight_averaging.py": (["--dataset", "digits", "--seeds", "0", "--out", "{out}"], None),
    # the quick preset's R1 on digits, one seed, with Lookahead and with the frozen whitening layer
    "lookahead_whitening.py": (["--dataset", "digits", "--seeds", "0", "--out", "{out}"], None),
    # a run directory made first (digits, 1 epoch, 1 generation): see test_benchmark
    "calibrated_estimates.py": (["{tmp}/runs/tiny", "--out", "{out}"], None),
    # a run directory made first (digits, 1 epoch, 1 generation): see test_benchmark
    "inspect_speed.py": (["{tmp}/runs/tiny", "--repeats", "1", "--out", "{out}"], None),
    # a run directory made first (digits, --augment crop, 1 epoch, 1 generation): see test_benchmark
    "overlap_crops.py": (["{tmp}/runs/crop", "--images", "100", "--out", "{out}"], None),
    # the smallest folder both splits of its quarter copy can hold (val/ gets 10%, the quarter a quarter of it)
    "streaming.py": (["--root", "{tmp}/folders", "--images", "400", "--loader-images", "16", "--train-images", "8",
                      "--workers", "0", "--out", "{out}"],
                     None if ALL else "seven Python processes, about 40 s: set LABELREFINERY_SMOKE_ALL=1"),
    # 200 Fashion-MNIST PNGs, 30 moved, 1 seed of 1 epoch (too weak a model for the round trip: it may leave a
    # class no training image; tests/e2e/test_label_issue_files.py covers that path)
    "label_issues_folder.py": (["--images", "200", "--test-images", "50", "--seeds", "1", "--epochs", "1",
                                "--out", "{out}"],
                               None if HAVE_FASHION_MNIST else "needs the Debian package dataset-fashion-mnist"),
    "quick_preset.py": ([], "minutes at least: one conventional epoch of the 60,000 Fashion-MNIST images is built in"),
    "quick_frontier.py": ([], "minutes at least: one conventional epoch of the 60,000 Fashion-MNIST images and "
                              "full-size candidate epochs are built in"),
    "step_settings.py": ([], "about 1-2 minutes at least: 50 timed steps of batch 128-256 per setting, six settings "
                             "at fixed batch sizes, are built in"),
    "noise_learning_curve.py": (["--train-size", "300", "--epochs", "1", "--out", "{out}"],
                                None if HAVE_FASHION_MNIST else "needs the Debian package dataset-fashion-mnist"),
    # a run directory made first (Fashion-MNIST, 200 images, 1 epoch, 1 generation): see test_benchmark
    "tta_flip.py": (["{tmp}/runs/fm", "--out", "{out}"],
                    None if HAVE_FASHION_MNIST else "needs the Debian package dataset-fashion-mnist"),
    "noise_posterior_study.py": ([], "minutes: R1 for 8 epochs on 10,200 Fashion-MNIST images is built in"),
}


def test_every_benchmark_script_has_a_case():
    scripts = {p.name for p in BENCH.glob("*.py")} - {"benchmeta.py", "noise_peers.py", "dividemix.py"}
    assert scripts == set(CASES), "add the new script to CASES (with its tiniest arguments, or a reason to skip)"


def _run(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(args)} exited {done.returncode}:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark(script, tmp_path):
    args, skip = CASES[script]
    if skip:
        pytest.skip(skip)
    out = tmp_path / "result.json"
    if script in ("inspect_speed.py", "calibrated_estimates.py"):
        _run(["-m", "labelrefinery", "run", "--dataset", "digits", "--train-size", "200", "--epochs", "1",
              "--generations", "1", "--runs-dir", str(tmp_path / "runs"), "--name", "tiny", "--no-progress"])
    if script == "overlap_crops.py":
        _run(["-m", "labelrefinery", "run", "--dataset", "digits", "--train-size", "200", "--epochs", "1",
              "--generations", "1", "--augment", "crop", "--runs-dir", str(tmp_path / "runs"), "--name", "crop",
              "--no-progress"])
    if script == "tta_flip.py":
        _run(["-m", "labelrefinery", "run", "--dataset", "fashion-mnist", "--train-size", "200", "--test-size", "200",
              "--epochs", "1", "--generations", "1", "--runs-dir", str(tmp_path / "runs"), "--name", "fm",
              "--no-progress"])
    _run([str(BENCH / script), *(a.format(out=out, tmp=tmp_path) for a in args)])
    if "{out}" not in args:
        return
    result = json.loads(out.read_text())
    meta = result["meta"]
    if script == "calibrated_estimates.py":  # R1's estimates at T = 1 and at its fitted temperature
        (row,) = result["runs"]["tiny"]
        assert row["temperature"] > 0 and all(0 <= row[k][e] < 1 for k in ("t1", "calibrated")
                                              for e in ("symmetric", "classwise"))
    if script == "tta_flip.py":  # one generation and its one-model ensemble, scored both ways
        rows = result["per_seed"]["0"]
        assert [r["generation"] for r in rows] == [1, "ensemble"]
        assert all(0 <= r["test_top1_flip_tta"] <= 100 for r in rows)
    if script == "refinery_gain.py":  # the relabellings the refinery suggests, pair by pair, with their precision
        chain = result["noisy"]["symmetric:0.4"]["refinery soft (whole chain)"]
        assert chain["suggestions"] and all(0 <= r["precision"] <= 100 and r["given"] != r["suggested"]
                                            for r in chain["suggestions"])
        peers = result["noisy"]["symmetric:0.4"]  # published noise-robust methods beside the refinery
        assert all(0 <= peers[row]["mean"] <= 100 for row in ("plain cross-entropy (the peers' R1)",
                                                              "co-teaching (true noise rate)"))
        opinion = chain["mean_opinion"]  # label-issues --all-seeds: training and validation images
        assert opinion["images"] == 200 and 0 <= opinion["precision"] <= 100 and 0 <= opinion["recall"] <= 100
    command = shlex.split(meta["command"])
    assert command[0] == sys.executable and command[1].endswith(script), command
    for key in ("cpu_features", "cpu_model", "torch", "threads", "python", "date_utc", "dirty", "cuda_device"):
        assert key in meta
    if shutil.which("git") and (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", meta["commit"]), meta["commit"]


def test_overlap_crops_reads_what_a_crop_of_a_row_shows(monkeypatch):
    """benchmarks/overlap_crops.py on rows images: a box on the left strip shows the left neighbour, one on the
    centre the labelled item; the model's argmax is counted against the label and that neighbour's class."""
    import importlib

    monkeypatch.syspath_prepend(str(BENCH))
    what_crops_show = importlib.import_module("overlap_crops").what_crops_show
    views = torch.tensor([[0, 14, 13, 41, 0], [14, 14, 41, 41, 0], [42, 14, 55, 41, 1], [0, 0, 55, 55, 0]])
    labels, neighbours = torch.tensor([0, 0, 0, 0]), torch.tensor([[1, 2], [1, 2], [3, 4], [1, 2]])
    shown = what_crops_show(views, labels, neighbours, torch.tensor([1, 0, 0, 0]), side=56)
    assert shown["crops"] == 4
    assert shown["mostly centre"] == {"share_of_crops": 25.0, "names_label": 100.0}  # the whole row: centre half
    assert shown["mostly left neighbour"] == {"share_of_crops": 25.0, "names_label": 0.0, "names_neighbour": 100.0,
                                              "names_another": 0.0}
    assert shown["mostly right neighbour"]["names_label"] == 100.0
