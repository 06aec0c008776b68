"""Images read from their files when a batch needs them: the streaming counterpart of a uint8 tensor.

Letters: N images, B batch size, S the stored side in pixels.

A dataset that does not fit in memory (``--data-in-memory no``, or ``auto`` when its
decoded size exceeds the budget) keeps its training, validation and test images as
:class:`ImageFiles`: a list of file paths that looks like an ``(N, 3, S, S) uint8``
tensor (``len``, ``shape``, ``dtype``, indexing). Indexing with a slice, an index
tensor or a mask gives another :class:`ImageFiles` (nothing is decoded); an integer
decodes one image. :func:`read_batches` is how every pass over images (training,
prediction, BatchNorm recalibration) reads them, for tensors and files alike: for
files, ``torch.utils.data.DataLoader`` worker processes decode each batch (Pillow,
shorter side resized with antialiasing and centre-cropped to S, exactly as the
in-memory conversion does, so both paths see the same pixels) while the main process
trains on the one before; batches arrive in the order asked for, so a seed gives the
same epochs whichever path holds the images. Random resized crops, drawn by the
training process, are cut where the images are read (in the workers for files);
other augmentations run on the decoded batch on the training device
(:mod:`labelrefinery.augment`). Either way per-crop refined labels see exactly the
student's crops.

Paths are held as one byte buffer plus offsets (numpy), not as Python strings: worker
processes forked from the main one share them without copy-on-read growth.
"""

from __future__ import annotations

import signal
from typing import Iterator, Sequence

import numpy as np
import torch

from ..dist import cores_per_process
from ..errors import DataError

PREFETCH_BATCHES = 4  # batches each worker decodes ahead


def default_workers() -> int:
    """Decoding worker processes when ``--workers`` is 0: this process's share of the CPU cores
    (:func:`~labelrefinery.dist.cores_per_process`), at most 8."""
    return min(8, cores_per_process())


def to_rgb(im) -> torch.Tensor:
    """A PIL image of any mode as ``(3, H, W) uint8``, values kept: 16- and 32-bit images scaled to 8 bits.

    Grayscale, palette, RGBA and CMYK convert through PIL. ``I;16*`` (16-bit) is divided
    by 257 (65535 -> 255); ``I`` (32-bit integer, how PIL opens most 16-bit PNGs) the same
    when its values fit 16 bits, else by (2^32 - 1) / 255; ``F`` (float) is taken as [0, 1]
    when its maximum is at most 1, else as [0, 255]. PIL's own conversion would clip all of
    these at 255 (a white image).
    """
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


def read_image(path: str, size: int) -> torch.Tensor:
    """Decode one file to ``(3, size, size) uint8``: RGB (see :func:`to_rgb`), shorter side resized, centre crop.

    Raises:
        DataError: the file cannot be read or decoded (the message names the path).
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as F

    try:
        with Image.open(path) as im:
            img = to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}; delete or replace the file, or pass --skip-bad-images "
                        "to leave unreadable files out") from None
    img = F.resize(img, [size], antialias=True)
    return F.center_crop(img, [size, size])


class _PathTable:
    """N paths as one UTF-8 byte buffer and ``(N + 1,) int64`` offsets."""

    def __init__(self, paths: Sequence[str]):
        encoded = [p.encode() for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()


class ImageFiles:
    """``(N, 3, S, S) uint8`` images kept as files and decoded when read (see the module docstring).

    Args:
        paths: the N image files.
        size: S, the side every image is resized (shorter side) and centre-cropped to, in pixels.
        workers: decoding processes of :func:`read_batches` (0: decode in this process).
        pin_memory: page-locked batches, for fast copies to a CUDA device.
    """

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")

    def __init__(self, paths: Sequence[str] | _PathTable, size: int, workers: int = 0, pin_memory: bool = False,
                 _index: np.ndarray | None = None):
        self._table = paths if isinstance(paths, _PathTable) else _PathTable(paths)
        self._index = np.arange(len(self._table), dtype=np.int64) if _index is None else _index
        self.size, self.workers, self.pin_memory = int(size), int(workers), bool(pin_memory)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), 3, self.size, self.size))

    def path(self, i: int) -> str:
        """The file of image ``i`` (0 <= i < N)."""
        return self._table[int(self._index[i])]

    def __getitem__(self, key) -> "torch.Tensor | ImageFiles":
        """An int: that image decoded, ``(3, S, S) uint8``; a slice, index tensor/array/list or bool mask: the
        images it selects as :class:`ImageFiles` (nothing decoded)."""
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0
                                                   and not key.dtype == torch.bool):
            return read_image(self.path(int(key)), self.size)
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return ImageFiles(self._table, self.size, self.workers, self.pin_memory, self._index[key])

    def to(self, *args, **kwargs) -> "ImageFiles":
        """Files stay where they are: batches move to the device as they are read."""
        return self

    def load(self) -> torch.Tensor:
        """Every image decoded: ``(N, 3, S, S) uint8`` (for small selections: a report's thumbnails)."""
        if len(self) == 0:
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        batches = read_batches(self, [torch.arange(len(self))])
        try:
            return next(batches)
        finally:
            batches.close()  # its workers stop now


class _Decoder(torch.utils.data.Dataset):
    """Map-style dataset over an :class:`ImageFiles`: item ``i`` or ``(i, view)`` is ``(i, image or None,
    error or None)``, the image cut to ``view`` by ``crop.apply`` when one is given."""

    def __init__(self, files: ImageFiles, crop=None):
        self.files, self.crop = files, crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key):
        i, view = key if isinstance(key, tuple) else (key, None)
        try:
            img = self.files[int(i)]
        except DataError as e:  # raised in the main process, as one line naming the file
            return i, None, str(e)
        if view is not None:
            img = self.crop.apply(img.unsqueeze(0), torch.tensor([view]))[0]
        return i, img, None


