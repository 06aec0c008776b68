"""MNIST-family datasets from IDX files: Fashion-MNIST and MNIST.

Files are looked for in ``--data-dir`` (and torchvision's ``<cls>/raw`` layout
under it), then, for Fashion-MNIST, in the Debian package
``dataset-fashion-mnist``, then downloaded with torchvision into ``--data-dir``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .core import Dataset, ImageData

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]

_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzip-compressed or not.

    Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): 2 zero bytes, a
    dtype byte (0x08 = uint8), a byte giving the number of dimensions d, then d
    big-endian uint32 sizes, then the data.

    Returns:
        ``uint8`` array of the stored shape, e.g. ``(N, 28, 28)`` or ``(N,)``.

    Raises:
        DataError: unreadable gzip, bad magic number, or a data size that does
            not match the header (truncated file).
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {e}; delete it and fetch the dataset again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); delete it and fetch the dataset again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header cut short); delete it and fetch the dataset again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header says {shape} = {expected}; "
            "the file is truncated or corrupt: delete it and fetch the dataset again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (``.gz`` or not), or None if none is there.

    Raises:
        DataError: some but not all of the four files are there.
    """
    found = {}
    for key, stem in _IDX_FILES.items():
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
    if not found:
        return None
    if len(found) < len(_IDX_FILES):
        missing = [stem for key, stem in _IDX_FILES.items() if key not in found]
        raise DataError(f"{directory} holds only some of the dataset's files: {', '.join(missing)} missing (.gz or raw); "
                        "add them, or point --data-dir elsewhere")
    return found


def _load_idx_dataset(files: dict[str, Path], classes: list[str]) -> tuple[ImageData, ImageData]:
    splits = []
    for split in ("train", "test"):
        images = read_idx(files[f"{split}_images"])
        labels = read_idx(files[f"{split}_labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{files[f'{split}_images']} holds {images.shape} images but "
                f"{files[f'{split}_labels']} holds {labels.shape} labels; the pair does not match"
            )
        splits.append(
            ImageData(
                torch.from_numpy(images.copy()).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64)),
                list(classes),
            )
        )
    return splits[0], splits[1]


def _load_mnist_family(
    name: str, torchvision_cls: str, classes: list[str], data_dir: Path | None, debian_dir: Path | None
) -> Dataset:
    """Find the IDX files in ``data_dir``, then the Debian package, then download with torchvision."""
    candidates = []
    if data_dir is not None:
        if not data_dir.is_dir():
            raise DataError(f"--data-dir {data_dir} is not a directory; create it, fix the path, or leave it out")
        candidates += [data_dir, data_dir / torchvision_cls / "raw"]
    if debian_dir is not None:
        candidates.append(debian_dir)
    for directory in candidates:
        files = _find_idx_files(directory)
        if files is not None:
            train, test = _load_idx_dataset(files, classes)
            return Dataset(name, train, test, hflip_keeps_class=(name == "fashion-mnist"), source=str(directory))
    download_error = "no --data-dir given"
    if data_dir is not None:
        try:
            import torchvision.datasets as tvd

            getattr(tvd, torchvision_cls)(root=str(data_dir), download=True)
            files = _find_idx_files(data_dir / torchvision_cls / "raw")
            if files is not None:
                train, test = _load_idx_dataset(files, classes)
                return Dataset(name, train, test, hflip_keeps_class=(name == "fashion-mnist"),
                               source=f"downloaded into {data_dir}")
        except DataError:
            raise
        except Exception as e:  # network errors come in many types
            download_error = f"download failed: {type(e).__name__}"
    where = f"--data-dir {data_dir}" if data_dir is not None else "--data-dir (not given)"
    debian_hint = (
        f"install the Debian package (apt-get install dataset-fashion-mnist, into {DEBIAN_FASHION_MNIST}), "
        if name == "fashion-mnist"
        else ""
    )
    raise DataError(
        f"{name} not found: {where} lacks {', '.join(_IDX_FILES.values())} (.gz or raw); "
        f"fix: put the four files in --data-dir, {debian_hint}"
        f"or give a writable --data-dir on a networked machine so torchvision can download them ({download_error})"
    )


def load_fashion_mnist(data_dir: Path | None = None, debian_dir: Path | None = DEBIAN_FASHION_MNIST) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train + 10,000 test, 1x28x28, 10 classes.

    Looks in ``data_dir`` (and ``data_dir/FashionMNIST/raw``), then in the Debian
    package's directory, then downloads with torchvision into ``data_dir``.

    Raises:
        DataError: files missing everywhere (the message lists the three ways to
            provide them), or a truncated / corrupt file.
    """
    return _load_mnist_family("fashion-mnist", "FashionMNIST", FASHION_MNIST_CLASSES, data_dir, debian_dir)


def load_mnist(data_dir: Path | None = None) -> Dataset:
    """MNIST: 60,000 train + 10,000 test, 1x28x28, digits 0-9, from ``data_dir`` or a torchvision download."""
    return _load_mnist_family("mnist", "MNIST", DIGIT_CLASSES, data_dir, None)

