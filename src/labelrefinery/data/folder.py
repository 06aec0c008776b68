"""ImageNet-layout image folders: ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``.

Classes are the training folder's subfolders sorted as torchvision sorts them;
a validation split lacking a class keeps the training split's indices.
Grayscale, palette, RGBA and CMYK files are converted to RGB; each image is
resized (shorter side) and centre-cropped to ``image_size`` pixels
(:func:`~labelrefinery.data.files.read_image`). Held in memory, the converted
uint8 tensors are cached (see :mod:`.cache`) under a key made from the folder's
path, the size and the listing of files (names, sizes, mtimes), so an edited
folder is converted again. Too large for memory (``--data-in-memory``), the
images stay files and are decoded per batch by worker processes
(:class:`~labelrefinery.data.files.ImageFiles`); both paths give the same pixels,
the same class indices and the same normalisation constants (per-channel mean
and std over every ``N // 2000``-th training image, cached beside the data).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import IN_MEMORY_CHOICES
from ..console import log, progress_bar
from ..dist import process_info
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text
from .cache import cache_dir, load_cache, save_cache
from .core import Dataset, ImageData
from .files import ImageFiles, find_unreadable, read_all, read_batches

DEFAULT_FOLDER_IMAGE_SIZE = 256  # when no image's size can be read
SIZE_SAMPLE = 200  # training files whose headers decide the stored size when --image-size is not given
MEMORY_SHARE = 0.5  # --data-in-memory auto: in memory when the decoded images take at most this share of free memory
STATS_IMAGES = 2000  # mean and std come from every (N // 2000)-th training image, in memory or streamed


def available_memory() -> int:
    """Bytes of RAM available to a new allocation (``MemAvailable`` of /proc/meminfo; elsewhere free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def decide_in_memory(choice: str, decoded_bytes: int, device: torch.device | None, cache: Path) -> tuple[bool, str]:
    """Whether images of ``decoded_bytes`` are held in memory for ``--data-in-memory choice``, and why (one line).

    ``auto``: in memory when they take at most half of the available RAM, half of the free memory of a CUDA
    training device (the images move there) and fit the cache directory's disk; else streamed from the files.

    Raises:
        ConfigError: ``choice`` not one of auto, yes, no.
    """
    if choice not in IN_MEMORY_CHOICES:
        raise ConfigError(f"--data-in-memory {choice!r} must be one of {', '.join(IN_MEMORY_CHOICES)}")
    if choice != "auto":
        return choice == "yes", f"--data-in-memory {choice}"
    limits = [("RAM available", available_memory())]
    if device is not None and device.type == "cuda":
        limits.append((f"free on {device}", torch.cuda.mem_get_info(device)[0]))
    for name, free in limits:
        if decoded_bytes > MEMORY_SHARE * free:
            return False, f"more than half of the {_gb(free)} {name}; --data-in-memory auto"
    if not cache.exists():
        probe = next((p for p in (cache, *cache.parents) if p.exists()), Path("/"))
        room = shutil.disk_usage(probe).free
        if decoded_bytes > room:
            return False, f"its cache would not fit the {_gb(room)} free on {probe}; --data-in-memory auto"
    return True, f"at most half of the {_gb(limits[0][1])} RAM available; --data-in-memory auto"


def _stats(images: torch.Tensor | ImageFiles) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units over every ``(N // STATS_IMAGES)``-th image (same for both paths),
    accumulated in float64 over batches of 32 images (50 MB at 256 px), so memory stays at one batch."""
    picked = images[:: max(1, len(images) // STATS_IMAGES)]
    batches = [torch.arange(i, min(i + 32, len(picked))) for i in range(0, len(picked), 32)]
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for batch in read_batches(picked, batches):
        x = batch.double().div_(255)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    n = len(picked) * picked.shape[2] * picked.shape[3]
    mean = total / n
    std = ((squares - n * mean.square()) / max(1, n - 1)).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


@dataclass(frozen=True)
class FolderReading:
    """How :func:`load_folder` reads a folder's images.

    Attributes:
        in_memory: ``yes`` (decode every image once, cache them, hold them as uint8 tensors), ``no`` (keep
            them as :class:`~labelrefinery.data.files.ImageFiles`, decoded by ``workers`` processes per batch)
            or ``auto`` (:func:`decide_in_memory`); the choice and its reason are logged.
        workers: decoding processes when streaming and for the ``skip_bad_images`` check (0: in this process).
        skip_bad_images: leave out files that cannot be decoded (found by one decoding pass, remembered in the
            cache directory), logging their number; without it such a file stops the run, named by path.
        device: the training device (its free memory counts for ``auto``).
        progress: a progress bar while converting, on a terminal.
    """

    in_memory: str = "yes"
    workers: int = 0
    skip_bad_images: bool = False
    device: torch.device | None = None
    progress: bool = True


def load_folder(path: Path, image_size: int | None = None, data_dir: Path | None = None, *,
                reading: FolderReading | None = None, cache_root: Path | None = None) -> Dataset:
    """An ImageNet-layout folder ``path/train/<class>/*``, ``path/val/<class>/*`` (see module docstring).

    Args:
        path: the folder holding ``train/`` and ``val/``.
        image_size: side of the stored images in pixels (default: the images' own, :func:`own_side`).
        data_dir: decides the cache directory (see :func:`labelrefinery.data.cache.cache_dir`).
        reading: in memory or streamed, workers, skipping bad images, device, progress (:class:`FolderReading`;
            default: its defaults).
        cache_root: the cache directory (default :func:`~labelrefinery.data.cache.cache_dir` of ``data_dir``).

    Raises:
        DataError: missing ``train``/``val`` folders, a class in ``val`` unknown to ``train``, no images,
            or an unreadable image (named by path).
        ConfigError: an unknown ``in_memory`` choice.
    """
    reading = reading or FolderReading()
    path = Path(path)
    return load_listed(f"folder:{path}", str(path), Listing(*_scan(path)), image_size, data_dir,
                       reading=reading, cache_root=cache_root)


@dataclass(frozen=True)
class Listing:
    """Image files already listed: the class names, ``samples["train"]`` and ``samples["val"]`` (the test set)
    as ``(file, class index)`` pairs, and ``digest``, a hex digest of the files (names, sizes, times) that names
    the cache."""

    classes: list[str]
    samples: dict[str, list]
    digest: str


def load_listed(name: str, source: str, listed: Listing, image_size: int | None, data_dir: Path | None, *,
                reading: FolderReading | None = None, cache_root: Path | None = None) -> Dataset:
    """A dataset of listed image files (:class:`Listing`), held in memory or streamed as ``reading`` says,
    exactly as :func:`load_folder` does with a folder's files (which it uses).

    Raises:
        DataError: an unreadable image (named by path), or every image of a split unreadable.
    """
    classes, samples, listing = listed.classes, listed.samples, listed.digest
    reading = reading or FolderReading()
    size = image_size or own_side(name, [f for f, _ in samples["train"]])
    where = hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:10]
    key = f"{name.split(':')[0]}-{where}-{size}px-{listing[:10]}"
    root = cache_root if cache_root is not None else cache_dir(data_dir)
    if reading.skip_bad_images:  # the readable files only: cached apart from a run that reads every file
        key += "-readable"
    cache = root / f"{key}.safetensors"
    pin = reading.device is not None and reading.device.type == "cuda"
    files = {split: ImageFiles([f for f, _ in samples[split]], size, reading.workers, pin)
             for split in ("train", "val")}
    skipped = 0
    if reading.skip_bad_images:
        before = sum(len(v) for v in samples.values())
        samples = _without_unreadable(samples, files, root / f"{key}-unreadable.json")
        skipped = before - sum(len(v) for v in samples.values())
        files = {split: ImageFiles([f for f, _ in samples[split]], size, reading.workers, pin) for split in samples}
    labels = {split: torch.tensor([label for _, label in samples[split]], dtype=torch.int64) for split in samples}
    if _held_in_memory(name, sum(len(v) for v in samples.values()), size, reading, cache):
        train, test = _converted(cache, files, labels, classes, size, reading.progress)
    else:
        train, test = (ImageData(files[s], labels[s], list(classes)) for s in ("train", "val"))
    train.sources, test.sources = ([str(f) for f, _ in samples[s]] for s in ("train", "val"))
    mean, std = _cached_stats(root / f"{key}-stats.json", train.images)
    return Dataset(name, train, test, hflip_keeps_class=True, mean=mean, std=std, source=source,
                   skipped_files=skipped)


def own_side(name: str, files: list[str]) -> int:
    """The side images are stored at when ``--image-size`` is not given: the most common shorter side among
    :data:`SIZE_SAMPLE` training files spread over the folder (headers only, nothing decoded; on a tie the
    larger), logged with the reason; :data:`DEFAULT_FOLDER_IMAGE_SIZE` if no header can be read."""
    from collections import Counter

    from PIL import Image

    step = max(1, len(files) // SIZE_SAMPLE)
    sides: Counter = Counter()
    for f in files[::step][:SIZE_SAMPLE]:
        try:
            with Image.open(f) as im:
                sides[min(im.size)] += 1
        except (OSError, ValueError, SyntaxError):
            continue
    if not sides:
        return DEFAULT_FOLDER_IMAGE_SIZE
    side = max(sides, key=lambda k: (sides[k], k))
    log(f"{name}: storing images at {side} x {side} px, the most common shorter side of {sum(sides.values())} "
        "sampled training images (their own size: nothing upscaled); --image-size N sets another")
    return side


def _scan(path: Path) -> tuple[list[str], dict[str, list], str]:
    """``(classes, samples, listing)`` of the folder ``path``: the training folder's class names, each split's
    ``(file, class index)`` pairs and the hex digest that names the listing in the cache key.

    Raises:
        DataError: missing ``train``/``val`` folders, a class in ``val`` unknown to ``train``, a split or a
            training class without images.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

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
    present = {label for _, label in samples["train"]}
    empty = [c for c in classes if class_to_idx[c] not in present]
    if empty:  # as torchvision's ImageFolder: a class needs training images
        raise DataError(f"{path / 'train' / empty[0]} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...); add "
                        "images of that class or remove the folder")
    for split in ("train", "val"):  # every file's name, class, size and time: an edited folder is converted again
        for file, label in samples[split]:
            st = Path(file).stat()
            listing.update(f"{split}|{file}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return classes, samples, listing.hexdigest()


def _held_in_memory(name: str, n: int, size: int, reading: FolderReading, cache: Path) -> bool:
    """Whether the ``n`` images of ``size`` px are held in memory (:func:`decide_in_memory`); the choice logged."""
    held, why = decide_in_memory(reading.in_memory, n * 3 * size * size, reading.device, cache)
    workers = reading.workers
    log(f"{name}: {n:,} images of {size} x {size} px, {_gb(n * 3 * size * size)} decoded: "
        + (f"held in memory ({why})" if held else
           f"streamed from the files by {workers} worker process{'' if workers == 1 else 'es'}"
           f"{' per training process' if process_info().world_size > 1 else ''} ({why})"))
    return held


def _converted(cache: Path, files: dict[str, ImageFiles], labels: dict[str, torch.Tensor], classes: list[str],
               size: int, progress: bool) -> tuple[ImageData, ImageData]:
    """The training and validation splits as uint8 tensors: from ``cache``, or decoded now and cached there."""
    cached = load_cache(cache)
    if cached is not None:
        return cached
    splits = []
    for split in ("train", "val"):
        images = torch.empty(len(labels[split]), 3, size, size, dtype=torch.uint8)
        order = [torch.arange(i, min(i + 64, len(images))) for i in range(0, len(images), 64)]
        with progress_bar(len(images), f"converting {split} images", progress) as bar:
            for idx, batch in zip(order, read_batches(files[split], order)):
                images[idx] = batch
                bar.update(len(idx))
        splits.append(ImageData(images, labels[split], list(classes)))
    cached = (splits[0], splits[1])
    save_cache(cache, *cached)
    return cached


def _cached_stats(path: Path, images) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """:func:`_stats` of ``images``, kept in ``path`` (a JSON file in the cache directory) for the next run."""
    try:
        saved = json.loads(path.read_text())
        mean, std = tuple(float(v) for v in saved["mean"]), tuple(float(v) for v in saved["std"])
        if len(mean) == len(std) == 3:
            return mean, std
    except (OSError, ValueError, KeyError, TypeError):
        pass
    mean, std = _stats(images)
    atomic_write_text(path, json.dumps({"mean": mean, "std": std}))
    return mean, std


def _without_unreadable(samples: dict[str, list], files: dict[str, ImageFiles], record: Path) -> dict[str, list]:
    """``samples`` without the files that cannot be decoded: found by one pass, kept in ``record`` for later runs."""
    try:
        bad = {s: set(v) for s, v in json.loads(record.read_text()).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        bad = {split: {files[split].path(i) for i in find_unreadable(files[split])} for split in samples}
        atomic_write_text(record, json.dumps({s: sorted(v) for s, v in bad.items()}))
    total = sum(len(v) for v in bad.values())
    if total:
        first = sorted(bad["train"] | bad["val"])[0]
        log(f"--skip-bad-images: leaving out {total} unreadable image file(s), e.g. {first} (list: {record})")
    kept = {s: [(f, label) for f, label in samples[s] if f not in bad.get(s, set())] for s in samples}
    for split, rows in kept.items():
        if not rows:
            raise DataError(f"every image in {split} is unreadable; check the files")
    return kept
