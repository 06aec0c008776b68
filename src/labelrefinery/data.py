"""Datasets as in-memory uint8 tensors.

Letters: N images, C channels (1 or 3), H x W pixels, K classes.

Every loader returns a :class:`Dataset` whose ``train`` and ``test`` splits are
:class:`ImageData`: ``images: (N, C, H, W) uint8`` in [0, 255], ``labels: (N,)
int64`` in [0, K), and the class names. Conversion to float and normalisation
happen per batch on the training device (see :mod:`labelrefinery.train`).

Dataset names: ``fashion-mnist``, ``mnist``, ``digits`` (scikit-learn's bundled
8x8 digits, needs no download), ``synthetic`` (generated CIFAR-sized data for
benchmarks), ``cifar10``, ``cifar100``, ``svhn`` and ``folder:PATH`` (see
:mod:`labelrefinery.datasets_extra`).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]


class DataError(ValueError):
    """Input data that cannot be used: a missing, truncated or corrupt file, or bad labels.

    The message is one line naming the problem and the fix.
    """


@dataclass
class ImageData:
    """One split of a dataset held in memory.

    Attributes:
        images: ``(N, C, H, W) uint8`` pixels in [0, 255].
        labels: ``(N,) int64`` class indices in [0, K).
        classes: the K class names; ``labels`` index into this list.

    Raises:
        DataError: on wrong dtypes, shapes, or labels outside [0, K).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"labels must be int64 (N,) with N={self.images.shape[0]}, "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        k = len(self.classes)
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= k):
            bad = self.labels[(self.labels < 0) | (self.labels >= k)][0].item()
            raise DataError(
                f"label {bad} is outside [0, {k}) for the {k} classes; "
                "fix the label file or pass the full list of class names"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor) -> "ImageData":
        """The images and labels at ``indices: (M,) int64``, same classes."""
        return ImageData(self.images[indices], self.labels[indices], self.classes)


@dataclass
class Dataset:
    """A named dataset: training and test splits plus facts the protocol needs.

    Attributes:
        name: the dataset name as given on the command line.
        train, test: the two splits (same classes, same C, H, W).
        hflip_keeps_class: whether a horizontal flip keeps every class (False for digits).
        mean, std: per-channel normalisation constants in [0, 1] pixel units.
        source: where the data was read from (a directory, a package, "generated").
    """

    name: str
    train: ImageData
    test: ImageData
    hflip_keeps_class: bool
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    source: str = ""

    def __post_init__(self) -> None:
        if self.train.classes != self.test.classes:
            raise DataError(f"{self.name}: train and test class lists differ")
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise DataError(
                f"{self.name}: train images {tuple(self.train.images.shape[1:])} and "
                f"test images {tuple(self.test.images.shape[1:])} differ in shape"
            )
        if not self.mean:
            x = self.train.images[:10000].float().div_(255)
            self.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
            self.std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


# --------------------------------------------------------------------------- IDX (MNIST-family) files

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


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits: 1,797 images, 1x8x8, with a fixed stratified 20% test split (seed 0).

    Pixel values 0..16 are scaled to 0..255.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    to = torch.from_numpy
    return Dataset(
        "digits",
        ImageData(to(images[tr].copy()), to(labels[tr].copy()), list(DIGIT_CLASSES)),
        ImageData(to(images[te].copy()), to(labels[te].copy()), list(DIGIT_CLASSES)),
        hflip_keeps_class=False,
        source="sklearn.datasets.load_digits",
    )


def load_synthetic(num_train: int = 50000, num_test: int = 10000, size: int = 32, num_classes: int = 10,
                   seed: int = 0) -> Dataset:
    """CIFAR-sized stand-in data for machines without a dataset (benchmarks, GPU smoke runs): 3 x size x size.

    Each class is a random smooth colour template; an image is its class's
    template, randomly shifted by up to size/4 pixels, blended with noise, so
    the task is learnable but not trivial. Generated in a few seconds from ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)

    def split(n: int) -> ImageData:
        labels = torch.randint(0, num_classes, (n,), generator=g)
        out = torch.empty(n, 3, size, size, dtype=torch.uint8)
        for start in range(0, n, 4096):
            lab = labels[start : start + 4096]
            shift = torch.randint(-size // 4, size // 4 + 1, (2,), generator=g).tolist()
            x = templates[lab].roll(shifts=shift, dims=(2, 3))
            x = 0.55 * x + 0.45 * torch.rand(x.shape, generator=g)
            out[start : start + 4096] = (x * 255).round().to(torch.uint8)
        return ImageData(out, labels, [f"class{i}" for i in range(num_classes)])

    return Dataset("synthetic", split(num_train), split(num_test), hflip_keeps_class=True, source="generated")


DATASETS = ["fashion-mnist", "mnist", "digits", "cifar10", "cifar100", "svhn", "synthetic", "folder:PATH"]


def check_dataset_name(name: str) -> None:
    """Raise ``ValueError`` listing the known datasets when ``name`` is not one of them."""
    if name in DATASETS or (name.startswith("folder:") and len(name) > 7):
        return
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **options) -> Dataset:
    """Load a dataset by name (see the module docstring for the names).

    Args:
        name: dataset name.
        data_dir: where the dataset's files are or should be downloaded to.
        options: dataset-specific options (``image_size`` for ``folder:PATH``,
            ``svhn_extra`` for ``svhn``).

    Raises:
        ValueError: unknown name.
        DataError: missing, truncated or corrupt files, or bad labels.
    """
    check_dataset_name(name)
    root = Path(data_dir) if data_dir is not None else None
    if name == "fashion-mnist":
        return load_fashion_mnist(root)
    if name == "mnist":
        return load_mnist(root)
    if name == "digits":
        return load_digits()
    if name == "synthetic":
        return load_synthetic()
    from . import datasets_extra

    return datasets_extra.load(name, root, **options)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (keep, held_out) with ``fraction`` of each class held out.

    Args:
        labels: ``(N,) int64`` class indices.
        fraction: share held out, in (0, 1).
        seed: draws which images are held out.

    Returns:
        ``(keep, held_out)``: sorted ``int64`` index tensors partitioning ``range(N)``.

    Raises:
        ValueError: fraction outside (0, 1), or a split too small to hold every class.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    k = int(labels.max()) + 1 if len(labels) else 0
    held = int(np.ceil(fraction * len(labels)))
    if held < k or len(labels) - held < k:
        raise ValueError(f"a {fraction} split of {len(labels)} images leaves {held} and {len(labels) - held}, "
                         f"fewer than the {k} classes; use --val-fraction between {k / len(labels):.3f} and "
                         f"{1 - k / len(labels):.3f}")
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels.numpy())
    return torch.from_numpy(np.sort(keep)), torch.from_numpy(np.sort(held))
