"""Fault injection: a run directory in use by another process, a killed holder of its lock, two fresh runs
at once, and a kill at every atomic write of a tiny run, resumed to the same numbers."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from labelrefinery.cli import main
from labelrefinery.rundir import RunDir

from ..conftest import TINY, tiny_run
from .conftest import one_line_error, resume


def test_kill_during_first_write_resumes(tmp_path):
    """A new run directory killed while writing its first file (a temporary file is all there is)."""
    d = tmp_path / "new"
    d.mkdir()
    (d / ".config.yaml.k1ll3d.tmp").write_bytes(b"model: conv")
    assert tiny_run(tmp_path, "new") == 0
    assert RunDir(d).is_finished(0, 2)


def test_second_process_is_refused_while_the_first_holds_the_run(copy, capsys):
    import fcntl

    lock = copy / ".lock"
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        f.truncate()
        f.write("4242\n")
        f.flush()
        assert resume(copy) == 2
        one_line_error(capsys, "4242")
        assert main(["evaluate", str(copy), "--ensemble", "1,2", "--device", "cpu"]) == 2
        one_line_error(capsys, "4242")
    assert resume(copy) == 0  # released: the next process runs


@pytest.mark.multiprocess
def test_lock_of_a_killed_process_never_blocks(copy):
    code = "import fcntl, os, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); os._exit(9)"
    subprocess.run([sys.executable, "-c", code, str(copy / ".lock")], check=False)
    assert (copy / ".lock").exists()
    assert resume(copy) == 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_concurrent_fresh_runs_never_share_a_directory(tmp_path):
    """Two processes started on the same new run directory: one trains, the other exits 2, nothing is lost."""
    cmd = [sys.executable, "-m", "labelrefinery", "run", *TINY, "--runs-dir", str(tmp_path), "--name", "same"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    rd = RunDir(tmp_path / "same")
    assert rd.is_finished(0, 2)
    epochs = [r for r in rd.read_metrics() if r["kind"] == "epoch"]
    assert len(epochs) == 2  # no duplicated metrics


KILLER = textwrap.dedent("""
    import os, sys
    import labelrefinery.fileio as fileio
    target, count = int(sys.argv[1]), [0]
    real = fileio.atomic_write_bytes
    def killing(path, data):
        count[0] += 1
        if count[0] == target:
            tmp = path.parent / f".{path.name}.killed.tmp"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data[: len(data) // 2])
            os._exit(137)
        real(path, data)
    import labelrefinery.rundir, labelrefinery.checkpoint
    for m in (fileio, labelrefinery.rundir, labelrefinery.checkpoint):
        m.atomic_write_bytes = killing
    from labelrefinery.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _count_writes(tmp_path):
    import labelrefinery.checkpoint as ck
    import labelrefinery.fileio as fileio

    calls = []
    real = fileio.atomic_write_bytes

    def counting(path, data):
        calls.append(path.name)
        real(path, data)

    with pytest.MonkeyPatch.context() as mp:
        for m in (fileio, ck):
            mp.setattr(m, "atomic_write_bytes", counting)
        assert tiny_run(tmp_path, "reference") == 0
    return calls


def _killed_runs(tmp_path, count: int, parallel: int = 4) -> dict[int, int]:
    """Start ``count`` runs, run ``n`` killed at its n-th atomic write, ``parallel`` at a time (each is mostly
    interpreter and torch start-up); return each one's exit status."""
    codes, running = {}, []
    for n in range(1, count + 1):
        cmd = [sys.executable, "-c", KILLER, str(n), "run", *TINY, "--runs-dir", str(tmp_path), "--name", f"kill{n}"]
        running.append((n, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        if len(running) == parallel or n == count:
            for m, proc in running:
                codes[m] = proc.wait()
            running = []
    return codes


@pytest.mark.slow
@pytest.mark.multiprocess
def test_kill_at_every_write_resumes_to_the_same_numbers(tmp_path):
    writes = _count_writes(tmp_path)
    reference = RunDir(tmp_path / "reference")
    want = [reference.read_summary(0, g)["test_top1"] for g in (1, 2)]
    want_labels = reference.load_labels(0, 2)["labels"]
    assert len(writes) >= 8, writes
    codes = _killed_runs(tmp_path, len(writes))
    for n in range(1, len(writes) + 1):
        name = f"kill{n}"
        assert codes[n] == 137, (n, writes[n - 1])
        assert tiny_run(tmp_path, name) == 0, (n, writes[n - 1])
        rd = RunDir(tmp_path / name)
        assert [rd.read_summary(0, g)["test_top1"] for g in (1, 2)] == want, (n, writes[n - 1])
        assert np.array_equal(rd.load_labels(0, 2)["labels"], want_labels), (n, writes[n - 1])
        assert not list((tmp_path / name).rglob("*.tmp")), (n, writes[n - 1])
