"""The uint8 cache of converted datasets: one safetensors file per dataset and setting.

A dataset that has to be decoded or unpacked (CIFAR, SVHN, image folders) is
converted once into ``<cache dir>/<key>.safetensors`` (four tensors and the
class names in the metadata) and read from there afterwards. The cache
directory is ``<data dir>/labelrefinery-cache`` when ``--data-dir`` is given,
else ``$XDG_CACHE_HOME/labelrefinery`` (``~/.cache/labelrefinery``): never
inside an image tree, which may be read-only. A damaged cache file is rebuilt
from the source files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save

from ..fileio import atomic_write_bytes
from .core import ImageData


def cache_dir(data_dir: Path | None) -> Path:
    """Where converted datasets are cached (see the module docstring)."""
    if data_dir is not None:
        return Path(data_dir) / "labelrefinery-cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labelrefinery"


def cache_path(data_dir: Path | None, key: str) -> Path:
    """The cache file of ``key`` (a dataset name plus whatever changes its pixels)."""
    return cache_dir(data_dir) / f"{key}.safetensors"


def save_cache(path: Path, train: ImageData, test: ImageData) -> None:
    """Write both splits to ``path`` atomically."""
    tensors = {"train_images": train.images.contiguous(), "train_labels": train.labels.contiguous(),
               "test_images": test.images.contiguous(), "test_labels": test.labels.contiguous()}
    atomic_write_bytes(path, save(tensors, metadata={"classes": json.dumps(train.classes)}))


def load_cache(path: Path) -> tuple[ImageData, ImageData] | None:
    """Both splits from ``path``, or None when it is missing or damaged (a damaged file is removed)."""
    if not path.exists():
        return None
    try:
        t = load_file(path)
        with safe_open(path, "pt") as f:
            classes = json.loads(f.metadata()["classes"])
        return (ImageData(t["train_images"], t["train_labels"], classes),
                ImageData(t["test_images"], t["test_labels"], classes))
    except Exception:  # a damaged cache is rebuilt from the source files
        path.unlink(missing_ok=True)
        return None
