"""The data protocol of one seed: its train/validation split, its training views, its test images.

Validation (a stratified ``val_fraction`` of the training split, drawn by the
seed, after an optional stratified ``train_size`` subset drawn once) and test
images keep their given labels in every generation: they are never augmented,
refined, or used to make refined labels. Injected label noise
(:func:`with_label_noise`) changes the training split's labels before any of
this, so validation is as noisy as training; test labels stay clean. Verified labels
(``--trusted``, :func:`with_trusted`) replace the validation split: then epochs and
generations are chosen by labels known to be right.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import RunConfig
from .data import Dataset, VerifiedLabels, load_dataset, read_verified_labels, stratified_split
from .data.files import default_workers
from .errors import ConfigError
from .noise import LabelNoise, inject_label_noise
from .seeding import label_noise_generator, trusted_generator

# ``(images, hflip, copies, seed) -> copies`` stored augmented uint8 copies for ``--augment static``, made on the
# training side (:func:`labelrefinery.augment.static_copies`): the data protocol only stores them as views.
StaticCopies = Callable[[torch.Tensor, bool, int, int], list[torch.Tensor]]


def load_run_dataset(cfg: RunConfig, device: torch.device | None = None) -> Dataset:
    """The dataset a run reads, loaded as its settings say (``--data-in-memory``, ``--workers``, ``--cache-dir``,
    ``--skip-bad-images``), before any label noise (:func:`with_label_noise`).

    Args:
        device: the training device (its free memory decides ``--data-in-memory auto``), or None.

    Raises:
        UserError: missing or unreadable data, a setting the dataset cannot take.
    """
    d, ex = cfg.data, cfg.execution
    return load_dataset(d.dataset, d.data_dir, image_size=d.image_size, svhn_extra=d.svhn_extra,
                        in_memory=ex.data_in_memory, workers=ex.workers or default_workers(),
                        skip_bad_images=d.skip_bad_images, device=device, cache_dir=ex.cache_dir,
                        progress=ex.progress, **({} if d.classes is None else {"classes": d.classes}))


def seed_split(dataset: Dataset, cfg: RunConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train indices, validation indices)``, ``(M,) int64`` each, into the dataset's training split for ``seed``.

    With verified labels (``dataset.trusted``, ``--trusted``) they are the validation split for every seed, and
    the training images are the others (a ``train_size`` subset of them drawn once, when set).

    Raises:
        ConfigError: a validation share that cannot hold every class.
    """
    labels = dataset.train.labels
    pool = torch.arange(len(labels))
    if dataset.trusted is not None:  # the verified images are the validation split; the rest may train
        pool = pool[~torch.isin(pool, dataset.trusted.indices)]
        if cfg.data.train_size is not None and cfg.data.train_size < len(pool):
            _, keep = stratified_split(labels[pool], cfg.data.train_size / len(pool), seed=0)
            pool = pool[keep]
        return pool, dataset.trusted.indices.clone()
    if cfg.data.train_size is not None and cfg.data.train_size < len(labels):
        k = int(labels.max()) + 1
        if cfg.data.train_size < 4 * k:
            raise ConfigError(f"--train-size {cfg.data.train_size} is too small for {k} classes: use at least {4 * k} "
                              "(two training and two validation images per class)")
        _, pool = stratified_split(labels, cfg.data.train_size / len(labels), seed=0)
    train_pos, val_pos = stratified_split(labels[pool], cfg.data.val_fraction, seed)
    return pool[train_pos], pool[val_pos]


@dataclass
class TrainingViews:
    """The training set of one seed: the stored views and their ground truth.

    Attributes:
        images: ``(M, C, H, W) uint8``: the training images, followed by each stored augmented copy (static).
        labels: ``(M,) int64`` ground truth of each view.
        indices: ``(M,) int64`` index of each view's image in the dataset's training split.
        views: ``(M,) int64`` 0 = the image itself, c = its c-th stored augmented copy.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    views: torch.Tensor


def training_views(dataset: Dataset, train_idx: torch.Tensor, cfg: RunConfig, seed: int,
                   static_copies: StaticCopies | None = None) -> TrainingViews:
    """The images generation 1 trains on; with ``augment=static``, plus ``static_copies`` copies made once from the seed.

    Args:
        static_copies: makes the copies (:func:`labelrefinery.augment.static_copies`); needed with ``augment=static``.

    Raises:
        ValueError: ``augment=static`` without ``static_copies``.
    """
    images = dataset.train.images[train_idx]
    labels = dataset.train.labels[train_idx]
    parts, views = [images], [torch.zeros(len(images), dtype=torch.int64)]
    if cfg.data.augment == "static":
        if static_copies is None:
            raise ValueError("augment=static: pass static_copies (labelrefinery.augment.static_copies) to make the "
                             "stored copies")
        for c, copy in enumerate(static_copies(images, dataset.hflip_keeps_class, cfg.data.static_copies, seed), 1):
            parts.append(copy)
            views.append(torch.full((len(images),), c, dtype=torch.int64))
    reps = len(parts)
    return TrainingViews(parts[0] if reps == 1 else torch.cat(parts), labels.repeat(reps), train_idx.repeat(reps),
                         torch.cat(views))


@dataclass
class SeedData:
    """Everything one seed's chain reads, built once per seed.

    Attributes:
        seed: the run seed.
        views: the stored training views (CPU).
        images: ``views.images`` on the training device.
        ground_truth: ``views.labels`` on the training device.
        train_idx, val_idx: the split (see :func:`seed_split`).
        val_images, val_labels: validation ``(V, C, H, W) uint8`` (on the training device) and ``(V,) int64``.
        test_images, test_labels: the (first ``test_size``) test images and labels.
        clean_labels: ``(M,) int64`` the true label of each training view when label noise was injected
            (``views.labels`` then holds the given, noisy ones), or with ``--true-labels`` (-1 where none is
            known), else None.
    """

    seed: int
    views: TrainingViews
    images: torch.Tensor
    ground_truth: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    clean_labels: torch.Tensor | None = None


def reported_test_set(dataset: Dataset, cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images and labels a run reports on: the first ``test_size`` of the test split, or all of it."""
    n = cfg.data.test_size
    images, labels = dataset.test.images, dataset.test.labels
    return (images, labels) if n is None else (images[:n], labels[:n])


