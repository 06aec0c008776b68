"""Targets: what each training batch is fitted to, and where refined labels come from.

Letters: N images, B batch size, K classes.

Targets are data: ``(N,) int64`` class indices (ground truth) or ``(N, K)
float32`` rows that sum to 1 (refined labels). The training loop asks a
*target source* for each batch's targets and never looks at where they come
from:

- :class:`StoredTargets`: rows indexed like the training images (ground truth,
  or the refined labels an earlier generation made once on fixed views:
  ``labels=offline``, the blog write-up);
- :class:`RefineryTargets`: the frozen refinery's softmax on exactly the
  augmented batch the student sees (``labels=online``, the Label Refinery
  paper's code, Bagherinezhad et al. 2018, arXiv 1805.02641), optionally on
  adversarially jittered images.

Both return :class:`BatchTargets` with the temperature T the loss applies to the
student (:func:`labelrefinery.losses.distillation_loss`); refined labels
themselves are made at T by :func:`refined_labels`, the one place a refinery's
logits become targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .batch import Pipeline
from .config import parse_label_form
from .losses import check_targets, soft_target_cross_entropy
from .noise import noisy_label_posterior


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
    if not temperature > 0:
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


@dataclass(frozen=True)
class LabelRecipe:
    """How refinery logits become targets: temperature T, label form and ground-truth weight alpha.

    Two steps, kept apart so that saved refined labels describe what the refinery said:
    :meth:`refine` (softmax at T, then the form) makes the refined labels a generation stores;
    :meth:`mix` blends them with the ground truth into what the next generation fits. Calling the
    recipe does both: ``(logits (N, K), ground_truth (N,) int64) -> (N, K) float32``
    (:func:`refined_labels` with these settings).
    """

    temperature: float = 1.0
    form: str = "soft"
    gt_weight: float = 0.0

    def refine(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` logits -> ``(N, K) float32`` refined labels at T in this form, without ground truth."""
        return refined_labels(logits, temperature=self.temperature, form=self.form)

    def mix(self, refined: torch.Tensor, ground_truth: torch.Tensor, transition: torch.Tensor | None = None,
            denoise: bool = False) -> torch.Tensor:
        """What the next generation fits: ``(N, K)`` refined labels and ``(N,) int64`` ground truth ->
        ``(N, K) float32``: with a ``(K, K)`` noise ``transition`` matrix the posterior of the true class
        (:func:`noisy_label_posterior`, ``denoise`` when the refinery fitted the given labels), else
        alpha * one_hot(ground_truth) + (1 - alpha) * refined."""
        if transition is not None:
            return noisy_label_posterior(ground_truth, refined, transition, denoise)
        if self.gt_weight == 0:
            return refined
        one_hot = F.one_hot(ground_truth.to(refined.device), refined.shape[1]).float()
        return self.gt_weight * one_hot + (1 - self.gt_weight) * refined

    def __call__(self, logits: torch.Tensor, ground_truth: torch.Tensor | None = None) -> torch.Tensor:
        return refined_labels(logits, temperature=self.temperature, form=self.form, ground_truth=ground_truth,
                              gt_weight=self.gt_weight)


class FrozenRefinery(nn.Module):
    """A trained model used only to make refined labels: eval mode for good, no gradients.

    ``train()`` on this module or on a parent module keeps it in eval mode, so
    its BatchNorm layers always use their running statistics (the pitfall noted
    in the paper's code, where the wrapper's ``train()`` flipped the refinery's
    BatchNorm into batch-statistics mode). Its parameters have
    ``requires_grad=False`` and must not be given to an optimizer.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenRefinery":  # noqa: ARG002 - mode ignored on purpose
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` normalised input -> ``(B, K)`` logits, computed without autograd."""
        with torch.no_grad():
            return self.model(x)


def adversarial_jitter(
    model: nn.Module, refinery: FrozenRefinery, x: torch.Tensor, pipeline: Pipeline, eps: float
) -> torch.Tensor:
    """One-step gradient-sign perturbation of ``x`` that most increases the student's disagreement with the refinery.

    x' = clip(x + eps * sign(grad_x CE(student(x), softmax(refinery(x)))), 0, 1): our reading of the
    Label Refinery paper's "adversarial jittering" (Bagherinezhad et al. 2018, arXiv 1805.02641),
    in the fast-gradient-sign form of Goodfellow et al. 2015. The student is evaluated in eval mode
    (BatchNorm on its running statistics), so a jittered subset of any size, one image included, neither
    fails in BatchNorm nor moves its statistics; its train/eval mode is restored afterwards.

    Args:
        x: ``(B, C, H, W) float32`` in [0, 1] pixel units.
        eps: step in [0, 1] pixel units.

    Returns:
        ``(B, C, H, W) float32`` in [0, 1], detached.
    """
    x = x.detach().requires_grad_(True)
    with torch.no_grad():
        target = torch.softmax(refinery(pipeline.normalize(x.detach())).float(), 1)
    was_training = model.training
    model.eval()  # BatchNorm on running statistics: the subset (maybe one image) must not move them
    try:
        with pipeline.autocast():
            logits = model(pipeline.normalize(x))
        loss = soft_target_cross_entropy(logits, target, check=False)
        (grad,) = torch.autograd.grad(loss, x)
    finally:
        model.train(was_training)
    return (x + eps * grad.sign()).clamp_(0, 1).detach()


