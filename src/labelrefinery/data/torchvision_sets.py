"""CIFAR-10, CIFAR-100 and SVHN through torchvision's dataset classes, cached as uint8 (see :mod:`.cache`).

- ``cifar10`` / ``cifar100``: torchvision's ``CIFAR10`` / ``CIFAR100`` (python
  pickle batches, md5-checked), downloaded into ``--data-dir`` when missing and
  the network allows.
- ``svhn``: torchvision's ``SVHN`` (``train_32x32.mat``, ``test_32x32.mat``,
  optional ``extra_32x32.mat``; label 10 means digit 0 and becomes 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .cache import cache_path, load_cache, save_cache
from .core import Dataset, ImageData

def _torchvision_split(cls, root: Path, download: bool, **kwargs):
    try:
        return cls(root=str(root), download=download, **kwargs)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(str(e)) from e


def _open_torchvision(name: str, cls, root: Path | None, **kwargs):
    """The torchvision dataset from ``root``, downloading when it is missing; DataError if neither works."""
    if root is None:
        raise DataError(f"{name} needs --data-dir: the directory that holds its files or should receive the download")
    try:
        return _torchvision_split(cls, root, False, **kwargs)
    except FileNotFoundError:
        pass
    try:
        return _torchvision_split(cls, root, True, **kwargs)
    except Exception as e:
        raise DataError(
            f"{name} not found or corrupt in --data-dir {root} and the download failed ({type(e).__name__}); "
            f"put torchvision's {name} files there (checksums must match) or run once on a networked machine"
        ) from None


def load_cifar(name: str, root: Path | None) -> Dataset:
    """CIFAR-10 or CIFAR-100 (Krizhevsky 2009): 50,000 train + 10,000 test, 3x32x32."""
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    cached = load_cache(cache_path(root, name)) if root is not None else None
    if cached is None:
        splits = []
        for train in (True, False):
            ds = _open_torchvision(name, cls, root, train=train)
            images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
            splits.append(ImageData(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)))
        cached = (splits[0], splits[1])
        save_cache(cache_path(root, name), *cached)
    return Dataset(name, cached[0], cached[1], hflip_keeps_class=True)


def load_svhn(root: Path | None, extra: bool = False) -> Dataset:
    """SVHN cropped digits (Netzer et al. 2011): 73,257 train (+531,131 extra) + 26,032 test, 3x32x32."""
    import torchvision.datasets as tvd

    key = "svhn-extra" if extra else "svhn"
    cached = load_cache(cache_path(root, key)) if root is not None else None
    if cached is None:
        classes = [str(i) for i in range(10)]
        parts = {}
        for split in ("train", "test") + (("extra",) if extra else ()):
            ds = _open_torchvision("svhn", tvd.SVHN, root, split=split)
            parts[split] = (torch.from_numpy(np.ascontiguousarray(ds.data)),
                            torch.from_numpy(np.asarray(ds.labels, dtype=np.int64)))
        train_images, train_labels = parts["train"]
        if extra:
            train_images = torch.cat([train_images, parts["extra"][0]])
            train_labels = torch.cat([train_labels, parts["extra"][1]])
        cached = (ImageData(train_images, train_labels, classes), ImageData(*parts["test"], classes))
        save_cache(cache_path(root, key), *cached)
    return Dataset("svhn", cached[0], cached[1], hflip_keeps_class=False)
