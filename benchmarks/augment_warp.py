"""Batched affine warp: labelrefinery.augment.RandomAffine (torch affine_grid + grid_sample) against kornia.

Medians of interleaved runs on one (256, 1, 28, 28) float batch; kornia is optional
(`pip install kornia`).

    python benchmarks/augment_warp.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from labelrefinery.augment import RandomAffine


def main(repeats: int = 15) -> None:
    torch.set_num_threads(2)
    x = torch.rand(256, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    ours = RandomAffine(hflip=True)
    identity = torch.eye(2, 3).expand(256, 2, 3).clone()
    fns = {
        "labelrefinery RandomAffine": lambda: ours(x, g),
        "affine_grid + grid_sample alone": lambda: F.grid_sample(
            x, F.affine_grid(identity, list(x.shape), align_corners=False), align_corners=False),
    }
    try:
        from kornia.geometry.transform import get_affine_matrix2d, warp_affine

        def kornia_affine():
            n = len(x)
            angle = torch.rand(n, generator=g) * 20 - 10
            scale = torch.rand(n, 2, generator=g) * 0.2 + 0.9
            shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 2.8
            center = torch.tensor([13.5, 13.5]).expand(n, 2)
            m = get_affine_matrix2d(shift, center, scale, angle)[:, :2]
            return warp_affine(x, m, (28, 28), align_corners=False)

        fns["kornia warp_affine"] = kornia_affine
    except ImportError:
        print("kornia not installed: pip install kornia to compare")
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t) * 1e3)
    for k, v in times.items():
        print(f"{k}: {statistics.median(v):.2f} ms per batch")


if __name__ == "__main__":
    main()
