"""Datasets as in-memory uint8 tensors: one registry of names, one loader per source.

Letters: N images, C channels (1 or 3), H x W pixels, K classes.

Every loader returns a :class:`Dataset` whose ``train`` and ``test`` splits are
:class:`ImageData` (``images: (N, C, H, W) uint8``, ``labels: (N,) int64``,
class names). Names (:data:`DATASETS`):

- ``fashion-mnist``, ``mnist``: IDX files (:mod:`.idx`);
- ``digits``: scikit-learn's bundled 8x8 digits; ``synthetic``: generated CIFAR-sized data (:mod:`.small`);
- ``fashion-mnist-rows``, ``mnist-rows``: each image the centre of a row of three items, for label overlap
  (:mod:`.rows`);
- ``cifar10``, ``cifar100``, ``svhn``: torchvision's classes (:mod:`.torchvision_sets`);
- ``folder:PATH``: an ImageNet-layout image folder (:mod:`.folder`).
- ``csv:FILE``: image files listed in a CSV file of ``path,label[,split]`` rows (:mod:`.csvfile`).

Verified labels of some training images (``--trusted FILE``, ``--true-labels FILE``): :mod:`.verified`.

Converted datasets are cached as uint8 (:mod:`.cache`); image folders too large for memory stay
files decoded per batch (:mod:`.files`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DataError
from .core import Dataset, ImageData, VerifiedLabels, stratified_folds, stratified_split
from .verified import read_verified_labels
from .files import ImageFiles, read_all, read_batches
from .csvfile import CSV_PREFIX, load_csv
from .folder import FolderReading, load_folder
from .idx import DEBIAN_FASHION_MNIST, load_fashion_mnist, load_mnist, read_idx
from .small import load_digits, load_synthetic
from .rows import load_rows
from .torchvision_sets import load_cifar, load_svhn

# name -> loader(data_dir, options); folder:PATH is matched by its prefix.
_LOADERS: dict[str, Callable[[Path | None, dict[str, Any]], Dataset]] = {
    "fashion-mnist": lambda root, o: load_fashion_mnist(root),
    "mnist": lambda root, o: load_mnist(root),
    "digits": lambda root, o: load_digits(),
    "synthetic": lambda root, o: load_synthetic(),
    "fashion-mnist-rows": lambda root, o: load_rows(load_fashion_mnist(root)),
    "mnist-rows": lambda root, o: load_rows(load_mnist(root)),
    "cifar10": lambda root, o: load_cifar("cifar10", root),
    "cifar100": lambda root, o: load_cifar("cifar100", root),
    "svhn": lambda root, o: load_svhn(root, extra=bool(o.get("svhn_extra"))),
}
FOLDER_PREFIX = "folder:"
DATASETS = [*_LOADERS, f"{FOLDER_PREFIX}PATH", f"{CSV_PREFIX}FILE"]
FILE_PREFIXES = (FOLDER_PREFIX, CSV_PREFIX)  # datasets read from image files a user gives


def check_dataset_name(name: str) -> None:
    """Raise :class:`ConfigError` listing the known datasets when ``name`` is not one of them."""
    if name in _LOADERS or any(name.startswith(p) and len(name) > len(p) for p in FILE_PREFIXES):
        return
    raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **options: Any) -> Dataset:
    """Load a dataset by name (see the module docstring for the names).

    Args:
        name: dataset name.
        data_dir: where the dataset's files are or should be downloaded to; also decides the cache directory.
        options: ``image_size`` (pixels, ``folder:PATH``), ``svhn_extra`` (bool, ``svhn``); for ``folder:PATH``
            also ``in_memory`` (auto | yes | no), ``workers``, ``skip_bad_images``, ``device``, ``cache_dir`` and
            ``progress``; for ``csv:FILE`` also ``classes`` (a file of class names, one per line)
            (see :func:`~labelrefinery.data.folder.load_folder`). Other datasets are always held in memory.

    Raises:
        ConfigError: unknown name, or ``in_memory="no"`` for a dataset that cannot stream.
        DataError: missing, truncated or corrupt files, or bad labels.
    """
    check_dataset_name(name)
    root = Path(data_dir) if data_dir is not None else None
    if name.startswith(FILE_PREFIXES):
        cache = options.get("cache_dir")
        reading = FolderReading(in_memory=options.get("in_memory") or "yes", workers=options.get("workers") or 0,
                                skip_bad_images=bool(options.get("skip_bad_images")), device=options.get("device"),
                                progress=options.get("progress", True))
        path = Path(name.split(":", 1)[1])
        cache_root = Path(cache) if cache else None
        if name.startswith(FOLDER_PREFIX):
            return load_folder(path, options.get("image_size"), root, reading=reading, cache_root=cache_root)
        return load_csv(path, options.get("image_size"), root, reading=reading, cache_root=cache_root,
                        classes_file=options.get("classes"))
    if options.get("in_memory") == "no":
        raise ConfigError(f"--data-in-memory no: {name} is read whole from its files (it fits in memory); only "
                          "folder:PATH and csv:FILE datasets stream from disk: leave --data-in-memory at auto")
    return _LOADERS[name](root, options)


__all__ = ["DATASETS", "DEBIAN_FASHION_MNIST", "DataError", "Dataset", "ImageData", "ImageFiles", "VerifiedLabels",
           "read_verified_labels",
           "check_dataset_name", "read_all", "read_batches",
           "load_dataset", "load_digits", "load_fashion_mnist", "load_mnist", "load_synthetic", "read_idx",
           "stratified_folds", "stratified_split"]
