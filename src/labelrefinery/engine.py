"""The training engine: ``predict``, ``evaluate``, ``recalibrate_batchnorm``, ``train_one_epoch``, ``fit``.

Letters: N images, B batch size, C channels, H x W pixels, K classes.

The training images live on the training device as ``(N, C, H, W) uint8``, or
stay files decoded per batch by worker processes (a streamed image folder,
:class:`~labelrefinery.data.files.ImageFiles`); both are read through
:func:`~labelrefinery.data.files.read_batches`. Each step takes a slice of one
index permutation, converts that batch to float
on the device, augments it with per-sample parameters (batched, see
:mod:`labelrefinery.augment`), asks the target source for the batch's targets
(:mod:`labelrefinery.targets`: stored rows indexed by the same permutation, or
a frozen refinery labelling exactly the augmented batch), normalises in
channels_last layout and runs the model under autocast. The loop is the same
whatever the targets are.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .batch import Pipeline, num_batches, rescale
from .config import TrainConfig
from .console import ChainClock, format_duration, interactive, log as log_line, progress_bar
from .data.files import read_batches
from .errors import DivergedError
from .dist import all_reduce_sum, broadcast_buffers, gather_rows, process_info, shard, wrap
from .losses import distillation_kl, distillation_loss, smooth_targets, soft_target_cross_entropy
from .seeding import epoch_generator, rank_generator
from .targets import TargetSource

RECALIBRATION_IMAGES = 4096  # each epoch's BatchNorm statistics use every (N // 4096)-th training image


# --------------------------------------------------------------------------- inference


def prediction_batch_size(device: torch.device) -> int:
    """Images per forward pass of :func:`predict`: 128 on a CPU, 1024 elsewhere.

    On a 2-core CPU ``convnet`` predicts 1.8-2.0x faster in batches of 128 than of 1024 (a batch's activations
    stay in cache): 4468 against 2484 images/s on AVX2 fp32 kernels, 12634 against 6478 in bf16 on AVX512-BF16
    (a 2-core AMD EPYC with avx2 avx512_bf16 avx512f; ``benchmarks/predict_batch.py``, BENCHMARKS.md).
    """
    return 128 if device.type == "cpu" else 1024


def predict(model: nn.Module, images: torch.Tensor, pipeline: Pipeline, batch_size: int | None = None) -> torch.Tensor:
    """Logits of ``model`` on ``images`` in dataset order, through ``pipeline.eval_view``.

    Args:
        model: classifier; put in eval mode here (and left so).
        images: ``(N, C, H, W) uint8`` on any device.
        pipeline: device, normalisation, evaluation view and precision.
        batch_size: images per forward pass (None: :func:`prediction_batch_size`).

    Returns:
        ``(N, K) float32`` logits on the CPU, in dataset order. Under torchrun each process predicts its
        contiguous share (:func:`~labelrefinery.dist.shard`) and the shares are gathered back
        (:func:`~labelrefinery.dist.gather_rows`): one row per image, no padding, equal on every process.
    """
    model.eval()
    batch_size = batch_size or prediction_batch_size(pipeline.device)
    start, end = shard(len(images))  # with several processes each predicts its share; gathered in order below
    out = []
    with torch.inference_mode():
        for x in pipeline.eval_batches(images[start:end], batch_size):
            with pipeline.autocast():
                logits = model(x)
            out.append(logits.float().cpu())
    local = torch.cat(out) if out else torch.empty(0, 0)
    if process_info().world_size > 1:  # gathered where the processes talk: the CPU (gloo) or the GPU (NCCL)
        local = gather_rows(_with_width(local, model, images, pipeline).to(pipeline.device), len(images)).cpu()
    return local


def _with_width(local: torch.Tensor, model: nn.Module, images, pipeline: Pipeline) -> torch.Tensor:
    """``local`` logits, or for an empty shard a ``(0, K)`` tensor with the model's K (every process gathers
    the same width)."""
    if len(local):
        return local
    return torch.empty(0, predict_width(model, images, pipeline))


def predict_width(model: nn.Module, images, pipeline: Pipeline) -> int:
    """K, the number of logits ``model`` gives (one image run through it)."""
    with torch.inference_mode(), pipeline.autocast():
        return int(model(next(pipeline.eval_batches(images[:2], 2))).shape[1])


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, pipeline: Pipeline, batch_size: int = 1024) -> None:
    """Recompute every BatchNorm layer's running mean and variance over ``images`` (precise BatchNorm).

    With few training steps the running statistics (an exponential average with
    momentum 0.1) lag far behind the weights, so the model is badly calibrated in
    eval mode: its softmax is nearly uniform and refined labels made from it
    carry little signal, which makes later generations collapse. One pass in
    train mode without gradients, averaging over all batches
    (``torch.optim.swa_utils.update_bn``; Wu & Johnson 2021, "Rethinking 'Batch'
    in BatchNorm", the "precise BN" statistics), fixes the statistics. Weights are unchanged. Under torchrun
    every process runs the same pass (the subset is a few thousand images) and then takes rank 0's statistics,
    so all hold identical ones and make identical refined labels.

    Args:
        model: trained in place (its BatchNorm buffers only); left in eval mode.
        images: ``(N, C, H, W) uint8`` training images, un-augmented.
        pipeline: device, normalisation, precision.
        batch_size: images per forward pass.
    """
    from torch.optim.swa_utils import update_bn

    with torch.no_grad(), pipeline.autocast():
        update_bn(pipeline.eval_batches(images, batch_size), model)
    broadcast_buffers(model)  # with several processes: every process holds rank 0's statistics
    model.eval()


def recalibration_subset(images: torch.Tensor) -> torch.Tensor:
    """Every ``(N // RECALIBRATION_IMAGES)``-th of ``images: (N, C, H, W)``: all N below 8,192, else 4,096-8,191.

    Precise-BatchNorm statistics (Wu & Johnson 2021) need a few thousand images, not the whole set:
    ``benchmarks/step_settings.py --recalibration`` measured test top-1 88.38% after recalibrating a
    one-epoch ``convnet`` on this subset (4,250 of 51,000 Fashion-MNIST images, 1.0 s in fp32 on AVX2
    kernels of a 2-core avx2 avx512f avx512_bf16 CPU) and 88.40% on every image (16.3 s) (BENCHMARKS.md).
    """
    return images[:: max(1, len(images) // RECALIBRATION_IMAGES)]


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of ``logits: (N, K)`` (or probabilities) against ``labels: (N,) int64``:
    ``100 * correct / N`` exactly (no float32 rounding of the share)."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * int((logits.argmax(1).cpu() == labels.cpu()).sum()) / len(labels)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, pipeline: Pipeline,
             batch_size: int | None = None) -> dict[str, float]:
    """``{"top1": %, "loss": mean cross-entropy in nats}`` of ``model`` on ``(N, C, H, W) uint8`` images
    against ``labels: (N,) int64``."""
    logits = predict(model, images, pipeline, batch_size)
    return {
        "top1": top1_accuracy(logits, labels),
        "loss": soft_target_cross_entropy(logits, labels.cpu()).item(),
    }


# --------------------------------------------------------------------------- optimizer and schedule


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


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: TargetSource,
    pipeline: Pipeline,
    *,
    batch_size: int,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    schedule: LRSchedule | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    label_smoothing: float = 0.0,
    input_scale: float = 1.0,
    progress: bool = False,
    desc: str = "",
    bar_info: dict[str, str] | None = None,
) -> dict[str, float]:
    """One pass over ``images`` in a random order, the loss :func:`~labelrefinery.losses.distillation_loss`.

    Args:
        model: the student, trained in place.
        optimizer: its optimizer.
        images: ``(N, C, H, W) uint8`` training images, ideally already on the device.
        targets: a target source (:class:`~labelrefinery.targets.StoredTargets`,
            :class:`~labelrefinery.targets.RefineryTargets`) indexed like ``images``.
        pipeline: device, normalisation, precision.
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
        progress: show a tqdm bar with loss, accuracy and images/s.
        bar_info: more fields for the bar (e.g. the last validation top-1, the lr, the chain's ETA).

    Returns:
        dict with ``train_loss`` (the loss, nats), ``train_kl`` (KL divergence to
        the targets, nats), ``train_top1`` (%, against the targets' argmax),
        ``images_per_s`` and ``epoch_time_s`` (seconds of training; :func:`fit` adds ``eval_time_s``,
        the seconds of BatchNorm recalibration and validation after it).
    """
    model.train()
    n = len(images)
    info = process_info()
    perm = torch.randperm(n, generator=generator).to(images.device)  # the same on every process; moved once
    steps = num_batches(n, batch_size, info.world_size)
    # Each global batch of the epoch is split over the processes (this one takes every world_size-th image);
    # augmentation and jitter draw from this process's own stream (the epoch's stream itself at world size 1).
    order = [perm[b * batch_size : (b + 1) * batch_size][info.rank :: info.world_size] for b in range(steps)]
    draws = generator if info.world_size == 1 else rank_generator(generator, info.rank)
    # An augmentation that cuts views (random resized crops) draws them all now and cuts them as the images are
    # read (for files, in the decoding workers); any other one runs on each [0, 1] batch on the device.
    student = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # for jitter
    cut = augment if hasattr(augment, "draw") else None
    views = None if cut is None else [cut.draw(len(idx), *images.shape[2:], draws) for idx in order]
    totals = torch.zeros(3, dtype=torch.float64, device=pipeline.device)  # loss, kl, correct (summed on the device)
    seen = 0
    start = time.perf_counter()
    bar = progress_bar(n, desc, progress)
    for b, raw in enumerate(read_batches(images, order, views, cut)):
        idx = order[b].to(pipeline.device, non_blocking=True)
        x = pipeline.to_unit(raw)
        if augment is not None and cut is None:
            x = augment(x, draws)
        x = rescale(x, input_scale)
        batch = targets.for_batch(idx, x, student, pipeline, draws)
        with pipeline.autocast():
            logits = model(pipeline.normalize(batch.images))
        logits = logits.float()
        fitted = smooth_targets(batch.targets, logits.shape[1], label_smoothing)
        loss = distillation_loss(logits, fitted, batch.temperature, check=False)  # sources are checked
        _optimizer_step(loss, optimizer, grad_scaler)
        if schedule is not None:
            schedule.after_batch()
        with torch.no_grad():
            t = batch.targets
            hard = t.argmax(1) if t.is_floating_point() else t
            kl = distillation_kl(logits, t, batch.temperature, check=False)
            totals += torch.stack([loss.detach().double() * len(idx), kl.double() * len(idx),
                                   (logits.argmax(1) == hard).sum().double()])
        seen += len(idx)
        bar.update(len(idx) * info.world_size)  # the bar (rank 0's) counts every process's images
        if not bar.disable and (b % 10 == 0 or b == steps - 1):
            t_loss, _, correct = totals.tolist()
            bar.set_postfix(loss=f"{t_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                            img_s=f"{seen * info.world_size / (time.perf_counter() - start):.0f}",
                            **(bar_info or {}))
    bar.close()
    counted = all_reduce_sum(torch.cat([totals, torch.tensor([float(seen)], dtype=torch.float64,
                                                              device=totals.device)]))
    t_loss, t_kl, correct, seen = counted.tolist()  # over every process
    elapsed = time.perf_counter() - start
    return {"train_loss": t_loss / seen, "train_kl": t_kl / seen, "train_top1": 100.0 * correct / seen,
            "images_per_s": seen / elapsed, "epoch_time_s": elapsed}


def train_scale(cfg: TrainConfig, epoch: int) -> float:
    """The fraction of the image side that epoch ``epoch`` (0-based) of ``cfg.epochs`` trains at.

    Progressive resizing: the first ``epochs // 2`` epochs grow linearly from ``cfg.train_scale_start`` towards 1
    (``start + (1 - start) * epoch / (epochs // 2)``), the rest are at 1. With start 0.72 and 4 epochs: 0.72,
    0.86, 1, 1.
    """
    ramp = cfg.epochs // 2
    return 1.0 if epoch >= ramp else cfg.train_scale_start + (1 - cfg.train_scale_start) * epoch / ramp


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


def fit(
    model: nn.Module,
    images: torch.Tensor,
    targets: TargetSource,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    cfg: TrainConfig,
    pipeline: Pipeline,
    *,
    seed_keys: tuple[int, ...],
    augment=None,
    state_file=None,
    log: Callable[[dict], None] | None = None,
    progress: bool = False,
    compile: bool = False,
    sync_bn: bool = False,
    desc: str = "",
    clock: ChainClock | None = None,
) -> FitResult:
    """Train ``model`` for up to ``cfg.epochs`` epochs, tracking validation top-1 accuracy.

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

    Every epoch is seeded from ``seed_keys`` and the epoch
    (:func:`labelrefinery.seeding.epoch_generator`) and, when ``state_file`` is
    given, the whole training state (weights, optimizer, schedule, best weights,
    counters) is saved there after each epoch. If it holds a state at the start,
    training resumes after its last epoch and reaches the same result as an
    uninterrupted run. States hold the plain module's names, with or without
    ``compile``.

    Args:
        model: the student, on ``pipeline.device``, trained in place.
        images, targets: see :func:`train_one_epoch`.
        val_images: ``(M, C, H, W) uint8`` validation images (never augmented).
        val_labels: ``(M,) int64`` ground-truth labels.
        cfg: epochs, batch size, optimizer, schedule, patience.
        pipeline: device, normalisation and precision.
        seed_keys: integers identifying this fit (e.g. seed, generation).
        augment: batched augmentation or None.
        state_file: a resume file with ``load(device) -> dict | None`` and ``save(dict)``
            (:class:`labelrefinery.rundir.TrainStateFile`), or None.
        log: called with one metrics dict per epoch.
        progress: a progress bar per epoch on a terminal; elsewhere (a log file) one plain line per epoch.
        compile: train through ``torch.compile``.
        sync_bn: under torchrun, BatchNorm statistics over the global batch while training
            (``torch.nn.SyncBatchNorm``; CUDA only).
        clock: the run's :class:`~labelrefinery.console.ChainClock`: told of every epoch, its ETA shown on the
            bar and in the plain per-epoch lines.

    Returns:
        :class:`FitResult`.
    """
    trainee = wrap(model, pipeline.device, sync_bn)  # DistributedDataParallel under torchrun; shares the parameters
    trainee = torch.compile(trainee) if compile else trainee
    optimizer = build_optimizer(model, cfg)
    schedule = LRSchedule(optimizer, cfg, num_batches(len(images), cfg.batch_size, process_info().world_size))
    grad_scaler = torch.amp.GradScaler(pipeline.device.type) if pipeline.amp_dtype == torch.float16 else None
    run = _resume(state_file, model, optimizer, schedule, pipeline.device)
    patience = cfg.early_stop_patience_epochs
    stopped_early = bool(patience) and run.since_best >= patience
    epoch = run.next_epoch - 1
    last_val = None
    for epoch in range(run.next_epoch, cfg.epochs if not stopped_early else 0):
        lr, scale = schedule.lr, train_scale(cfg, epoch)
        schedule.start_epoch()
        info = {"lr": f"{lr:.2g}", **({} if last_val is None else {"val": f"{last_val:.2f}"}),
                **({} if clock is None else {"eta": clock.eta_text().removeprefix("chain ETA ")})}
        stats = train_one_epoch(
            trainee, optimizer, images, targets, pipeline, batch_size=cfg.batch_size,
            generator=epoch_generator(seed_keys, epoch), augment=augment, schedule=schedule,
            grad_scaler=grad_scaler, label_smoothing=cfg.label_smoothing, input_scale=scale,
            progress=progress, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", bar_info=info,
        )
        if not math.isfinite(stats["train_loss"]):  # weights are NaN now: stop before they become refined labels
            raise DivergedError(f"{desc.strip() or 'training'}: the training loss became {stats['train_loss']} in "
                                f"epoch {epoch + 1} (at {scale:g} of the image side); lower --lr, "
                                "use --precision fp32, or a larger --train-scale-start; finished generations are kept")
        eval_start = time.perf_counter()
        if cfg.recalibrate_bn:
            # Running statistics lag behind in short runs; validation (and so best-epoch choice, plateau and
            # early stopping) would judge a miscalibrated model. Only eval-mode behaviour changes.
            recalibrate_batchnorm(model, recalibration_subset(images), pipeline)
        val = evaluate(model, val_images, val_labels, pipeline)
        stats["eval_time_s"] = time.perf_counter() - eval_start
        last_val = val["top1"]
        if clock is not None:
            clock.epoch_done(stats["epoch_time_s"] + stats["eval_time_s"])
        schedule.after_epoch(val["top1"])
        run.update(model, epoch, val["top1"], cfg.early_stop_min_delta)
        if log is not None:
            log({"epoch": epoch + 1, "lr": lr, "lr_peak": schedule.epoch_peak_lr, "train_scale": scale, **stats,
                 "val_top1": val["top1"], "val_loss": val["loss"]})
        if progress and not interactive():  # a log file: one plain line per epoch instead of a bar
            _log_epoch_line(desc, epoch, cfg.epochs, stats, val["top1"], schedule.epoch_peak_lr, clock)
        if state_file is not None:
            state_file.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": schedule.state_dict(), "best_model": run.best_weights,
                             "best_top1": run.best_top1, "best_epoch": run.best_epoch,
                             "since_best": run.since_best, "epoch": epoch})
        if patience and run.since_best >= patience:
            stopped_early = True
            _warn_if_resized(desc, epoch, scale, cfg)
            break
    if clock is not None and stopped_early:
        clock.skip(cfg.epochs - (epoch + 1))
    if cfg.restore_best:
        model.load_state_dict(run.best_weights)
    return FitResult(run.best_top1, run.best_epoch, max(epoch + 1, 0), stopped_early)