def with_label_noise(dataset: Dataset, spec: str | None) -> tuple[Dataset, LabelNoise | None]:
    """``dataset`` with ``--label-noise`` injected into its training labels (see :mod:`labelrefinery.noise`).

    The noise is drawn once, from its own stream, before any split: every seed, the validation split
    included, sees the same given labels. The test split is untouched.

    Returns:
        ``(dataset, None)`` without a spec, else ``(a copy with noisy training labels, the noise)``.

    Raises:
        ConfigError: a spec whose P is not below 1 - 1/K.
    """
    if spec is None:
        return dataset, None
    images = None if dataset.streamed else dataset.train.images  # idn:P reads the pixels
    noise = inject_label_noise(dataset.train.labels, spec, dataset.train.num_classes, label_noise_generator(), images)
    return dataclasses.replace(dataset, train=dataclasses.replace(dataset.train, labels=noise.noisy)), noise


def _known_labels(dataset: Dataset, indices: torch.Tensor) -> torch.Tensor | None:
    """``(M,) int64`` the ``--true-labels`` label of each of ``indices`` (-1 where none is known), or None."""
    truth = dataset.true_labels
    if truth is None:
        return None
    known = torch.full((len(dataset.train),), -1, dtype=torch.int64)
    known[truth.indices] = truth.verified
    return known[indices]


def with_given_labels(dataset: Dataset, cfg: RunConfig) -> tuple[Dataset, LabelNoise | None]:
    """``dataset`` with the labels a run is given: ``--label-noise`` injected (:func:`with_label_noise`), then
    ``--trusted`` verified labels set on their images (:func:`with_trusted`), and ``--true-labels`` recorded
    (``dataset.true_labels``; the images keep their given labels).

    Raises:
        UserError: a noise spec or verified-label file that cannot be used.
    """
    dataset, noise = with_label_noise(dataset, cfg.data.label_noise)
    dataset = with_trusted(dataset, cfg.data.trusted, noise)
    if cfg.data.true_labels is not None:
        indices, verified = read_verified_labels(Path(cfg.data.true_labels), dataset.train, "--true-labels")
        truth = VerifiedLabels(indices, dataset.train.labels[indices].clone(), verified)
        dataset = dataclasses.replace(dataset, true_labels=truth)
    return dataset, noise


def with_trusted(dataset: Dataset, spec: str | None, noise: LabelNoise | None) -> Dataset:
    """``dataset`` whose training images listed by ``--trusted`` carry their verified labels (``dataset.trusted``
    records which, and what they were given).

    Args:
        spec: ``N`` (that many training images drawn from their own stream, the same for every seed, with the
            clean labels ``noise`` kept) or a CSV file (:func:`~labelrefinery.data.read_verified_labels`); None:
            ``dataset`` as it is.

    Raises:
        ConfigError: N without injected noise, or too few or too many images for a validation split.
        DataError: a file that cannot be used.
    """
    if spec is None:
        return dataset
    train = dataset.train
    k, n = train.num_classes, len(train)
    if spec.isdigit():
        if noise is None:
            raise ConfigError(f"--trusted {spec} needs --label-noise, whose clean labels it reveals; give --trusted "
                              "FILE with your own verified labels")
        indices = torch.randperm(n, generator=trusted_generator())[: int(spec)].sort().values
        verified = noise.clean[indices]
    else:
        indices, verified = read_verified_labels(Path(spec), train)
    if not 2 * k <= len(indices) <= n // 2:
        raise ConfigError(f"--trusted {spec} gives {len(indices)} verified images; a validation split of {k} classes "
                          f"needs from {2 * k} to {n // 2} (half the training split)")
    labels = train.labels.clone()
    labels[indices] = verified
    trusted = VerifiedLabels(indices, train.labels[indices].clone(), verified)
    return dataclasses.replace(dataset, train=dataclasses.replace(train, labels=labels), trusted=trusted)


def seed_data(dataset: Dataset, cfg: RunConfig, seed: int, device: torch.device,
              noise: LabelNoise | None = None, static_copies: StaticCopies | None = None) -> SeedData:
    """Split, views and test images of ``seed``; the training views are moved to ``device``.

    Args:
        noise: the label noise ``dataset`` carries (see :func:`with_label_noise`), for the clean labels.
        static_copies: makes the stored copies of ``augment=static`` (see :func:`training_views`).
    """
    train_idx, val_idx = seed_split(dataset, cfg, seed)
    views = training_views(dataset, train_idx, cfg, seed, static_copies)
    test_images, test_labels = reported_test_set(dataset, cfg)
    clean = noise.clean[views.indices] if noise is not None else _known_labels(dataset, views.indices)
    return SeedData(seed, views, views.images.to(device), views.labels.to(device), train_idx, val_idx,
                    dataset.train.images[val_idx].to(device), dataset.train.labels[val_idx], test_images, test_labels,
                    clean)
