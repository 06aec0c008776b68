"""How refined labels are stored in a ``labels.npz``: ``float32``, ``float16`` or ``topk:J`` rows, all read back as
``(M, K) float32`` probability rows."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

LABEL_STORAGE_FLOAT32_MAX = 2**26  # --label-storage auto: float32 up to this many M x K values (256 MiB), else float16


def label_storage(choice: str, rows: int, num_classes: int) -> str:
    """The storage of ``rows`` x ``num_classes`` refined labels for ``--label-storage choice``: ``auto`` is float32
    up to :data:`LABEL_STORAGE_FLOAT32_MAX` values (Fashion-MNIST: 0.5 M; ImageNet's 1.28 M x 1000: 1,281 M, float16),
    else float16; ``topk:J`` with J >= K is float32."""
    if choice == "auto":
        return "float32" if rows * num_classes <= LABEL_STORAGE_FLOAT32_MAX else "float16"
    if choice.startswith("topk:") and int(choice[5:]) >= num_classes:
        return "float32"
    return choice


def as_stored(labels: torch.Tensor, storage: str) -> torch.Tensor:
    """``labels: (M, K) float32`` as :meth:`RunDir.load_labels` will read them back from ``storage``, so a chain
    continues from the same rows whether or not it was interrupted."""
    if storage == "float32":
        return labels
    return torch.from_numpy(_decode_labels(_encode_labels(labels, storage), storage, labels.shape[1]))


def _encode_labels(labels: torch.Tensor, storage: str) -> dict[str, np.ndarray]:
    """The arrays of ``labels.npz`` that hold ``labels: (M, K) float`` rows in ``storage``."""
    rows = labels.float()
    if storage == "float32":
        return {"labels": rows.numpy()}
    if storage == "float16":
        return {"labels": rows.half().numpy()}
    if storage.startswith("topk:"):
        values, top = rows.topk(int(storage[5:]), dim=1)
        return {"topk_indices": top.numpy().astype(np.int64), "topk_values": values.half().numpy()}
    raise ValueError(f"unknown label storage {storage!r}")


def _labels_file(labels: torch.Tensor, indices: torch.Tensor, views: torch.Tensor, classes: list[str],
                 storage: str) -> io.BytesIO:
    """The bytes of a ``labels.npz`` holding ``labels: (M, K) float`` rows in ``storage``."""
    buf = io.BytesIO()
    np.savez(buf, **_encode_labels(labels, storage), indices=indices.numpy().astype(np.int64),
             views=views.numpy().astype(np.int64), classes=np.array(classes), refinery_only=np.array(True),
             storage=np.array(storage))
    return buf


def _decode_labels(z, storage: str, num_classes: int) -> np.ndarray:
    """``(M, K) float32`` rows from the arrays of a ``labels.npz`` (an open file, or :func:`_encode_labels`'s dict)
    in ``storage``; float16 and top-J rows renormalised."""
    if storage == "float32":
        return z["labels"]
    if storage == "float16":
        rows = z["labels"].astype(np.float32)
    elif storage.startswith("topk:"):
        top, values = z["topk_indices"], z["topk_values"].astype(np.float32)
        if top.shape != values.shape or top.ndim != 2 or (top.size and not 0 <= top.min() <= top.max() < num_classes):
            raise ValueError(f"top-k indices of shape {top.shape} outside [0, {num_classes})")
        rows = np.zeros((len(top), num_classes), dtype=np.float32)
        np.put_along_axis(rows, top, values, axis=1)
    else:
        raise ValueError(f"unknown label storage {storage!r}")
    sums = rows.sum(1, keepdims=True)
    return rows / np.where(sums > 0, sums, 1)


def _read_labels_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the ``labels.npz`` at ``path``: ``labels`` ``(M, K) float32`` (decoded from its storage),
    ``storage``, ``indices``, ``views``, ``classes`` and ``refinery_only`` (False in files of older versions).

    Raises:
        OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error: a missing or damaged file.
    """
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in ("indices", "views", "classes")}
        out["storage"] = str(z["storage"]) if "storage" in z.files else "float32"
        out["labels"] = _decode_labels(z, out["storage"], len(out["classes"]))
        out["refinery_only"] = bool(z["refinery_only"]) if "refinery_only" in z.files else False
    return out
