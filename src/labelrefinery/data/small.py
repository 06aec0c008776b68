"""Datasets that need no files: scikit-learn's digits and generated CIFAR-sized data."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .core import Dataset, ImageData
from .idx import DIGIT_CLASSES


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

