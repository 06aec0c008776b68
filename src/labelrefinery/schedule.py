"""The optimizer and the learning-rate schedule of one fit: ``build_optimizer``, ``LRSchedule``, ``train_scale``."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD (momentum 0.9, Nesterov) over the trainable parameters, with ``cfg.lr`` and ``cfg.weight_decay``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


ONECYCLE_WARMUP = 0.25  # share of all steps spent raising the lr to its peak


class LRSchedule:
    """The learning-rate schedule of ``cfg.lr_schedule``, stepped per batch and per epoch by the loop.

    - ``plateau``: x ``plateau_factor`` after ``plateau_patience_epochs`` epochs without a validation gain,
      never below ``min_lr``;
    - ``onecycle``: Smith & Topin 2019 ("Super-Convergence"), peak ``lr`` after 25% of all steps (with 3 or 4
      steps in all, after the first; with 1 or 2, ``lr`` throughout);
    - ``cosine``: cosine annealing from ``lr`` to 0 over all steps;
    - ``steps``: x ``plateau_factor`` at each epoch in ``lr_steps``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        sched = torch.optim.lr_scheduler
        total = cfg.epochs * steps_per_epoch
        self.kind = cfg.lr_schedule
        if self.kind == "plateau":
            self.scheduler = sched.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.plateau_factor,
                                                     patience=cfg.plateau_patience_epochs, min_lr=cfg.min_lr)
        elif self.kind == "onecycle" and total <= 2:  # no room to warm up and anneal: the peak lr throughout
            self.scheduler = sched.LambdaLR(optimizer, lambda step: 1.0)
        elif self.kind == "onecycle":
            # OneCycleLR ends its warm-up at step warmup * total - 1, which must be > 0 (at 0 it divides by
            # zero): with 4 or fewer steps the warm-up ends after the first step.
            warmup = ONECYCLE_WARMUP if ONECYCLE_WARMUP * total > 1 else 2 / total
            self.scheduler = sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=warmup)
        elif self.kind == "cosine":
            self.scheduler = sched.CosineAnnealingLR(optimizer, T_max=total)
        else:
            self.scheduler = sched.MultiStepLR(optimizer, cfg.lr_steps, gamma=cfg.plateau_factor)
        self.per_batch = self.kind in ("onecycle", "cosine")  # stepped after every batch
        self.optimizer = optimizer
        self.epoch_peak_lr = self.lr

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return float(self.optimizer.param_groups[0]["lr"])

    def start_epoch(self) -> None:
        """Begin tracking :attr:`epoch_peak_lr`, the largest learning rate any step of this epoch uses."""
        self.epoch_peak_lr = self.lr

    def after_batch(self) -> None:
        self.epoch_peak_lr = max(self.epoch_peak_lr, self.lr)
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, val_top1: float) -> None:
        """Step the epoch-wise schedules; ``val_top1`` (validation top-1 in %) drives ``plateau``."""
        if self.kind == "plateau":
            self.scheduler.step(val_top1)
        elif not self.per_batch:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def train_scale(cfg: TrainConfig, epoch: int) -> float:
    """The fraction of the image side that epoch ``epoch`` (0-based) of ``cfg.epochs`` trains at.

    Progressive resizing: the first ``epochs // 2`` epochs grow linearly from ``cfg.train_scale_start`` towards 1
    (``start + (1 - start) * epoch / (epochs // 2)``), the rest are at 1. With start 0.72 and 4 epochs: 0.72,
    0.86, 1, 1.
    """
    ramp = cfg.epochs // 2
    return 1.0 if epoch >= ramp else cfg.train_scale_start + (1 - cfg.train_scale_start) * epoch / ramp