@dataclass
class BatchTargets:
    """One batch as the loss sees it.

    Attributes:
        images: ``(B, C, H, W) float32`` in [0, 1]: the student's input (jittered where chosen).
        targets: ``(B,) int64`` class indices or ``(B, K) float32`` probability rows.
        temperature: T the loss applies to the student's logits (1 for class indices).
    """

    images: torch.Tensor
    targets: torch.Tensor
    temperature: float


class TargetSource(Protocol):
    """What the training loop asks for each batch's targets."""

    def for_batch(self, index: torch.Tensor, images: torch.Tensor, student: nn.Module, pipeline: Pipeline,
                  generator: torch.Generator) -> BatchTargets:
        """Targets of the training images at ``index: (B,) int64``, whose augmented pixels are ``images``."""
        ...

    def subset(self, positions: torch.Tensor) -> "TargetSource":
        """The same source for the training images at ``positions: (S,) int64``, indexed 0..S-1."""
        ...


class StoredTargets:
    """Targets stored as data, indexed like the training images.

    Args:
        rows: ``(N,) int64`` class indices or ``(N, K) float32`` probability rows, on the training device.
        temperature: T of soft rows (class indices are always used at T = 1).
        num_classes: K, needed to check class indices (soft rows give it themselves).

    Raises:
        ValueError: rows that are not class indices in [0, K) or probability rows.
    """

    def __init__(self, rows: torch.Tensor, temperature: float = 1.0, num_classes: int | None = None):
        if rows.ndim == 2:
            num_classes = rows.shape[1]
        elif num_classes is None:
            num_classes = int(rows.max()) + 1 if len(rows) else 1
        check_targets(torch.empty(len(rows), num_classes), rows)
        self.rows, self.num_classes = rows, num_classes
        self.temperature = float(temperature) if rows.is_floating_point() else 1.0

    def for_batch(self, index, images, student, pipeline, generator) -> BatchTargets:
        return BatchTargets(images, self.rows[index], self.temperature)

    def subset(self, positions: torch.Tensor) -> "StoredTargets":
        return StoredTargets(self.rows[positions.to(self.rows.device)], self.temperature,
                             num_classes=None if self.rows.ndim == 2 else self.num_classes)


class RefineryTargets:
    """The frozen refinery labels exactly the augmented batch the student sees (per-crop labels).

    With ``jitter_prob`` P > 0, each image is first replaced with probability P by its
    :func:`adversarial_jitter` (step ``jitter_eps`` in [0, 1] pixel units), drawn from the epoch's generator.

    Args:
        refinery: the frozen previous generation (or an external model).
        recipe: turns its logits into targets (must have ``temperature``), e.g. :class:`LabelRecipe`.
        ground_truth: ``(N,) int64`` labels on the device, indexed like the images (for the recipe's alpha).
    """

    def __init__(self, refinery: FrozenRefinery, recipe: LabelRecipe, ground_truth: torch.Tensor,
                 jitter_prob: float = 0.0, jitter_eps: float = 1.0 / 255):
        self.refinery, self.recipe, self.ground_truth = refinery, recipe, ground_truth
        self.jitter_prob, self.jitter_eps = jitter_prob, jitter_eps
        self.temperature = float(recipe.temperature)

    def for_batch(self, index, images, student, pipeline, generator) -> BatchTargets:
        x = images
        if self.jitter_prob > 0:
            chosen = (torch.rand(len(index), generator=generator) < self.jitter_prob).to(x.device)
            if chosen.any():
                x = x.clone()
                x[chosen] = adversarial_jitter(student, self.refinery, x[chosen], pipeline, self.jitter_eps)
        with torch.inference_mode(), pipeline.autocast():
            refinery_logits = self.refinery(pipeline.normalize(x))
        # Inference tensors cannot take part in autograd: the targets are cloned out of inference mode.
        targets = self.recipe(refinery_logits.float(), self.ground_truth[index]).clone()
        return BatchTargets(x, targets, self.temperature)

    def subset(self, positions: torch.Tensor) -> "RefineryTargets":
        return RefineryTargets(self.refinery, self.recipe, self.ground_truth[positions.to(self.ground_truth.device)],
                               self.jitter_prob, self.jitter_eps)
