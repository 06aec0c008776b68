"""The training engine: ``train_one_epoch`` and ``fit`` (inference in :mod:`.inference`, optimizer and
learning-rate schedule in :mod:`.schedule`; their names are importable from here too).

Letters: N images, B batch size, C channels, H x W pixels, K classes.

The training images live on the training device as ``(N, C, H, W) uint8``, or stay files decoded per batch by
worker processes (a streamed image folder, :class:`~labelrefinery.data.files.ImageFiles`); both are read through
:func:`~labelrefinery.data.files.read_batches`. Each step takes a slice of one index permutation, converts that batch
to float on the device, augments it with per-sample parameters (batched, see :mod:`labelrefinery.augment`), asks the
target source for the batch's targets (:mod:`labelrefinery.targets`: stored rows indexed by the same permutation, or
a frozen refinery labelling exactly the augmented batch), mixes pairs of images and targets where ``--mixup`` asks,
normalises in channels_last layout and runs the model under autocast. The loop is the same whatever the targets are.

What a fit trains on (:class:`TrainData`), how (:class:`TrainSetup`) and what it does besides training
(:class:`FitHooks`) are three frozen dataclasses; one epoch's steps are an :class:`EpochSteps` and its bar an
:class:`EpochBar`.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .augment import Mixup
from .batch import Pipeline, num_batches, rescale
from .config import TrainConfig
from .console import ChainClock, format_duration, interactive, log as log_line, progress_bar
from .data.files import read_batches
from .errors import DivergedError
from .dist import all_reduce_sum, process_info, wrap
from .inference import evaluate, recalibrate_batchnorm, recalibration_subset
from .losses import distillation_kl, distillation_loss, smooth_targets
from .schedule import LRSchedule, build_optimizer, train_scale
from .seeding import epoch_generator, rank_generator
from .targets import TargetSource


# --------------------------------------------------------------------------- what, how, side effects


@dataclass(frozen=True)
class TrainData:
    """What a fit trains on and is judged by.

    Attributes:
        images: ``(N, C, H, W) uint8`` training images, ideally already on the device (or streamed
            :class:`~labelrefinery.data.files.ImageFiles`).
        targets: a target source (:class:`~labelrefinery.targets.StoredTargets`,
            :class:`~labelrefinery.targets.RefineryTargets`) indexed like ``images``.
        val_images: ``(M, C, H, W) uint8`` validation images (never augmented); :func:`fit` needs them.
        val_labels: ``(M,) int64`` ground-truth labels of ``val_images``.
    """

    images: torch.Tensor
    targets: TargetSource
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None


@dataclass(frozen=True)
class TrainSetup:
    """How a fit trains.

    Attributes:
        cfg: epochs, batch size, optimizer, schedule, patience.
        pipeline: device, normalisation and precision.
        seed_keys: integers identifying this fit (e.g. seed, generation).
        augment: batched augmentation or None (see :attr:`EpochSteps.augment`).
        compile: train through ``torch.compile``.
        sync_bn: under torchrun, BatchNorm statistics over the global batch while training
            (``torch.nn.SyncBatchNorm``; CUDA only).
    """

    cfg: TrainConfig
    pipeline: Pipeline
    seed_keys: tuple[int, ...]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    compile: bool = False
    sync_bn: bool = False


@dataclass(frozen=True)
class FitHooks:
    """What a fit does besides training.

    Attributes:
        state_file: a resume file with ``load(device) -> dict | None`` and ``save(dict)``
            (:class:`labelrefinery.rundir.TrainStateFile`), or None.
        log: called with one metrics dict per epoch.
        progress: a progress bar per epoch on a terminal; elsewhere (a log file) one plain line per epoch.
        desc: the fit's name on its bars and lines (e.g. ``"seed 0 R2"``).
        clock: the run's :class:`~labelrefinery.console.ChainClock`: told of every epoch, its ETA shown on the
            bar and in the plain per-epoch lines.
    """

    state_file: object = None
    log: Callable[[dict], None] | None = None
    progress: bool = False
    desc: str = ""
    clock: ChainClock | None = None


@dataclass(frozen=True)
class EpochSteps:
    """How every step of one :func:`train_one_epoch` goes.

    Attributes:
        batch_size: B.
        generator: CPU generator for the permutation, augmentation and jitter draws.
        augment: batched ``(x, generator) -> x`` on [0, 1] floats; or one with ``draw``/``apply``
            (:class:`~labelrefinery.augment.RandomResizedCrop`), whose views are drawn for the whole epoch
            first and cut as the images are read (:func:`~labelrefinery.data.files.read_batches`); or None.
        schedule: its ``after_batch`` is called after every step.
        grad_scaler: for fp16.
        label_smoothing: epsilon applied to every batch's targets (:func:`~labelrefinery.losses.smooth_targets`).
        input_scale: every augmented batch is resized to this fraction of its side (:func:`~labelrefinery.batch.
            rescale`) before its targets are made and the student sees it (progressive resizing; 1 = as it is).
        mixup: alpha of :class:`~labelrefinery.augment.Mixup` after the targets are made (0 = off).
    """

    batch_size: int
    generator: torch.Generator
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    schedule: LRSchedule | None = None
    grad_scaler: torch.amp.GradScaler | None = None
    label_smoothing: float = 0.0
    input_scale: float = 1.0
    mixup: float = 0.0


@dataclass(frozen=True)
class EpochBar:
    """The progress bar of one :func:`train_one_epoch`: shown (with loss, accuracy and images/s) when
    ``progress``, titled ``desc``, with the more fields of ``info`` (e.g. the last validation top-1, the lr,
    the chain's ETA)."""

    progress: bool = False
    desc: str = ""
    info: dict[str, str] | None = None


# --------------------------------------------------------------------------- training


def _optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                    grad_scaler: torch.amp.GradScaler | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        loss.backward()
        optimizer.step()


def _epoch_plan(images, steps: EpochSteps) -> tuple[list[torch.Tensor], torch.Generator, object, list | None]:
    """``(order, draws, cut, views)`` of one epoch: each step's indices, the stream augmentation and jitter draw
    from, the view-cutting augmentation (or None) and its views drawn for the whole epoch (or None)."""
    info = process_info()
    batch_size = steps.batch_size
    perm = torch.randperm(len(images), generator=steps.generator).to(images.device)  # same on every process
    count = num_batches(len(images), batch_size, info.world_size)
    # Each global batch of the epoch is split over the processes (this one takes every world_size-th image);
    # augmentation and jitter draw from this process's own stream (the epoch's stream itself at world size 1).
    order = [perm[b * batch_size : (b + 1) * batch_size][info.rank :: info.world_size] for b in range(count)]
    draws = steps.generator if info.world_size == 1 else rank_generator(steps.generator, info.rank)
    # An augmentation that cuts views (random resized crops) draws them all now and cuts them as the images are
    # read (for files, in the decoding workers); any other one runs on each [0, 1] batch on the device.
    cut = steps.augment if hasattr(steps.augment, "draw") else None
    views = None if cut is None else [cut.draw(len(idx), *images.shape[2:], draws) for idx in order]
    return order, draws, cut, views


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch, steps: EpochSteps,
                pipeline: Pipeline, n: int, mix: Mixup | None) -> torch.Tensor:
    """One optimizer step on ``batch`` (its images and targets, mixed by ``mix``) of ``n`` images; returns
    ``(3,) float64``: the batch's summed loss, summed KL and correct count (against each image's own targets)."""
    with pipeline.autocast():
        logits = model(pipeline.normalize(batch.images if mix is None else mix.images(batch.images)))
    logits = logits.float()
    fitted = smooth_targets(batch.targets, logits.shape[1], steps.label_smoothing)
    loss_to = functools.partial(distillation_loss, logits, temperature=batch.temperature, check=False)  # checked
    loss = loss_to(fitted) if mix is None else mix.loss(loss_to, fitted)
    _optimizer_step(loss, optimizer, steps.grad_scaler)
    if steps.schedule is not None:
        steps.schedule.after_batch()
    with torch.no_grad():
        t = batch.targets
        hard = t.argmax(1) if t.is_floating_point() else t
        kl = distillation_kl(logits, t, batch.temperature, check=False)
        return torch.stack([loss.detach().double() * n, kl.double() * n, (logits.argmax(1) == hard).sum().double()])


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: TrainData, pipeline: Pipeline,
                    steps: EpochSteps, bar: EpochBar | None = None) -> dict[str, float]:
    """One pass over ``data.images`` in a random order, the loss :func:`~labelrefinery.losses.distillation_loss`.

    Args:
        model: the student, trained in place.
        optimizer: its optimizer.
        data: the images and their target source (its validation fields are not read here).
        pipeline: device, normalisation, precision.
        steps: batch size, generator, augmentation, schedule, grad scaler, label smoothing, input scale.
        bar: the progress bar (default: none).

    Returns:
        dict with ``train_loss`` (the loss, nats), ``train_kl`` (KL divergence to
        the targets, nats), ``train_top1`` (%, against the targets' argmax),
        ``images_per_s`` and ``epoch_time_s`` (seconds of training; :func:`fit` adds ``eval_time_s``,
        the seconds of BatchNorm recalibration and validation after it).
    """
    bar = bar or EpochBar()
    model.train()
    images, n, world = data.images, len(data.images), process_info().world_size
    order, draws, cut, views = _epoch_plan(images, steps)
    student = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # for jitter
    totals = torch.zeros(3, dtype=torch.float64, device=pipeline.device)  # loss, kl, correct (summed on the device)
    seen = 0
    start = time.perf_counter()
    shown = progress_bar(n, bar.desc, bar.progress)
    for b, raw in enumerate(read_batches(images, order, views, cut)):
        idx = order[b].to(pipeline.device, non_blocking=True)
        x = pipeline.to_unit(raw)
        if steps.augment is not None and cut is None:
            x = steps.augment(x, draws)
        x = rescale(x, steps.input_scale)
        batch = data.targets.for_batch(idx, x, student, pipeline, draws)
        mix = Mixup.draw(len(idx), steps.mixup, draws, x.device) if steps.mixup > 0 else None
        totals += _train_step(model, optimizer, batch, steps, pipeline, len(idx), mix)
        seen += len(idx)
        shown.update(len(idx) * world)  # the bar (rank 0's) counts every process's images
        if not shown.disable and (b % 10 == 0 or b == len(order) - 1):
            t_loss, _, correct = totals.tolist()
            shown.set_postfix(loss=f"{t_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                              img_s=f"{seen * world / (time.perf_counter() - start):.0f}", **(bar.info or {}))
    shown.close()
    counted = all_reduce_sum(torch.cat([totals, torch.tensor([float(seen)], dtype=torch.float64,
                                                              device=totals.device)]))
    t_loss, t_kl, correct, seen = counted.tolist()  # over every process
    elapsed = time.perf_counter() - start
    return {"train_loss": t_loss / seen, "train_kl": t_kl / seen, "train_top1": 100.0 * correct / seen,
            "images_per_s": seen / elapsed, "epoch_time_s": elapsed}


@dataclass
class FitResult:
    """Outcome of :func:`fit`: best validation top-1 (%), the epoch it came from (0-based), epochs run."""

    best_val_top1: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool


@dataclass
class _Progress:
    """What :func:`fit` carries from epoch to epoch (and through a resume file)."""

    best_weights: dict[str, torch.Tensor]
    best_top1: float = -math.inf
    best_epoch: int = -1
    since_best: int = 0
    next_epoch: int = 0

    def update(self, model: nn.Module, epoch: int, val_top1: float, min_delta: float) -> None:
        """Track the best epoch (any gain) and the epochs since the last gain larger than ``min_delta`` points."""
        improved = val_top1 > self.best_top1 + min_delta
        if val_top1 > self.best_top1:
            self.best_top1, self.best_epoch = val_top1, epoch
            self.best_weights = _state_dict_copy(model)
        self.since_best = 0 if improved else self.since_best + 1
        self.next_epoch = epoch + 1


def _state_dict_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _strip_compile_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys saved from a ``torch.compile`` wrapper (``_orig_mod.``) as the plain module names them."""
    prefix = "_orig_mod."
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _resume(state_file, model: nn.Module, optimizer, schedule: LRSchedule, device) -> _Progress:
    state = state_file.load(device) if state_file is not None else None
    if state is None:
        return _Progress(_state_dict_copy(model))
    model.load_state_dict(_strip_compile_prefix(state["model"]))
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["scheduler"])
    return _Progress(_strip_compile_prefix(state["best_model"]), float(state["best_top1"]), int(state["best_epoch"]),
                     int(state["since_best"]), int(state["epoch"]) + 1)


def _warn_if_resized(desc: str, epoch: int, scale: float, cfg: TrainConfig) -> None:
    """Warn when early stopping ends a fit at 0-based ``epoch`` while it still trains at ``scale`` < 1."""
    if scale < 1:
        log_line(f"warning: {desc.strip() or 'training'} stopped early at epoch {epoch + 1} while still training on "
                 f"images resized to {scale:.2f} of their side (--train-scale-start reaches full size at epoch "
                 f"{cfg.epochs // 2 + 1}); its model never trained at the size it is evaluated at: raise "
                 "--early-stop-patience-epochs or use --train-scale-start 1")


def _log_epoch_line(desc: str, epoch: int, epochs: int, stats: dict, val_top1: float, peak_lr: float,
                    clock: ChainClock | None) -> None:
    """The plain line a log file gets for a finished epoch: loss, KL, top-1, the epoch's peak lr, speed, ETA."""
    left = (epochs - epoch - 1) * (stats["epoch_time_s"] + stats["eval_time_s"])
    eta = f"about {format_duration(left)} left in this fit" + ("" if clock is None else f", {clock.eta_text()}")
    log_line(f"{desc} epoch {epoch + 1}/{epochs}: loss {stats['train_loss']:.4f}, KL {stats['train_kl']:.4f}, "
             f"train {stats['train_top1']:.2f}%, val {val_top1:.2f}%, peak lr {peak_lr:.3g}, "
             f"{stats['images_per_s']:.0f} images/s, {eta}")


@dataclass
class _Fit:
    """One fit under way: its model (and the wrapper it trains through), optimizer, schedule, progress."""

    model: nn.Module
    trainee: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    grad_scaler: torch.amp.GradScaler | None
    run: _Progress
    data: TrainData
    setup: TrainSetup
    hooks: FitHooks

    @classmethod
    def start(cls, model: nn.Module, data: TrainData, setup: TrainSetup, hooks: FitHooks) -> "_Fit":
        """The optimizer, schedule and grad scaler of a new fit, resumed from ``hooks.state_file`` if it holds one."""
        pipeline, cfg = setup.pipeline, setup.cfg
        trainee = wrap(model, pipeline.device, setup.sync_bn)  # DistributedDataParallel under torchrun; shares params
        trainee = torch.compile(trainee) if setup.compile else trainee
        optimizer = build_optimizer(model, cfg)
        schedule = LRSchedule(optimizer, cfg, num_batches(len(data.images), cfg.batch_size, process_info().world_size))
        grad_scaler = torch.amp.GradScaler(pipeline.device.type) if pipeline.amp_dtype == torch.float16 else None
        run = _resume(hooks.state_file, model, optimizer, schedule, pipeline.device)
        return cls(model, trainee, optimizer, schedule, grad_scaler, run, data, setup, hooks)

    def train(self, epoch: int, scale: float, last_val: float | None) -> dict[str, float]:
        """Train epoch ``epoch`` at ``scale`` of the image side; its :func:`train_one_epoch` stats."""
        cfg, clock = self.setup.cfg, self.hooks.clock
        info = {"lr": f"{self.schedule.lr:.2g}", **({} if last_val is None else {"val": f"{last_val:.2f}"}),
                **({} if clock is None else {"eta": clock.eta_text().removeprefix("chain ETA ")})}
        steps = EpochSteps(cfg.batch_size, epoch_generator(self.setup.seed_keys, epoch), self.setup.augment,
                           self.schedule, self.grad_scaler, cfg.label_smoothing, scale, cfg.mixup)
        bar = EpochBar(self.hooks.progress, f"{self.hooks.desc} epoch {epoch + 1}/{cfg.epochs}", info)
        stats = train_one_epoch(self.trainee, self.optimizer, self.data, self.setup.pipeline, steps, bar)
        if not math.isfinite(stats["train_loss"]):  # weights are NaN now: stop before they become refined labels
            raise DivergedError(f"{self.hooks.desc.strip() or 'training'}: the training loss became "
                                f"{stats['train_loss']} in epoch {epoch + 1} (at {scale:g} of the image side); lower "
                                "--lr, use --precision fp32, or a larger --train-scale-start; finished generations "
                                "are kept")
        return stats

    def validate(self, stats: dict[str, float]) -> dict[str, float]:
        """Validation top-1 and loss after an epoch (BatchNorm recalibrated first with ``cfg.recalibrate_bn``);
        adds ``eval_time_s`` to ``stats``."""
        pipeline, data = self.setup.pipeline, self.data
        eval_start = time.perf_counter()
        if self.setup.cfg.recalibrate_bn:
            # Running statistics lag behind in short runs; validation (and so best-epoch choice, plateau and
            # early stopping) would judge a miscalibrated model. Only eval-mode behaviour changes.
            recalibrate_batchnorm(self.model, recalibration_subset(data.images), pipeline)
        val = evaluate(self.model, data.val_images, data.val_labels, pipeline)
        stats["eval_time_s"] = time.perf_counter() - eval_start
        return val

    def record(self, epoch: int, lr: float, scale: float, stats: dict[str, float], val: dict[str, float]) -> None:
        """After an epoch: the clock, the schedule, the best epoch, the metrics log, the plain line, the state file."""
        cfg, hooks, schedule, run = self.setup.cfg, self.hooks, self.schedule, self.run
        if hooks.clock is not None:
            hooks.clock.epoch_done(stats["epoch_time_s"] + stats["eval_time_s"])
        schedule.after_epoch(val["top1"])
        run.update(self.model, epoch, val["top1"], cfg.early_stop_min_delta)
        if hooks.log is not None:
            hooks.log({"epoch": epoch + 1, "lr": lr, "lr_peak": schedule.epoch_peak_lr, "train_scale": scale, **stats,
                       "val_top1": val["top1"], "val_loss": val["loss"]})
        if hooks.progress and not interactive():  # a log file: one plain line per epoch instead of a bar
            _log_epoch_line(hooks.desc, epoch, cfg.epochs, stats, val["top1"], schedule.epoch_peak_lr, hooks.clock)
        if hooks.state_file is not None:
            hooks.state_file.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                   "scheduler": schedule.state_dict(), "best_model": run.best_weights,
                                   "best_top1": run.best_top1, "best_epoch": run.best_epoch,
                                   "since_best": run.since_best, "epoch": epoch})


