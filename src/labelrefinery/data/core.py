"""The in-memory dataset types and the stratified split.

Letters: N images, C channels (1 or 3), H x W pixels, K classes.

A :class:`Dataset` has ``train`` and ``test`` splits, each an
:class:`ImageData`: ``images: (N, C, H, W) uint8`` in [0, 255] (a tensor, or for a
streamed image folder :class:`~labelrefinery.data.files.ImageFiles`, which reads
like one), ``labels: (N,) int64`` in [0, K), and the class names. Conversion to float and normalisation
happen per batch on the training device (see :mod:`labelrefinery.batch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, DataError


@dataclass
class ImageData:
    """One split of a dataset held in memory.

    Attributes:
        images: ``(N, C, H, W) uint8`` pixels in [0, 255]: a tensor, or :class:`~labelrefinery.data.files.ImageFiles`.
        labels: ``(N,) int64`` class indices in [0, K).
        classes: the K class names; ``labels`` index into this list.
        sources: for datasets read from files (``folder:PATH``), the file of each image, in order; else None.

    Raises:
        DataError: on wrong dtypes, shapes, or labels outside [0, K).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    sources: list[str] | None = None

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


@dataclass(frozen=True)
class VerifiedLabels:
    """Training images whose labels were verified: ``--trusted`` (they are the run's validation split) or
    ``--true-labels`` (they only score the refined labels).

    Attributes:
        indices: ``(T,) int64`` sorted positions in the dataset's training split.
        given: ``(T,) int64`` the labels the dataset gave them (before verification).
        verified: ``(T,) int64`` the verified labels.
    """

    indices: torch.Tensor
    given: torch.Tensor
    verified: torch.Tensor


@dataclass
class Dataset:
    """A named dataset: training and test splits plus facts the protocol needs.

    Attributes:
        name: the dataset name as given on the command line.
        train, test: the two splits (same classes, same C, H, W).
        hflip_keeps_class: whether a horizontal flip keeps every class (False for digits).
        mean, std: per-channel normalisation constants in [0, 1] pixel units.
        source: where the data was read from (a directory, a package, "generated").
        skipped_files: unreadable image files left out (``--skip-bad-images``).
        trusted: training images with verified labels (``--trusted``; ``train.labels`` holds the verified ones),
            or None.
        true_labels: training images with verified labels that only score the refined labels (``--true-labels``;
            ``train.labels`` keeps the given ones), or None.
    """

    name: str
    train: ImageData
    test: ImageData
    hflip_keeps_class: bool
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    source: str = ""
    skipped_files: int = 0
    trusted: VerifiedLabels | None = None
    true_labels: VerifiedLabels | None = None

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
    def streamed(self) -> bool:
        """True when the images stay files decoded per batch (:class:`~labelrefinery.data.files.ImageFiles`)."""
        return not isinstance(self.train.images, torch.Tensor)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (keep, held_out) with ``fraction`` of each class held out.

    Args:
        labels: ``(N,) int64`` class indices.
        fraction: share held out, in (0, 1).
        seed: draws which images are held out.

    Returns:
        ``(keep, held_out)``: sorted ``int64`` index tensors partitioning ``range(N)``.

    Raises:
        ConfigError: fraction outside (0, 1), or a split too small to hold every class.
        DataError: a class with a single image.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
    k = int(labels.max()) + 1 if len(labels) else 0
    held = int(np.ceil(fraction * len(labels)))
    if held < k or len(labels) - held < k:
        raise ConfigError(f"a {fraction} split of {len(labels)} images leaves {held} and {len(labels) - held}, "
                          f"fewer than the {k} classes; use --val-fraction between {k / len(labels):.3f} and "
                          f"{1 - k / len(labels):.3f}")
    counts = np.bincount(labels.numpy(), minlength=k)
    if (counts[counts > 0] < 2).any():
        lone = int(np.flatnonzero(counts == 1)[0])
        raise DataError(f"class {lone} has a single image; a stratified split needs at least 2 images of every "
                        "class: add images of it or remove the class")
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels.numpy())
    return torch.from_numpy(np.sort(keep)), torch.from_numpy(np.sort(held))


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Assign each of N images to one of ``k`` folds, stratified by class (sklearn's ``StratifiedKFold``).

    Args:
        labels: ``(N,) int64`` class indices.
        k: number of folds, at least 2 and at most the smallest class's count.
        seed: draws the assignment (any integer; reduced modulo 2^32).

    Returns:
        ``(N,) int64`` fold index in [0, k) of every image.

    Raises:
        ConfigError: k < 2 or k larger than the smallest class.
    """
    counts = np.bincount(labels.numpy())
    smallest = int(counts[counts > 0].min()) if len(labels) else 0
    if not 2 <= k <= smallest:
        raise ConfigError(f"--cross-fit {k} needs 2 <= K <= {smallest}, the smallest class's training images; "
                          "use a K in that range")
    from sklearn.model_selection import StratifiedKFold

    folds = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    for f, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels.numpy())):
        folds[held] = f
    return torch.from_numpy(folds)
