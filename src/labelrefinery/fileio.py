"""Atomic file writes: a file appears whole under its name or not at all.

Every file is written to a temporary name in the same directory, flushed to
disk and renamed into place, so a crash never leaves a half-written file under
the real name. A write that fails for lack of space or permission raises
:class:`~labelrefinery.errors.RunDirError` naming the path.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import RunDirError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_error(path: Path, e: OSError) -> RunDirError:
    fix = "choose a file path, not a directory" if isinstance(e, IsADirectoryError) or path.is_dir() \
        else "free space or choose a writable place"
    return RunDirError(f"cannot write {path}: {e.strerror or e}; {fix}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, rename).

    Raises:
        RunDirError: the directory cannot be made or the file cannot be written (disk full, read-only, ...).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the mode any new file would get
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``: what a run directory records to verify a file it reads back."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SEAL_KEY = "sha256"  # the key of a sealed JSON object that holds the checksum of its other keys


def _canonical(obj: dict) -> bytes:
    return json.dumps({k: v for k, v in obj.items() if k != SEAL_KEY}, sort_keys=True, separators=(",", ":"),
                      allow_nan=True).encode("utf-8")


def seal(obj: dict) -> dict:
    """``obj`` with ``SEAL_KEY`` set to the SHA-256 of its other keys (sorted, compact JSON): a file of numbers
    the tool shows (a generation's ``summary.json``, an ``ensemble.json`` entry) carries its own checksum, so an
    edited number is refused instead of shown. JSON written by :func:`write_json` reads back to the same
    checksum (Python writes floats that read back exactly)."""
    return {**{k: v for k, v in obj.items() if k != SEAL_KEY}, SEAL_KEY: sha256_bytes(_canonical(obj))}


def seal_broken(obj: dict) -> bool:
    """True when a sealed object read back was edited or damaged (its ``SEAL_KEY`` checksum does not match its
    other keys); False when it matches, or for an object without one (written by an older version)."""
    want = obj.get(SEAL_KEY)
    return want is not None and (not isinstance(want, str) or want != sha256_bytes(_canonical(obj)))
