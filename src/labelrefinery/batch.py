"""How a uint8 batch becomes a model input on the device: shared by training, prediction and BatchNorm recalibration.

Letters: B batch size, C channels, H x W pixels.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .data.files import read_batches


def num_batches(n: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in an epoch of ``n`` images: full batches of ``batch_size`` (the global batch, split over
    ``world_size`` processes), plus the rest when it gives every process 2 or more images.

    A smaller last batch is dropped: BatchNorm in train mode cannot normalise a single image.
    """
    return max(1, n // batch_size + (1 if n % batch_size >= 2 * world_size else 0))


def scaled_side(side: int, scale: float) -> int:
    """The side, in pixels, that ``side`` px trains at under ``scale`` (rounded to whole pixels, at least 1)."""
    return max(1, round(side * scale))


def rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``(B, C, H, W) float`` -> ``(B, C, H', W')`` with :func:`scaled_side` sides: bilinear, antialiased when
    shrinking.

    Progressive resizing (the "progressive learning" of Tan & Le 2021, EfficientNetV2, section 4; fast.ai's
    DAWNBench ImageNet entry, Howard et al. 2018): early epochs train on smaller images and later ones at the
    full size, at which the model is evaluated (what an epoch at a smaller side saves:
    ``benchmarks/quick_frontier.py``, BENCHMARKS.md). ``scale`` 1 returns ``x`` itself.
    """
    if scale == 1:
        return x
    h, w = (scaled_side(side, scale) for side in x.shape[2:])
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=scale < 1, align_corners=False)


@dataclass
class Pipeline:
    """How a uint8 batch becomes a model input on the device.

    Attributes:
        device: the training device.
        mean, std: ``(1, C, 1, 1) float32`` normalisation constants, in [0, 1] pixel units, on ``device``.
        amp_dtype: autocast dtype (bf16/fp16), or None for fp32.
        eval_view: optional function ``(B, C, H, W) float -> (B, C, H', W')`` applied to
            un-augmented images at evaluation and prediction (e.g. a centre crop).
    """

    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
    amp_dtype: torch.dtype | None = None
    eval_view: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def create(cls, device: torch.device, mean, std, amp_dtype=None, eval_view=None) -> "Pipeline":
        """``mean``, ``std``: C floats in [0, 1] pixel units."""
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return cls(device, m, s, amp_dtype, eval_view)

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) uint8`` (any device) -> float32 in [0, 1] on the device."""
        return images.to(self.device, non_blocking=True).float().div_(255)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) float`` in [0, 1] -> normalised, channels_last."""
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def autocast(self):
        """The autocast context of ``amp_dtype`` (a no-op for fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def eval_batches(self, images, batch_size: int) -> Iterator[torch.Tensor]:
        """Model inputs for ``(N, C, H, W) uint8`` images in order: [0, 1], ``eval_view``, normalised, channels_last.

        ``images``: a tensor, or :class:`~labelrefinery.data.files.ImageFiles` (decoded by its workers while
        the model runs). A last batch of one image is joined to the one before (BatchNorm recalibration runs
        these batches in train mode, which cannot normalise a single image).
        """
        starts = list(range(0, len(images), batch_size))
        if len(starts) > 1 and len(images) - starts[-1] == 1:
            starts.pop()
        bounds = [(start, starts[i + 1] if i + 1 < len(starts) else len(images)) for i, start in enumerate(starts)]
        for raw in read_batches(images, [torch.arange(a, b) for a, b in bounds]):
            x = self.to_unit(raw)
            if self.eval_view is not None:
                x = self.eval_view(x)
            yield self.normalize(x)