def fit(model: nn.Module, data: TrainData, setup: TrainSetup, hooks: FitHooks | None = None) -> FitResult:
    """Train ``model`` for up to ``setup.cfg.epochs`` epochs, tracking validation top-1 accuracy.

    Learning-rate schedule per :class:`LRSchedule`; the side of the training images per :func:`train_scale`
    (progressive resizing; validation at full size); early stopping when
    validation top-1 has not improved by more than ``cfg.early_stop_min_delta``
    points for ``cfg.early_stop_patience_epochs`` epochs (0 = never); at the end
    the best-validation weights are restored when ``cfg.restore_best``. With
    ``cfg.recalibrate_bn`` the BatchNorm statistics are recomputed over every
    ``N // RECALIBRATION_IMAGES``-th training image (all N below 8,192; otherwise
    between 4,096 and 8,191 images) before each
    validation (see :func:`recalibrate_batchnorm`), so the best epoch, the plateau
    schedule and early stopping judge a calibrated model.

    Every epoch is seeded from ``setup.seed_keys`` and the epoch
    (:func:`labelrefinery.seeding.epoch_generator`) and, when ``hooks.state_file`` is
    given, the whole training state (weights, optimizer, schedule, best weights,
    counters) is saved there after each epoch. If it holds a state at the start,
    training resumes after its last epoch and reaches the same result as an
    uninterrupted run. States hold the plain module's names, with or without
    ``setup.compile``.

    Args:
        model: the student, on ``setup.pipeline.device``, trained in place.
        data: training images and targets, validation images and labels (:class:`TrainData`).
        setup: settings, pipeline, seed keys, augmentation, compile and SyncBatchNorm flags (:class:`TrainSetup`).
        hooks: resume file, metrics log, progress, name, clock (:class:`FitHooks`; default: none of them).

    Returns:
        :class:`FitResult`.
    """
    hooks = hooks or FitHooks()
    cfg = setup.cfg
    fitting = _Fit.start(model, data, setup, hooks)
    run = fitting.run
    patience = cfg.early_stop_patience_epochs
    stopped_early = bool(patience) and run.since_best >= patience
    epoch = run.next_epoch - 1
    last_val = None
    for epoch in range(run.next_epoch, cfg.epochs if not stopped_early else 0):
        lr, scale = fitting.schedule.lr, train_scale(cfg, epoch)
        fitting.schedule.start_epoch()
        stats = fitting.train(epoch, scale, last_val)
        val = fitting.validate(stats)
        last_val = val["top1"]
        fitting.record(epoch, lr, scale, stats, val)
        if patience and run.since_best >= patience:
            stopped_early = True
            _warn_if_resized(hooks.desc, epoch, scale, cfg)
            break
    if hooks.clock is not None and stopped_early:
        hooks.clock.skip(cfg.epochs - (epoch + 1))
    if cfg.restore_best:
        model.load_state_dict(run.best_weights)
    return FitResult(run.best_top1, run.best_epoch, max(epoch + 1, 0), stopped_early)
