"""ImageNet-layout image folders: ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``.

Classes are the training folder's subfolders sorted as torchvision sorts them;
a validation split lacking a class keeps the training split's indices.
Grayscale, palette, RGBA and CMYK files are converted to RGB; each image is
resized (shorter side) and centre-cropped to ``image_size`` pixels. The
converted uint8 tensors are cached (see :mod:`.cache`) under a key made from
the folder's path, the size and the listing of files (names, sizes, mtimes),
so an edited folder is converted again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import DataError
from .cache import cache_path, load_cache, save_cache
from .core import Dataset, ImageData

DEFAULT_FOLDER_IMAGE_SIZE = 256

def _to_rgb(im) -> torch.Tensor:
    """A PIL image of any mode as ``(3, H, W) uint8``, values kept: 16- and 32-bit images scaled to 8 bits.

    Grayscale, palette, RGBA and CMYK convert through PIL. ``I;16*`` (16-bit) is divided
    by 257 (65535 -> 255); ``I`` (32-bit integer, how PIL opens most 16-bit PNGs) the same
    when its values fit 16 bits, else by (2^32 - 1) / 255; ``F`` (float) is taken as [0, 1]
    when its maximum is at most 1, else as [0, 255]. PIL's own conversion would clip all of
    these at 255 (a white image).
    """
    import numpy as np
    from torchvision.transforms.v2 import functional as F

    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im).astype(np.float64)
        if im.mode == "F":
            scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
        elif im.mode.startswith("I;16") or (a.size and a.max() <= 65535 and a.min() >= 0):
            scale = 1 / 257
        else:
            scale = 255.0 / (2**32 - 1)
            a = a - a.min() if a.size and a.min() < 0 else a
        gray = torch.from_numpy(np.clip(np.round(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8))
        return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
    return F.pil_to_tensor(im.convert("RGB"))  # grayscale, palette, RGBA, CMYK -> RGB


def _read_image(path: str, size: int) -> torch.Tensor:
    """Decode one file to ``(3, size, size) uint8``: RGB (see :func:`_to_rgb`), shorter side resized, centre crop."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as F

    try:
        with Image.open(path) as im:
            img = _to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}; delete or replace the file") from None
    img = F.resize(img, [size], antialias=True)
    return F.center_crop(img, [size, size])


def load_folder(path: Path, image_size: int | None = None, data_dir: Path | None = None) -> Dataset:
    """An ImageNet-layout folder ``path/train/<class>/*``, ``path/val/<class>/*`` (see module docstring).

    Args:
        path: the folder holding ``train/`` and ``val/``.
        image_size: side of the stored images in pixels (default 256).
        data_dir: decides the cache directory (see :func:`labelrefinery.data.cache.cache_dir`).

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
    cache = cache_path(data_dir, key)
    cached = load_cache(cache)
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
        save_cache(cache, *cached)
    return Dataset(f"folder:{path}", cached[0], cached[1], hflip_keeps_class=True)
