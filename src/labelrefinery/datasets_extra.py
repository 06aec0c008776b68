"""CIFAR-10, CIFAR-100, SVHN (torchvision dataset classes) and ImageNet-layout folders.

Each is converted once into a cached uint8 tensor file next to the data
(``<data_dir>/labelrefinery-cache/<name>.safetensors``, class names in its
metadata) and read from there afterwards.

- ``cifar10`` / ``cifar100``: torchvision's ``CIFAR10`` / ``CIFAR100`` (python
  pickle batches, md5-checked), downloaded into ``--data-dir`` when missing and
  the network allows.
- ``svhn``: torchvision's ``SVHN`` (``train_32x32.mat``, ``test_32x32.mat``,
  optional ``extra_32x32.mat``; label 10 means digit 0 and becomes 0).
- ``folder:PATH``: ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``. Classes
  are the training folder's subfolders sorted as torchvision sorts them; a
  validation split lacking a class keeps the training split's indices.
  Grayscale, palette, RGBA and CMYK files are converted to RGB; each image is
  resized (shorter side) and centre-cropped to ``image_size`` pixels.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from .data import Dataset, DataError, ImageData
from .runio import atomic_write_bytes

DEFAULT_FOLDER_IMAGE_SIZE = 256


def _cache_path(root: Path, key: str) -> Path:
    return root / "labelrefinery-cache" / f"{key}.safetensors"


def _save_cache(path: Path, train: ImageData, test: ImageData) -> None:
    tensors = {"train_images": train.images.contiguous(), "train_labels": train.labels.contiguous(),
               "test_images": test.images.contiguous(), "test_labels": test.labels.contiguous()}
    atomic_write_bytes(path, save(tensors, metadata={"classes": json.dumps(train.classes)}))


def _load_cache(path: Path) -> tuple[ImageData, ImageData] | None:
    if not path.exists():
        return None
    try:
        t = load_file(path)
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            classes = json.loads(f.metadata()["classes"])
        return (ImageData(t["train_images"], t["train_labels"], classes),
                ImageData(t["test_images"], t["test_labels"], classes))
    except Exception:  # a damaged cache is rebuilt from the source files
        path.unlink(missing_ok=True)
        return None


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
    cached = _load_cache(_cache_path(root, name)) if root is not None else None
    if cached is None:
        splits = []
        for train in (True, False):
            ds = _open_torchvision(name, cls, root, train=train)
            images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
            splits.append(ImageData(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)))
        cached = (splits[0], splits[1])
        _save_cache(_cache_path(root, name), *cached)
    return Dataset(name, cached[0], cached[1], hflip_keeps_class=True)


def load_svhn(root: Path | None, extra: bool = False) -> Dataset:
    """SVHN cropped digits (Netzer et al. 2011): 73,257 train (+531,131 extra) + 26,032 test, 3x32x32."""
    import torchvision.datasets as tvd

    key = "svhn-extra" if extra else "svhn"
    cached = _load_cache(_cache_path(root, key)) if root is not None else None
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
        _save_cache(_cache_path(root, key), *cached)
    return Dataset("svhn", cached[0], cached[1], hflip_keeps_class=False)


def _read_image(path: str, size: int) -> torch.Tensor:
    """Decode one file to ``(3, size, size) uint8``: RGB, shorter side resized to ``size``, centre crop."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as F

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # grayscale, palette, RGBA, CMYK -> RGB
            img = F.pil_to_tensor(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}; delete or replace the file") from None
    img = F.resize(img, [size], antialias=True)
    return F.center_crop(img, [size, size])


def load_folder(path: Path, image_size: int | None = None) -> Dataset:
    """An ImageNet-layout folder ``path/train/<class>/*``, ``path/val/<class>/*`` (see module docstring).

    Raises:
        DataError: missing ``train``/``val`` folders, a class in ``val`` unknown to ``train``, no images,
            or an unreadable image (named by path).
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    from tqdm.auto import tqdm

    size = image_size or DEFAULT_FOLDER_IMAGE_SIZE
    path = Path(path)
    for split in ("train", "val"):
        if not (path / split).is_dir():
            raise DataError(f"{path / split} is not a directory; folder datasets need PATH/train/<class>/ and "
                            "PATH/val/<class>/")
    try:
        classes, class_to_idx = find_classes(str(path / "train"))
    except FileNotFoundError as e:
        raise DataError(f"{path / 'train'}: {e}") from None
    val_classes = sorted(d.name for d in (path / "val").iterdir() if d.is_dir())
    unknown = [c for c in val_classes if c not in class_to_idx]
    if unknown:
        raise DataError(f"{path / 'val'} has classes {unknown[:3]} that {path / 'train'} lacks; "
                        "add them to train or remove them from val")
    listing = hashlib.sha1()
    samples = {}
    for split in ("train", "val"):
        samples[split] = make_dataset(str(path / split), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples[split]:
            raise DataError(f"{path / split} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...)")
        for file, label in samples[split]:
            st = Path(file).stat()
            listing.update(f"{file}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    key = f"folder-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}-{size}px-{listing.hexdigest()[:10]}"
    cache = _cache_path(path, key)
    cached = _load_cache(cache)
    if cached is None:
        splits = []
        for split in ("train", "val"):
            files = samples[split]
            images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
            for i, (file, _) in enumerate(tqdm(files, desc=f"converting {split} images", unit="img",
                                               leave=False)):
                images[i] = _read_image(file, size)
            labels = torch.tensor([label for _, label in files], dtype=torch.int64)
            splits.append(ImageData(images, labels, list(classes)))
        cached = (splits[0], splits[1])
        _save_cache(cache, *cached)
    return Dataset(f"folder:{path}", cached[0], cached[1], hflip_keeps_class=True)


def load(name: str, root: Path | None, image_size: int | None = None, svhn_extra: bool = False) -> Dataset:
    """Dispatch for the names this module serves (see :func:`labelrefinery.data.load_dataset`)."""
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root)
    if name == "svhn":
        return load_svhn(root, extra=svhn_extra)
    if name.startswith("folder:"):
        return load_folder(Path(name[len("folder:"):]), image_size)
    raise DataError(f"unknown dataset {name!r}")