def _collate(items: list) -> tuple[torch.Tensor | None, str | None]:
    errors = [e for _, _, e in items if e is not None]
    if errors:
        return None, errors[0]
    return torch.stack([img for _, img, _ in items]), None


def _failed_positions(items: list) -> list[int]:
    return [i for i, _, e in items if e is not None]


def _start_workers(loader: torch.utils.data.DataLoader):
    """``iter(loader)`` with SIGINT blocked while the workers are forked: Ctrl-C reaches the terminal's whole
    process group, and a worker hit between its fork and DataLoader's worker loop would print a traceback. The
    run itself gets the signal (a KeyboardInterrupt) as soon as the workers are started, and stops them on the
    way out."""
    if not hasattr(signal, "pthread_sigmask"):
        return iter(loader)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        it = iter(loader)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a Ctrl-C that came meanwhile is raised here
    except BaseException:
        _stop_workers(it)
        raise
    return it


def _stop_workers(it) -> None:
    """Shut the worker processes of a DataLoader iterator down now (not at garbage collection)."""
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _worker_takes_ctrl_c(_worker_id: int) -> None:
    """In each worker, once inside DataLoader's worker loop (which ends quietly on a KeyboardInterrupt): unblock
    SIGINT, so Ctrl-C ends the worker without a word."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def read_batches(images: "torch.Tensor | ImageFiles", batches: Sequence[torch.Tensor],
                 views: Sequence[torch.Tensor] | None = None, crop=None) -> Iterator[torch.Tensor]:
    """The uint8 images of each index batch, in order: ``images[idx]`` for every ``idx`` in ``batches``.

    Args:
        images: ``(N, C, H, W) uint8`` tensor (indexed on its own device) or :class:`ImageFiles`
            (decoded by its worker processes, ``PREFETCH_BATCHES`` batches ahead per worker).
        batches: ``(B,) int64`` index tensors into ``images``.
        views, crop: optionally, per batch a ``(B, 5) int64`` tensor of views and the augmentation that cuts
            them (:meth:`~labelrefinery.augment.RandomResizedCrop.apply`): each image is cropped as it is read
            (for files, in the worker processes).

    Yields:
        ``(B, C, H', W') uint8`` per batch (files: on the CPU, page-locked with ``pin_memory``).

    Raises:
        DataError: a file that cannot be decoded (named by path).
    """
    if isinstance(images, torch.Tensor):
        for b, idx in enumerate(batches):
            batch = images[idx.to(images.device)]
            yield batch if views is None else crop.apply(batch, views[b])
        return
    order = [idx.cpu().tolist() if views is None else list(zip(idx.cpu().tolist(), map(tuple, views[b].tolist())))
             for b, idx in enumerate(batches)]
    decoder = _Decoder(images, crop)
    if images.workers == 0:
        for keys in order:
            batch, error = _collate([decoder[k] for k in keys])
            if error is not None:
                raise DataError(error)
            yield batch
        return
    loader = torch.utils.data.DataLoader(
        decoder, batch_sampler=order, num_workers=min(images.workers, max(1, len(order))),
        collate_fn=_collate, pin_memory=images.pin_memory, prefetch_factor=PREFETCH_BATCHES,
        worker_init_fn=_worker_takes_ctrl_c)
    it = _start_workers(loader)
    try:
        for batch, error in it:
            if error is not None:
                raise DataError(error)
            yield batch
    finally:  # stop the workers at once, also when the caller stops early or Ctrl-C interrupts
        _stop_workers(it)


def read_all(images: "torch.Tensor | ImageFiles") -> torch.Tensor:
    """``images`` as a uint8 tensor (files decoded)."""
    return images if isinstance(images, torch.Tensor) else images.load()


def find_unreadable(files: ImageFiles, batch_size: int = 64) -> list[int]:
    """Positions of the images whose files cannot be decoded (one decoding pass by the worker processes)."""
    bad: list[int] = []
    loader = torch.utils.data.DataLoader(
        _Decoder(files), batch_size=batch_size, num_workers=files.workers,
        collate_fn=_failed_positions, worker_init_fn=_worker_takes_ctrl_c,
        prefetch_factor=PREFETCH_BATCHES if files.workers else None)
    for found in _start_workers(loader):
        bad.extend(int(i) for i in found)
    return bad
