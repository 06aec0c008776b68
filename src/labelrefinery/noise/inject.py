"""Injecting label noise into a training split (``--label-noise``), clean labels kept for scoring.

Letters: N images, K classes.

``--label-noise symmetric:P`` replaces each training label with probability P by
a uniformly drawn *other* class; ``pairflip:P`` moves class k to k + 1 (mod K)
with probability P (the two noise models of Han et al. 2018, "Co-teaching",
section 4). The draw comes from a stream of its own
(:func:`labelrefinery.seeding.label_noise_generator`), so every run seed sees
the same corrupted dataset; the test split is never touched.

How refined labels are scored against the clean labels:
:func:`labelrefinery.noise.quality.label_statistics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import parse_label_noise
from ..errors import ConfigError


@dataclass(frozen=True)
class LabelNoise:
    """What noise injection did to a training split.

    Attributes:
        clean: ``(N,) int64`` the labels before injection.
        noisy: ``(N,) int64`` the labels after it (the *given* labels a run trains on).
    """

    clean: torch.Tensor
    noisy: torch.Tensor

    @property
    def flipped(self) -> torch.Tensor:
        """``(N,) bool``: where the given label differs from the clean one."""
        return self.noisy != self.clean



def max_noise_rate(num_classes: int) -> float:
    """The largest admissible P (exclusive): 1 - 1/K, beyond which a wrong class is as likely as the right one."""
    return 1.0 - 1.0 / num_classes


def inject_label_noise(labels: torch.Tensor, spec: str, num_classes: int, generator: torch.Generator) -> LabelNoise:
    """Corrupt ``labels: (N,) int64`` per ``spec`` (``symmetric:P`` or ``pairflip:P``).

    Each label is flipped independently with probability P; a symmetric flip draws its new
    class uniformly from the K - 1 other classes, a pair flip takes k + 1 mod K.

    Raises:
        ConfigError: a malformed spec, or P outside [0, 1 - 1/K).
    """
    kind, p = parse_label_noise(spec)
    if num_classes < 2 or not p < max_noise_rate(num_classes):
        raise ConfigError(f"--label-noise {spec}: P must be in [0, {max_noise_rate(num_classes):.3f}) for "
                          f"{num_classes} classes (1 - 1/K); use a smaller P")
    flip = torch.rand(len(labels), generator=generator) < p
    if kind == "symmetric":
        shift = torch.randint(1, num_classes, (len(labels),), generator=generator)
    else:
        shift = torch.ones(len(labels), dtype=torch.int64)
    noisy = torch.where(flip, (labels + shift) % num_classes, labels)
    return LabelNoise(labels.clone(), noisy)
