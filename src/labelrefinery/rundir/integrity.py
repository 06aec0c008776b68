"""Checks of a run directory's files as they are read back: checksums, seals and the shapes of their content.

``summary.json``, ``run.json``, ``ensemble.json`` entries and the external refinery's summary are sealed with
their own SHA-256 (:func:`labelrefinery.fileio.seal`); ``split.npz`` stores the checksum of its arrays;
``config.yaml`` starts with the checksum of the lines below it; refined labels must be probability rows of the
run's shape. Each check returns what is wrong (or None); the caller names the file and what to delete.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..fileio import seal_broken, sha256_bytes
from ..losses import ROW_SUM_TOLERANCE

_CONFIG_CHECKSUM = "# sha256 of the lines below: "
_RUN_ID = "# run id: "  # config.yaml's second line: made once, kept, recorded in every summary of the run


def _is_number(x: Any, allow_nan: bool = False) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and (allow_nan or math.isfinite(x))


def _arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes, in name order): ``split.npz`` stores it."""
    parts = []
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        parts += [name.encode(), str(a.dtype).encode(), str(a.shape).encode(), a.tobytes()]
    return sha256_bytes(b"\0".join(parts))


# ---------------------------------------------------------------------- config.yaml
def config_text(run_id: str, body_yaml: str) -> str:
    """The text of ``config.yaml``: the checksum line, then the run-id line and ``body_yaml``."""
    body = f"{_RUN_ID}{run_id}\n" + body_yaml
    return f"{_CONFIG_CHECKSUM}{sha256_bytes(body.encode())}\n{body}"


def config_checksum_broken(text: str) -> bool:
    """True when ``config.yaml``'s text starts with a checksum line that does not match the lines below it
    (False for a file without one)."""
    first, _, rest = text.partition("\n")
    return first.startswith(_CONFIG_CHECKSUM) and first[len(_CONFIG_CHECKSUM):].strip() != sha256_bytes(rest.encode())


def config_run_id(text: str) -> str | None:
    """The run id of ``config.yaml``'s text (its second line), or None (a file of an older version)."""
    lines = text.split("\n", 2)
    if len(lines) > 1 and lines[1].startswith(_RUN_ID):
        return lines[1][len(_RUN_ID):].strip()
    return None


# ---------------------------------------------------------------------- JSON files
def _summary_problem(s: Any, seed: int, generation: int | str) -> str | None:
    """What is wrong with a generation's summary, or None."""
    if not isinstance(s, dict):
        return "not a JSON object"
    if s.get("seed") != seed or s.get("generation") != generation:
        return f"it names seed {s.get('seed')!r}, generation {s.get('generation')!r}"
    for key in ("val_top1", "test_top1", "train_time_s", "refined_label_entropy", "refined_label_agreement"):
        if not _is_number(s.get(key)):
            return f"{key} is {s.get(key)!r}, not a number"
    for key in ("best_epoch", "epochs_run"):
        if not isinstance(s.get(key), int) or isinstance(s.get(key), bool):
            return f"{key} is {s.get(key)!r}, not an integer"
    if not isinstance(s.get("collapsed"), bool):
        return f"collapsed is {s.get('collapsed')!r}, not true or false"
    files = s.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return "files is not a map of names to checksums"
    return None


def ensembles_ok(entries: Any) -> bool:
    """True when ``ensemble.json`` holds a list of entries with their keys (their seals are checked apart)."""
    return isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("generations"), list) and isinstance(e.get("per_seed"), dict)
        and _is_number(e.get("test_top1_mean"), allow_nan=True) for e in entries)


def any_seal_broken(entries: list[dict]) -> bool:
    """True when an entry of ``ensemble.json`` was edited or is damaged (:func:`labelrefinery.fileio.seal_broken`)."""
    return any(seal_broken(e) for e in entries)


def external_summary_ok(summary: Any) -> bool:
    """True when an external refinery's summary has its numbers (its seal is checked apart)."""
    return isinstance(summary, dict) and all(_is_number(summary.get(k)) for k in ("val_top1", "test_top1"))


# ---------------------------------------------------------------------- arrays
def split_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with the lengths of ``split.npz``'s arrays (each train or val array as long as its
    indices), or None."""
    lengths = {"train": len(arrays.get("train_indices", [])), "val": len(arrays.get("val_indices", []))}
    for name, a in arrays.items():
        part = name.replace("clean_", "").split("_")[0]
        if part in lengths and a.shape != (lengths[part],):
            return f"{name} has shape {a.shape}, expected ({lengths[part]},)"
    return None


def _label_problem(z: dict[str, np.ndarray], rows: int | None, num_classes: int | None) -> str | None:
    """What is wrong with refined labels read from ``labels.npz``, or None."""
    labels, indices = z["labels"], z["indices"]
    if labels.ndim != 2 or labels.dtype != np.float32:
        return f"labels are {labels.dtype} {labels.shape}, not float32 (M, K)"
    if (rows is not None and labels.shape[0] != rows) or (num_classes is not None and labels.shape[1] != num_classes):
        return f"shape {labels.shape}, the run needs ({rows}, {num_classes})"
    if indices.shape != (labels.shape[0],) or z["views"].shape != (labels.shape[0],):
        return f"indices of shape {indices.shape} for {labels.shape[0]} rows"
    if not np.isfinite(labels).all():
        return "NaN or infinite values"
    if (labels < 0).any():
        return "negative probabilities"
    worst = float(np.abs(labels.sum(1, dtype=np.float64) - 1).max()) if len(labels) else 0.0
    if worst > ROW_SUM_TOLERANCE:
        return f"rows sum to 1 only within {worst:.3g}"
    return None
