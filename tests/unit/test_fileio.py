"""Atomic writes."""

import pytest

from labelrefinery.errors import RunDirError
from labelrefinery.fileio import atomic_write_text


def test_atomic_write_failure_is_a_run_dir_error(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="cannot write"):
        atomic_write_text(blocker / "sub" / "a.txt", "hello")
