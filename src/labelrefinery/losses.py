"""Losses on plain tensors: soft-target cross-entropy, KL divergence, the distillation loss.

Letters: N batch size, K classes. ``logits: (N, K)`` of any float dtype (cast
to float32 here, so autocast never computes a loss in reduced precision);
``targets`` are either ``(N,) int64`` class indices or ``(N, K) float32`` rows
of probabilities that sum to 1 (soft targets, the refined labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


ROW_SUM_TOLERANCE = 1e-3  # soft-target rows must sum to 1 within this


def check_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``targets`` are class indices or probability rows that fit ``logits``.

    Class indices: ``(N,) int64`` in [0, K). Probability rows: ``(N, K)`` float, finite, non-negative,
    each summing to 1 within :data:`ROW_SUM_TOLERANCE`.
    """
    n, k = logits.shape
    if targets.dtype == torch.int64 and targets.shape == (n,):
        if n and (int(targets.min()) < 0 or int(targets.max()) >= k):
            raise ValueError(f"class indices must be in [0, {k}), got {int(targets.min())}..{int(targets.max())}")
        return
    if not (targets.is_floating_point() and targets.shape == (n, k)):
        raise ValueError(f"targets must be (N,) int64 class indices or (N, K) float probability rows matching "
                         f"logits {tuple(logits.shape)}, got {targets.dtype} {tuple(targets.shape)}")
    t = targets.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("targets hold NaN or infinite values; they must be probability rows")
    if bool((t < 0).any()):
        raise ValueError("targets hold negative values; they must be probability rows")
    worst = float((t.sum(1) - 1).abs().max()) if n else 0.0
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(f"target rows must sum to 1 (within {ROW_SUM_TOLERANCE}), one is off by {worst:.3g}")


def smooth_targets(targets: torch.Tensor, num_classes: int, epsilon: float) -> torch.Tensor:
    """Label smoothing: ``(1 - epsilon) * p + epsilon / K`` (Szegedy et al. 2016, "Rethinking the Inception
    Architecture", section 7), p the one-hot rows of class indices or the given probability rows.

    Args:
        targets: ``(N,) int64`` class indices or ``(N, K) float`` probability rows.
        num_classes: K.
        epsilon: in [0, 1); 0 returns ``targets`` itself.

    Returns:
        ``targets`` when epsilon is 0, else ``(N, K) float32`` probability rows.

    Raises:
        ValueError: epsilon outside [0, 1).
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
    if epsilon == 0.0:
        return targets
    p = F.one_hot(targets, num_classes).float() if targets.dtype == torch.int64 else targets.float()
    return p * (1.0 - epsilon) + epsilon / num_classes


def _weighted_log_q(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``p * log softmax(logits)``, 0 wherever p is 0 (even where the student gives that class probability 0)."""
    log_q = F.log_softmax(logits, dim=1)
    return torch.where(p > 0, p * log_q, torch.zeros((), dtype=log_q.dtype, device=log_q.device))


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Mean cross-entropy H(p, q) = -sum_k p_k log q_k with q = softmax(logits).

    With class indices this is the usual cross-entropy. With soft targets p it
    is the loss of the Label Refinery paper's code (Bagherinezhad et al. 2018,
    arXiv 1805.02641; hessamb/label-refinery): it equals KL(p || q) + H(p), so it never reaches 0 unless p is
    one-hot; see :func:`kl_divergence` for the part that can. A class with p_k = 0 adds 0, also where q_k = 0.

    Args:
        logits: ``(N, K)`` float.
        targets: ``(N,) int64`` or ``(N, K) float32`` probability rows.
        check: validate ``targets`` (:func:`check_targets`); the training loop, whose target
            sources are validated once, passes False.

    Returns:
        Scalar float32 tensor, in nats.

    Raises:
        ValueError: targets that are not class indices or probability rows of the logits' shape.
    """
    logits = logits.float()
    if check:
        check_targets(logits, targets)
    if targets.dtype == torch.int64:
        return F.cross_entropy(logits, targets)
    return -_weighted_log_q(targets.float(), logits).sum(1).mean()


def kl_divergence(logits: torch.Tensor, targets: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Mean KL(p || q) = sum_k p_k (log p_k - log q_k), q = softmax(logits), 0 log 0 = 0.

    Each row's divergence is clamped at 0 (rounding can make a row of q = p come out at -1e-8), so the
    result is never negative.

    Args:
        logits: ``(N, K)`` float.
        targets: ``(N,) int64`` (p one-hot: KL equals the cross-entropy) or
            ``(N, K) float`` probability rows.
        check: validate ``targets`` (see :func:`soft_target_cross_entropy`).

    Returns:
        Scalar float32 tensor, in nats; 0 when q equals p.

    Raises:
        ValueError: targets that are not class indices or probability rows of the logits' shape.
    """
    logits = logits.float()
    if check:
        check_targets(logits, targets)
    if targets.dtype == torch.int64:
        return F.cross_entropy(logits, targets)
    p = targets.float()
    return (torch.xlogy(p, p) - _weighted_log_q(p, logits)).sum(1).clamp_min(0).mean()


def distillation_loss(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                      check: bool = True) -> torch.Tensor:
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
        check: validate ``targets`` (see :func:`soft_target_cross_entropy`).

    Returns:
        Scalar float32 tensor, in nats.

    Raises:
        ValueError: T <= 0, or targets that are not class indices or probability rows.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    return soft_target_cross_entropy(student_logits.float() / t, targets, check) * (t * t)


def distillation_kl(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                    check: bool = True) -> torch.Tensor:
    """KL(p || softmax(s / T)) in nats: the part of :func:`distillation_loss` (before the T^2 scale) that can reach 0.

    Args:
        student_logits: ``(N, K)`` float.
        targets: ``(N,) int64`` or ``(N, K) float32`` probability rows.
        temperature: T > 0, the same as the loss's.
        check: validate ``targets`` (see :func:`soft_target_cross_entropy`).

    Returns:
        Scalar float32 tensor, in nats, never negative.

    Raises:
        ValueError: T <= 0, or targets that are not class indices or probability rows.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return kl_divergence(student_logits.float() / float(temperature), targets, check)
