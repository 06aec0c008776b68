"""Several processes with torchrun: DistributedDataParallel over gloo on the CPU, two processes, digits.

Each torchrun call starts ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m labelrefinery``;
the processes take one thread each. Skipped only where processes cannot be started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from labelrefinery.cli import main
from labelrefinery.rundir import RunDir

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

ARGS = ["--dataset", "digits", "--model", "convnet", "--epochs", "3", "--batch-size", "64", "--lr-schedule",
        "onecycle", "--lr", "3e-3", "--early-stop-patience-epochs", "0", "--precision", "fp32", "--threads", "1",
        "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun starts its workers in sessions of their own)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has closed its files: not alive)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


def torchrun(args: list[str], procs: int = 2, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
           str(_free_port()), "-m", "labelrefinery", "run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, **kw)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    runs = tmp_path_factory.mktemp("ddp")
    done = torchrun([*ARGS, "--generations", "2", "--runs-dir", str(runs), "--name", "two"])
    assert done.returncode == 0, done.stderr[-3000:]
    return runs / "two", done


def test_two_processes_write_each_file_once(two_process_run):
    run, done = two_process_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = Counter((r["seed"], r["generation"], r["epoch"]) for r in records if r["kind"] == "epoch")
    assert sorted(epochs) == [(0, g, e) for g in (1, 2) for e in (1, 2, 3)] and set(epochs.values()) == {1}
    assert sum(r["kind"] == "generation" for r in records) == 2
    assert done.stdout.count("run directory:") == 1 and done.stdout.count("Test top-1 accuracy (%)") == 1
    assert done.stderr.count("[seed 0 R1] val ") == 1
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("train-state.pt"))
    # One label row per training view, in dataset order (no duplicates, no padding).
    rd = RunDir(run)
    split = rd.read_split(0)
    for g in (1, 2):
        saved = rd.load_labels(0, g)
        assert np.array_equal(saved["indices"], split["train_indices"])
        assert len(np.unique(saved["indices"])) == len(saved["indices"])


def test_two_process_labels_equal_one_process_prediction(two_process_run):
    """The same weights labelling the training images in one process give the rows the two processes made."""
    from labelrefinery.classifier import load_classifier
    from labelrefinery.data import load_dataset

    run, _ = two_process_run
    rd = RunDir(run)
    images = load_dataset("digits").train.images[torch.from_numpy(rd.read_split(0)["train_indices"])]
    one_process = load_classifier(run, generation=1).predict_proba(images)
    np.testing.assert_allclose(rd.load_labels(0, 1)["labels"], one_process.numpy(), atol=1e-5)


def test_two_processes_learn_like_one(two_process_run, tmp_path):
    run, _ = two_process_run
    assert main(["run", *ARGS, "--generations", "1", "--runs-dir", str(tmp_path), "--name", "one"]) == 0
    one = RunDir(tmp_path / "one").read_summary(0, 1)["test_top1"]
    two = RunDir(run).read_summary(0, 1)["test_top1"]
    assert one > 80 and abs(one - two) < 5, (one, two)  # same global batch of 64: 32 per process


def test_killed_two_process_run_resumes_under_one_and_two(tmp_path):
    args = [*ARGS[:ARGS.index("--epochs")], "--epochs", "12", *ARGS[ARGS.index("--epochs") + 2:],
            "--generations", "2", "--runs-dir", str(tmp_path), "--name", "killed"]
    args.remove("--no-progress")  # a plain line per epoch on stderr, to know when to kill
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "labelrefinery", "run", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env())
    seen = []
    while proc.poll() is None:
        seen.append(proc.stderr.readline())
        if "[seed 0 R2] epoch 2/12:" in seen[-1]:
            break
    pids = _tree(proc.pid)
    for pid in pids:  # torchrun and its workers at once, as a crash or a lost machine would
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while any(_alive(pid) for pid in pids) and time.time() < deadline:  # until their files are closed
        time.sleep(0.1)
    killed = tmp_path / "killed"
    assert (killed / "seed-0" / "gen-1" / "summary.json").exists(), "".join(seen[-20:])
    assert (killed / "seed-0" / "gen-2" / "train-state.pt").exists()
    assert not (killed / "seed-0" / "gen-2" / "summary.json").exists()
    r1 = RunDir(killed).read_summary(0, 1)
    shutil.copytree(killed, tmp_path / "copy")
    rest = args[: args.index("--name")]
    assert main(["run", *rest, "--name", "killed"]) == 0  # one process
    done = torchrun([*rest, "--name", "copy"])  # two processes
    assert done.returncode == 0, done.stderr[-3000:]
    for name, out in (("killed", None), ("copy", done.stderr)):
        rd = RunDir(tmp_path / name)
        assert rd.read_summary(0, 1) == r1  # R1 was not trained again
        assert rd.read_summary(0, 2)["epochs_run"] == 12
        epochs = [r["epoch"] for r in rd.read_metrics() if r["kind"] == "epoch" and r["generation"] == 2]
        assert epochs == list(range(1, 13)), epochs  # resumed after the last saved epoch, nothing twice
    assert "[seed 0 R2] resuming after epoch" in done.stderr


def _frozen_refinery_check(rank: int, port: int, out: str) -> None:
    """One of two processes: a generation with per-batch refined labels must leave the refinery untouched."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from labelrefinery import dist
    from labelrefinery.batch import Pipeline
    from labelrefinery.config import TrainConfig
    from labelrefinery.data import load_dataset
    from labelrefinery.engine import TrainData, TrainSetup, fit
    from labelrefinery.models import ModelSpec, build_model
    from labelrefinery.targets import FrozenRefinery, LabelRecipe, RefineryTargets

    device = torch.device("cpu")
    dist.start(device)
    ds = load_dataset("digits")
    spec = ModelSpec("convnet", 10, 1, 8)
    torch.manual_seed(0)
    refinery = build_model(spec).to(memory_format=torch.channels_last)
    refinery.train()
    for _ in range(3):  # move the BatchNorm buffers away from their initial values
        refinery(torch.randn(16, 1, 8, 8))
    before = {k: v.clone() for k, v in refinery.state_dict().items()}
    frozen = FrozenRefinery(refinery)
    targets = RefineryTargets(frozen, LabelRecipe(), ds.train.labels)
    student = build_model(spec).to(memory_format=torch.channels_last)
    pipeline = Pipeline.create(device, ds.mean, ds.std)
    cfg = TrainConfig(epochs=2, batch_size=64, lr_schedule="onecycle", early_stop_patience_epochs=0)
    fit(student, TrainData(ds.train.images, targets, ds.test.images, ds.test.labels), TrainSetup(cfg, pipeline, (0, 2)))
    after = refinery.state_dict()
    result = {"unchanged": all(torch.equal(before[k], after[k]) for k in before),
              "eval_mode": not frozen.training and not refinery.training,
              "wrapped": any(isinstance(m, torch.nn.parallel.DistributedDataParallel) for m in (frozen, refinery)),
              "student": {k: v.sum().item() for k, v in student.state_dict().items() if v.is_floating_point()}}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.stop()


