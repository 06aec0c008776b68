"""Random resized crops of one batch: a batched ``grid_sample`` against ``RandomResizedCrop.apply`` (per image).

One 64 x 3 x 256 x 256 batch cut to 224 px, median of 9 repeats, 2 threads:

- ``grid_sample``: every box as one 2x3 sampling matrix, the whole batch resampled at once
  (:func:`labelrefinery.augment.warp`, bilinear, not antialiased): how crops were cut before;
- ``apply float``: :meth:`~labelrefinery.augment.RandomResizedCrop.apply` on [0, 1] floats;
- ``apply uint8``: the same on uint8, as the decoding workers run it.

    .venv/bin/python benchmarks/crop_speed.py
"""

from __future__ import annotations

import statistics
import time

import torch

from labelrefinery.augment import RandomResizedCrop, warp
from labelrefinery.device import cpu_features


def grid_sample_crop(images: torch.Tensor, views: torch.Tensor, size: int) -> torch.Tensor:
    """The boxes and flips of ``views: (n, 5)`` cut from ``images: (n, C, H, W) float`` by one batched warp."""
    n, _, h, w = images.shape
    b = views[:, :4].float()
    sx, sy = (b[:, 2] + 1 - b[:, 0]) / w, (b[:, 3] + 1 - b[:, 1]) / h
    cx, cy = (b[:, 0] + b[:, 2] + 1) / w - 1, (b[:, 1] + b[:, 3] + 1) / h - 1
    sx = torch.where(views[:, 4].bool(), -sx, sx)
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)
    return warp(images, theta, (size, size))


def median_ms(fn, repeats: int = 9) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    crop = RandomResizedCrop(224)
    u8 = torch.randint(0, 256, (64, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = u8.float().div_(255)
    views = crop.draw(64, 256, 256, torch.Generator().manual_seed(1))
    print(f"CPU features: {' '.join(cpu_features())}; one 64 x 3 x 256 x 256 batch to 224 px, median of 9, 2 threads")
    for name, fn in (("grid_sample (batched)", lambda: grid_sample_crop(x, views, 224)),
                     ("apply, float", lambda: crop.apply(x, views)),
                     ("apply, uint8", lambda: crop.apply(u8, views))):
        print(f"{name:24s} {median_ms(fn):6.1f} ms")


if __name__ == "__main__":
    main()
