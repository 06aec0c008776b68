"""One process per run directory: an OS lock (``flock``) on its ``.lock`` file, which holds the holder's PID."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from ..errors import RunDirError


@contextlib.contextmanager
def hold(root: Path, lock_path: Path) -> Iterator[None]:
    """Hold the run directory ``root`` for this process (an OS lock on ``lock_path``, released even if the
    process dies); ``root`` is made when missing.

    Raises:
        RunDirError: another process holds it (the message names its PID), or it cannot be made or locked.
    """
    existed = root.is_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        f = open(lock_path, "a+")
    except OSError as e:
        if existed:
            raise RunDirError(f"cannot write into run directory {root}: {e.strerror}; make it writable") from None
        raise RunDirError(f"cannot make run directory {root}: {e.strerror}; choose another --runs-dir") from None
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunDirError(f"{root} is in use by another refinery process (PID {holder}); wait for it "
                              "to finish or stop it, then rerun") from None
        except OSError as e:
            raise RunDirError(f"cannot lock run directory {root}: {e.strerror}; use a local file system "
                              "that supports flock") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()