def test_the_refinery_is_never_wrapped_nor_changed(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_frozen_refinery_check, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        assert r["unchanged"] and r["eval_mode"] and not r["wrapped"]
    assert results[0]["student"] == results[1]["student"]  # DDP kept the students identical


def test_a_bad_setting_is_said_once(tmp_path):
    """Every process checks the settings before they meet: only rank 0 says what is wrong."""
    done = torchrun([*ARGS, "--sync-bn", "--runs-dir", str(tmp_path)])
    assert done.returncode != 0
    assert done.stderr.count("refinery: error") == 1, done.stderr[-2000:]
    assert "refinery: error: --sync-bn needs CUDA" in done.stderr
    assert not list(tmp_path.iterdir())


def test_one_process_failing_while_training_stops_all_and_says_so_once(tmp_path):
    """A corrupt file in the second half of the test images: only rank 1 reads it (prediction is sharded)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("val", 6)):
        for c in ("a", "b", "c"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / c / f"{i:02d}.png")
    bad = tmp_path / "imgs" / "val" / "c" / "zz.png"
    bad.write_bytes(b"\x89PNG broken")
    args = ["--dataset", f"folder:{tmp_path / 'imgs'}", "--image-size", "8", "--data-in-memory", "no",
            "--workers", "1", "--model", "convnet", "--epochs", "1", "--generations", "1", "--batch-size", "16",
            "--threads", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--runs-dir",
            str(tmp_path / "runs")]
    done = torchrun(args)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("refinery: error")]
    assert len(errors) == 1 and errors[0].startswith(f"refinery: error (rank 1): cannot read image {bad}"), \
        done.stderr[-3000:]
