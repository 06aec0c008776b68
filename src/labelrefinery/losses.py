"""Losses on plain tensors: soft-target cross-entropy, KL divergence, the distillation loss.

Letters: N batch size, K classes. ``logits: (N, K)`` of any float dtype (cast
to float32 here, so autocast never computes a loss in reduced precision);
``targets`` are either ``(N,) int64`` class indices or ``(N, K) float32`` rows
of probabilities that sum to 1 (soft targets, the refined labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy H(p, q) = -sum_k p_k log q_k with q = softmax(logits).

    With class indices this is the usual cross-entropy. With soft targets p it
    is the loss of the Label Refinery paper's code (Bagherinezhad et al. 2018,
    arXiv 1805.02641; hessamb/label-refinery): it equals KL(p || q) + H(p), so it never reaches 0 unless p is
    one-hot; see :func:`kl_divergence` for the part that can.

    Args:
        logits: ``(N, K)`` float.
        targets: ``(N,) int64`` or ``(N, K) float32`` probability rows.

    Returns:
        Scalar float32 tensor, in nats.

    Raises:
        ValueError: targets of another shape or dtype.
    """
    logits = logits.float()
    if targets.dtype == torch.int64 and targets.shape == logits.shape[:1]:
        return F.cross_entropy(logits, targets)
    if targets.is_floating_point() and targets.shape == logits.shape:
        return -(targets.float() * F.log_softmax(logits, dim=1)).sum(1).mean()
    raise ValueError(
        f"targets must be (N,) int64 or (N, K) float matching logits {tuple(logits.shape)}, "
        f"got {targets.dtype} {tuple(targets.shape)}"
    )


def kl_divergence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean KL(p || q) = sum_k p_k (log p_k - log q_k), q = softmax(logits), 0 log 0 = 0.

    Args:
        logits: ``(N, K)`` float.
        targets: ``(N,) int64`` (p one-hot: KL equals the cross-entropy) or
            ``(N, K) float`` probability rows.

    Returns:
        Scalar float32 tensor, in nats; 0 when q equals p.
    """
    logits = logits.float()
    if targets.dtype == torch.int64:
        return F.cross_entropy(logits, targets)
    p = targets.float()
    return (torch.xlogy(p, p) - p * F.log_softmax(logits, dim=1)).sum(1).mean()


def distillation_loss(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Soft-target cross-entropy of the student at temperature T, scaled by T^2: the training loss of every generation.

    L = -T^2 * mean_n sum_k p_nk * log softmax(s_n / T)_k, where ``targets`` p are
    the refined labels already made at temperature T (p = softmax(r / T) of the
    refinery's logits r, see :func:`labelrefinery.targets.refined_labels`), or
    ground-truth class indices with T = 1. Hinton, Vinyals, Dean 2015,
    "Distilling the Knowledge in a Neural Network", section 2: the T^2 factor
    keeps the gradient's scale independent of T. At T = 1 this is the Label
    Refinery paper's loss.

    Args:
        student_logits: ``(N, K)`` float, with gradient.
        targets: ``(N,) int64`` or ``(N, K) float32`` probability rows.
        temperature: T > 0.

    Returns:
        Scalar float32 tensor, in nats.

    Raises:
        ValueError: T <= 0, or targets of another shape or dtype.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    return soft_target_cross_entropy(student_logits.float() / t, targets) * (t * t)


def distillation_kl(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || softmax(s / T)) in nats: the part of :func:`distillation_loss` (before the T^2 scale) that can reach 0.

    Args:
        student_logits: ``(N, K)`` float.
        targets: ``(N,) int64`` or ``(N, K) float32`` probability rows.
        temperature: T > 0, the same as the loss's.
    """
    return kl_divergence(student_logits.float() / float(temperature), targets)
