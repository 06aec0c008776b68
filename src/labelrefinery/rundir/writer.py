"""The one writer of a run directory's files, and of the report files a command writes elsewhere (``--out``).

Every file is written atomically through :mod:`labelrefinery.fileio` (looked up at write time, so a test that
replaces ``fileio.atomic_write_bytes`` sees every write) except ``metrics.jsonl``, which is appended one
whole line per write (:func:`append_line`); a reader skips a partial last line left by a killed process.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import fileio
from ..errors import RunDirError
from .layout import label_issue_files, report_files, results_files


def main_process_writes(default: Any = None):
    """Make a method that writes into the run directory a no-op returning ``default`` in every process but the
    main one (rank 0 under torchrun; ``self.writer`` False): one writer, each file written once."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if not self.writer:
                return default
            return method(self, *args, **kwargs)
        return wrapper
    return decorate


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`labelrefinery.fileio.atomic_write_bytes`)."""
    fileio.atomic_write_bytes(path, data)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    fileio.atomic_write_text(path, text)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    fileio.write_json(path, obj)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """The bytes of an ``.npz`` holding ``arrays`` by name (uncompressed)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` (one JSON line, ending in a newline) in one write call, flushed to disk; after a partial
    last line left by a killed process it starts a new line.

    Raises:
        RunDirError: the file cannot be written.
    """
    try:
        with open(path, "ab") as f:
            if f.tell() > 0:
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":  # a partial line from a killed process: start a new one
                        line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RunDirError(f"cannot write {path}: {e.strerror or e}; free space or make it writable") from None


def write_results_files(out_dir: Path, results: Any, markdown: str) -> None:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (a run directory or a report's), atomically."""
    json_path, md_path = results_files(out_dir)
    write_json(json_path, results)
    write_text(md_path, "# Label Refinery results\n\n" + markdown)


def write_report_files(html_path: Path, page: str, data: str, label_stats: str, images: str) -> None:
    """Write ``refinery inspect``'s page at ``html_path`` and its data files beside it (:func:`report_files`),
    each atomically; the page last, so it appears only with its data files beside it."""
    paths = report_files(Path(html_path))
    paths["html"].parent.mkdir(parents=True, exist_ok=True)
    write_text(paths["json"], data)
    write_text(paths["label_stats"], label_stats)
    write_text(paths["images"], images)
    write_text(paths["html"], page)


def write_label_issue_files(csv_path: Path, table: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``refinery label-issues``' ``.npy`` files (``arrays`` by the names of :func:`label_issue_files`) and
    then its CSV ``table`` at ``csv_path``, each atomically."""
    paths = label_issue_files(Path(csv_path))
    for name, path in paths.items():
        if name != "csv":
            npy = io.BytesIO()
            np.save(npy, arrays[name])
            write_bytes(path, npy.getvalue())
    write_text(paths["csv"], table)
