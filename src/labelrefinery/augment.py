"""Batched per-sample augmentation on the training device.

Each augmentation is a function ``(images, generator) -> images`` over a whole
batch ``images: (N, C, H, W) float32`` in [0, 1] pixel units: the per-sample
parameters are drawn in one call from ``generator`` (a CPU ``torch.Generator``,
so a seed gives the same views on any device). :class:`RandomAffine` turns them
into one 2x3 sampling matrix per image and resamples the whole batch at once by
PyTorch's ``F.affine_grid`` + ``F.grid_sample`` (bilinear, zero fill), with no
per-image Python loop. :class:`RandomResizedCrop` draws its views first
(:meth:`RandomResizedCrop.draw`) and cuts them out where the images are read
(:meth:`RandomResizedCrop.apply`, uint8 in, uint8 out): in the decoding workers
of a streamed dataset, so the training process only trains. (kornia's ``warp_affine`` does the same warp in 1.70 ms against
1.46 ms for :class:`RandomAffine` on a 256 x 1 x 28 x 28 CPU batch, see
``benchmarks/augment_warp.py``; kornia's augmentation classes draw from the
global RNG, not a generator.)

- :class:`RandomAffine` is the write-up's Keras ``ImageDataGenerator`` setting:
  rotation up to +-10 degrees, x and y scale each in [0.9, 1.1], shift up to 10%
  of width and height, constant (zero) fill, optional horizontal flip.
- :class:`RandomResizedCrop` is the ImageNet recipe used by the Label Refinery
  paper: area scale in [0.08, 1], aspect ratio in [3/4, 4/3], resized to the
  training size, plus horizontal flip.
- :class:`CenterCropView` is its evaluation view: the centre 224/256 of each side.
- :class:`Mixup` mixes pairs of a batch's images and their targets (``--mixup``).

:func:`make_augment` picks the training augmentation for ``--augment`` and
:func:`input_size` the side the model sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .seeding import static_copy_generator


def warp(images: torch.Tensor, theta: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Resample ``images: (N, C, H, W) float`` with per-image matrices ``theta: (N, 2, 3)``.

    ``theta`` maps each output position to the input position it reads, both in
    normalised coordinates ([-1, 1] spanning the image's outer pixel edges,
    ``align_corners=False``); positions outside the input read 0.

    Returns:
        ``(N, C, *size)`` (default: the input's H, W), same dtype and device.
    """
    n, c, h, w = images.shape
    out = size or (h, w)
    theta = theta.to(device=images.device, dtype=images.dtype, non_blocking=True)
    grid = F.affine_grid(theta, [n, c, *out], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(n, *shape, generator=generator) * (high - low) + low


@dataclass(frozen=True)
class RandomAffine:
    """Rotation, independent x/y zoom, shift and optional horizontal flip, constant zero fill.

    Attributes:
        max_rotation_deg: angle drawn uniformly in [-max, max] degrees.
        scale_range: x and y scale factors each drawn uniformly in this range.
        max_shift: shift drawn uniformly in [-max, max] x (width, height), as a fraction.
        hflip: flip half of the images horizontally (only where it keeps the class).
    """

    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shift: float = 0.1
    hflip: bool = False

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``images: (N, C, H, W) float`` in [0, 1]; returns the same shape and dtype."""
        n, _, h, w = images.shape
        angle = _uniform(n, -self.max_rotation_deg, self.max_rotation_deg, generator) * (math.pi / 180)
        scale = _uniform(n, *self.scale_range, generator, 2)
        shift = _uniform(n, -self.max_shift, self.max_shift, generator, 2) * 2  # fraction of side -> normalised
        flip = torch.rand(n, generator=generator) < 0.5
        if self.hflip:
            scale[:, 0] = torch.where(flip, -scale[:, 0], scale[:, 0])  # a negative x scale mirrors
        # Forward map in pixels about the centre: p' = R S p + t. The sampler needs the inverse,
        # p = S^-1 R^-1 (p' - t), written in normalised coordinates with D = diag(w/2, h/2):
        # A = D^-1 S^-1 R^-1 D, b = -A t_n (t_n: the shift in normalised units).
        cos, sin = torch.cos(angle), torch.sin(angle)
        inv_sx, inv_sy = 1 / scale[:, 0], 1 / scale[:, 1]
        a11, a12 = inv_sx * cos, inv_sx * sin * (h / w)
        a21, a22 = -inv_sy * sin * (w / h), inv_sy * cos
        b1 = -(a11 * shift[:, 0] + a12 * shift[:, 1])
        b2 = -(a21 * shift[:, 0] + a22 * shift[:, 1])
        theta = torch.stack([torch.stack([a11, a12, b1], 1), torch.stack([a21, a22, b2], 1)], 1)
        return warp(images, theta)


@dataclass(frozen=True)
class RandomResizedCrop:
    """Random area/aspect crop resized to ``size`` pixels, plus horizontal flip.

    The box sampler follows torchvision's ``RandomResizedCrop.get_params``: up
    to 10 tries per image to draw an area fraction in ``scale`` and a log-uniform
    aspect ratio in ``ratio`` that fits, else the whole image (centre crop at the
    nearest allowed ratio). All tries for all images are drawn in one call.

    Attributes:
        size: output height = width, in pixels.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's width / height.
        hflip: flip half of the images horizontally.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True

    def boxes(self, n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        """Crop boxes ``(n, 4) float32`` as ``(x0, y0, x1, y1)`` in pixels, inclusive corners."""
        tries = 10
        area = h * w * _uniform(n, *self.scale, generator, tries)
        log_r = _uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), generator, tries)
        aspect = torch.exp(log_r)
        cw = torch.sqrt(area * aspect).round()
        ch = torch.sqrt(area / aspect).round()
        ok = (cw <= w) & (ch <= h) & (cw > 0) & (ch > 0)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
        # Fallback (no try fits): the whole image, trimmed to the nearest allowed ratio.
        in_ratio = w / h
        fw, fh = (
            (w, round(w / self.ratio[0])) if in_ratio < self.ratio[0]
            else (round(h * self.ratio[1]), h) if in_ratio > self.ratio[1] else (w, h)
        )
        pick = first.clamp_min(0).unsqueeze(1)
        cw = torch.where(first >= 0, cw.gather(1, pick).squeeze(1), torch.tensor(float(fw)))
        ch = torch.where(first >= 0, ch.gather(1, pick).squeeze(1), torch.tensor(float(fh)))
        x0 = (torch.rand(n, generator=generator) * (w - cw + 1)).floor()
        y0 = (torch.rand(n, generator=generator) * (h - ch + 1)).floor()
        x0 = torch.where(first >= 0, x0, ((w - cw) / 2).floor())
        y0 = torch.where(first >= 0, y0, ((h - ch) / 2).floor())
        return torch.stack([x0, y0, x0 + cw - 1, y0 + ch - 1], dim=1)

    def draw(self, n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        """The views of ``n`` images of ``h`` x ``w`` pixels: ``(n, 5) int64`` rows ``x0, y0, x1, y1, flip``
        (inclusive box corners in pixels, flip 0/1), drawn from ``generator``."""
        b = self.boxes(n, h, w, generator).long()
        flip = torch.rand(n, generator=generator) < 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)
        return torch.cat([b, flip.long().unsqueeze(1)], dim=1)

    def apply(self, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Cut the ``views`` (from :meth:`draw`) out of ``images: (n, C, H, W)`` and resize them to ``size``.

        Each box is resized by ``F.interpolate`` (bilinear, antialiased: a box larger than ``size`` is averaged,
        not point-sampled, as torchvision's PIL resize does), then flipped where drawn; uint8 stays uint8
        (rounded; on the CPU without a float copy). Used where the images are read, in the decoding workers
        of a streamed dataset (:func:`~labelrefinery.data.files.read_batches`).

        Returns:
            ``(n, C, size, size)``, the dtype of ``images``.
        """
        n, c = images.shape[:2]
        out = images.new_empty(n, c, self.size, self.size)
        for i, (x0, y0, x1, y1, flip) in enumerate(views.tolist()):
            box = images[i : i + 1, :, y0 : y1 + 1, x0 : x1 + 1]
            if box.dtype == torch.uint8 and box.device.type != "cpu":  # antialiased uint8 resizing is CPU-only
                box = box.float()
            crop = F.interpolate(box, size=(self.size, self.size), mode="bilinear", antialias=True,
                                 align_corners=False)[0]
            if out.dtype == torch.uint8 and crop.dtype != torch.uint8:
                crop = crop.round_().clamp_(0, 255)
            out[i] = crop.flip(-1) if flip else crop
        return out

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Crop ``images: (N, C, H, W)`` to ``(N, C, size, size)``: :meth:`draw`, then :meth:`apply`."""
        n, _, h, w = images.shape
        return self.apply(images, self.draw(n, h, w, generator))


def augment_uint8(
    images: torch.Tensor, augment, generator: torch.Generator, batch_size: int = 4096
) -> torch.Tensor:
    """Apply ``augment`` to ``(N, C, H, W) uint8`` images in batches and return uint8 (rounded).

    Used for the write-up's static augmentation: copies made once and stored.
    """
    out = torch.empty_like(images)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].float().div_(255)
        out[start : start + batch_size] = augment(x, generator).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return out


def static_copies(images: torch.Tensor, hflip: bool, copies: int, seed: int) -> list[torch.Tensor]:
    """The ``copies`` stored augmented copies of ``images: (N, C, H, W) uint8`` for ``--augment static``.

    Copy ``c`` (1-based) is :class:`RandomAffine` (with a horizontal flip when ``hflip``, i.e. a flip keeps every
    class) applied once by :func:`augment_uint8`, drawn from :func:`~labelrefinery.seeding.static_copy_generator`
    of run seed ``seed`` and ``c``. The data protocol stores them as views
    (:func:`labelrefinery.protocol.training_views`); made here, on the training side.
    """
    affine = RandomAffine(hflip=hflip)
    return [augment_uint8(images, affine, static_copy_generator(seed, c)) for c in range(1, copies + 1)]


class CenterCropView:
    """Evaluation view for ``augment=crop``: the centre 224/256 of each side (256 -> 224 px, 32 -> 28 px)."""

    fraction = 224 / 256

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C, round(H * 7/8), round(W * 7/8))``."""
        h, w = int(x.shape[2]), int(x.shape[3])  # plain ints also while tracing (TorchScript export)
        ch, cw = max(1, round(h * self.fraction)), max(1, round(w * self.fraction))
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[:, :, top : top + ch, left : left + cw]


def input_size(augment: str, stored_side: int) -> int:
    """Side of the images the model sees, in pixels: the stored side, or 224/256 of it for ``augment=crop``."""
    return max(1, round(stored_side * CenterCropView.fraction)) if augment == "crop" else stored_side


def make_augment(augment: str, hflip: bool, stored_side: int):
    """The batched training augmentation ``(x, generator) -> x`` for ``--augment``, or None.

    ``none`` and ``static`` (whose copies are made once, before training, by
    :func:`augment_uint8`) augment nothing while training; ``online`` is
    :class:`RandomAffine` and ``crop`` is :class:`RandomResizedCrop` to
    :func:`input_size`. ``hflip``: whether a horizontal flip keeps every class.
    """
    if augment == "online":
        return RandomAffine(hflip=hflip)
    if augment == "crop":
        return RandomResizedCrop(size=input_size(augment, stored_side), hflip=hflip)
    return None


def eval_view(augment: str):
    """The view applied to un-augmented images at evaluation and prediction: the centre crop for ``crop``, else None."""
    return CenterCropView() if augment == "crop" else None


@dataclass(frozen=True)
class Mixup:
    """One batch's mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", eq. 1): image i is
    trained as lam * x_i + (1 - lam) * x_j, j = ``partner[i]``, against lam * t_i + (1 - lam) * t_j. The project's
    losses are linear in the target rows, so :meth:`loss` takes lam * L(t) + (1 - lam) * L(t[partner]), for class
    indices and probability rows alike.

    Attributes:
        lam: in [0, 1], one per batch, drawn from Beta(alpha, alpha).
        partner: ``(B,) int64`` a permutation of the batch, on its device.
    """

    lam: float
    partner: torch.Tensor

    @classmethod
    def draw(cls, n: int, alpha: float, generator: torch.Generator, device: torch.device) -> "Mixup":
        """lam ~ Beta(``alpha``, ``alpha``) (numpy's sampler, seeded from ``generator``, a CPU generator, so a seed
        gives the same draws on any device) and a random permutation of ``n`` partners on ``device``.

        Raises:
            ValueError: ``alpha`` <= 0 (numpy's Beta sampler; ``--mixup`` 0 never draws).
        """
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        lam = float(np.random.default_rng(seed).beta(alpha, alpha))
        return cls(lam, torch.randperm(n, generator=generator).to(device))

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> the mixed ``(B, C, H, W)``."""
        return self.lam * x + (1 - self.lam) * x[self.partner]

    def loss(self, loss_to, targets: torch.Tensor) -> torch.Tensor:
        """lam * loss_to(targets) + (1 - lam) * loss_to(targets[partner]): a scalar tensor (nats, as ``loss_to``).

        Args:
            loss_to: ``targets -> scalar`` loss of the mixed batch's logits against ``targets``, linear in them.
            targets: ``(B,) int64`` class indices or ``(B, K) float32`` probability rows.
        """
        return self.lam * loss_to(targets) + (1 - self.lam) * loss_to(targets[self.partner])
