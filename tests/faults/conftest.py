"""Helpers of the fault-injection tests: a copy of the session's finished tiny run to damage, ways to damage a
file, and the check that an error is one line."""

import shutil

import pytest

from ..conftest import tiny_run


@pytest.fixture
def copy(finished_tiny_run, tmp_path):
    """A copy of the finished tiny run (``finished_tiny_run``), to damage."""
    dst = tmp_path / "run"
    shutil.copytree(finished_tiny_run, dst)
    return dst


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(len(data), mid + 64)):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("refinery: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def resume(copy):
    """The tiny run continued in ``copy`` with the flags it was made with."""
    return tiny_run(copy.parent, copy.name, "--ensemble", "1,2")


def tree(root):
    """Every file under ``root`` with its bytes and mtime: what a read-only command must leave as it was."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}
