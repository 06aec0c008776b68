"""Rows of items: a dataset with real label overlap, built deterministically from an MNIST-format dataset.

Each image is a 56 x 56 canvas holding a row of three 28 x 28 items, like a crop of a house number: the
labelled item in the centre (columns 14-41, rows 14-41) and, cut by the canvas edge, the right half of a
left neighbour (columns 0-13) and the left half of a right neighbour (columns 42-55). Each neighbour is an
image of the same split drawn from a class other than the label (each of the K - 1 others alike), so a
random crop (``--augment crop``: random resized crops of 8-100% of the area) often shows mostly a
neighbour, and the image's label then describes a thing the crop barely shows: the situation per-crop
refined labels are for (Bagherinezhad et al. 2018, section 3, Figure 4; the blog's SVHN explanation).

The recipe is fixed (:data:`ROWS_SEED`, NumPy's PCG64): the same source files give the same images and labels
in every version, which a checksum test pins. Train neighbours come from the training split and test
neighbours from the test split, so no test image appears in training.
"""

from __future__ import annotations

import numpy as np
import torch

from .core import Dataset, ImageData

ROWS_SEED = 20181007  # fixed: changing it changes the dataset (the checksum test says so)
ROWS_SIDE = 56  # canvas side in pixels: the 28-px item in the centre, half a neighbour on either side


def item_rows(split: ImageData, seed: int) -> ImageData:
    """Every image of ``split`` as the centre of a row of three items (module docstring).

    Args:
        split: ``(N, 1, 28, 28) uint8`` images with ``(N,) int64`` labels in [0, K), K >= 2.
        seed: the split's neighbour draw.

    Returns:
        ``(N, 1, 56, 56) uint8`` images, the same labels, classes and order.
    """
    images = split.images.numpy()
    n, c, h, w = images.shape
    canvas = np.zeros((n, c, 2 * h, 2 * w), dtype=np.uint8)
    top, left = h // 2, w // 2
    canvas[:, :, top:top + h, left:left + w] = images
    neighbours = row_neighbours(split, seed)
    canvas[:, :, top:top + h, :left] = images[neighbours[:, 0]][:, :, :, w - left:]  # its right half, at the edge
    canvas[:, :, top:top + h, left + w:] = images[neighbours[:, 1]][:, :, :, :w - left]
    return ImageData(torch.from_numpy(canvas), split.labels.clone(), list(split.classes))


def row_neighbours(split: ImageData, seed: int) -> np.ndarray:
    """``(N, 2) int64``: the images of ``split`` whose halves :func:`item_rows` puts left and right of each image
    (indices into ``split``; their labels are the neighbours' classes), drawn from ``seed``."""
    labels = split.labels.numpy()
    n, k = len(labels), split.num_classes
    rng = np.random.Generator(np.random.PCG64(seed))
    by_class = [np.flatnonzero(labels == j) for j in range(k)]
    out = np.empty((n, 2), dtype=np.int64)
    for side in range(2):
        other = (labels + rng.integers(1, k, size=n)) % k  # a class other than the label, each alike
        pick = rng.random(n)
        for j in range(k):
            rows = np.flatnonzero(other == j)
            out[rows, side] = by_class[j][(pick[rows] * len(by_class[j])).astype(np.int64)]
    return out


def load_rows(base: Dataset) -> Dataset:
    """``base`` (an MNIST-format dataset) as rows of items: ``<name>-rows``, 1 x 56 x 56, the same labels,
    classes, split and flip rule (a flip mirrors the row; it keeps the centre item's class where it keeps it
    for ``base``)."""
    return Dataset(f"{base.name}-rows", item_rows(base.train, ROWS_SEED), item_rows(base.test, ROWS_SEED + 1),
                   hflip_keeps_class=base.hflip_keeps_class, source=f"{base.source} (rows of items, seed "
                   f"{ROWS_SEED})")
