"""Refined labels: from a refinery's logits to the targets the next generation trains on.

Targets are data: ``(N,) int64`` class indices (ground truth, generation 1) or
``(N, K) float32`` rows that sum to 1 (refined labels). Letters: N images, K classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def parse_label_form(form: str) -> tuple[str, int]:
    """Parse ``soft``, ``hard`` or ``topk:K`` into (kind, k); k = 0 unless topk.

    Raises:
        ValueError: any other string, or K < 1.
    """
    if form in ("soft", "hard"):
        return form, 0
    if form.startswith("topk:"):
        try:
            k = int(form[5:])
        except ValueError:
            k = 0
        if k >= 1:
            return "topk", k
    raise ValueError(f"--label-form must be soft, hard or topk:K with K >= 1, got {form!r}")


def refined_labels(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    form: str = "soft",
    ground_truth: torch.Tensor | None = None,
    gt_weight: float = 0.0,
) -> torch.Tensor:
    """Turn refinery logits into soft targets.

    p = softmax(logits / T) (Hinton et al. 2015, section 2); then ``hard``
    keeps the argmax as a one-hot row and ``topk:K`` keeps the K largest
    probabilities renormalised to sum to 1; finally, with alpha = ``gt_weight``,
    targets = alpha * one_hot(ground_truth) + (1 - alpha) * p.

    Args:
        logits: ``(N, K)`` float refinery logits.
        temperature: T > 0.
        form: ``soft`` | ``hard`` | ``topk:K``.
        ground_truth: ``(N,) int64`` labels, needed when ``gt_weight > 0``.
        gt_weight: alpha in [0, 1].

    Returns:
        ``(N, K) float32`` rows summing to 1.

    Raises:
        ValueError: bad form, T <= 0, alpha outside [0, 1], or alpha > 0 without ground truth.
    """
    kind, k = parse_label_form(form)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= gt_weight <= 1.0:
        raise ValueError(f"gt_weight must be in [0, 1], got {gt_weight}")
    p = F.softmax(logits.float() / temperature, dim=1)
    num_classes = p.shape[1]
    if kind == "hard":
        p = F.one_hot(p.argmax(1), num_classes).float()
    elif kind == "topk" and k < num_classes:
        values, idx = p.topk(k, dim=1)
        p = torch.zeros_like(p).scatter_(1, idx, values)
        p = p / p.sum(1, keepdim=True)
    if gt_weight > 0:
        if ground_truth is None:
            raise ValueError("gt_weight > 0 needs the ground-truth labels")
        p = gt_weight * F.one_hot(ground_truth.to(p.device), num_classes).float() + (1 - gt_weight) * p
    return p
