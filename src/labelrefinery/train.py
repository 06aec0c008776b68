"""The fast training path: ``train_one_epoch``, ``evaluate``, ``predict``, ``fit``.

Letters: N images, B batch size, C channels, H x W pixels, K classes.

The training images live on the training device as ``(N, C, H, W) uint8``.
Each step takes a slice of one index permutation, converts that batch to float
on the device, augments it with per-sample parameters (batched, see
:mod:`labelrefinery.augment`), normalises it in channels_last layout and runs
the model under autocast. Offline targets are indexed by the same permutation
as the images, never by batch position. With a refinery (``labels=online``)
the targets of each batch are the frozen refinery's softmax on exactly the
augmented batch the student sees, as in the Label Refinery paper's code
(Bagherinezhad et al. 2018, arXiv 1805.02641; hessamb/label-refinery).
"""

from __future__ import annotations

import copy
import io
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .losses import kl_divergence, soft_target_cross_entropy
from .runio import atomic_write_bytes


# --------------------------------------------------------------------------- device, precision, seeds


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``.

    Raises:
        ValueError: a name other than auto, cpu, cuda, cuda:N; or CUDA asked for and none available.
    """
    from .config import check_device_name

    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA but torch sees no CUDA device; use --device cpu")
    return dev


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``name`` on ``device``: None means plain fp32.

    ``auto`` picks bf16 on CPUs with AVX512-BF16/AMX and on CUDA devices that
    support bf16, fp32 otherwise.

    Raises:
        ValueError: unknown name.
    """
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if cpu_supports_bf16() else None
    raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {name!r}")


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. run seed, generation, epoch), stable across runs and machines."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> 1)


# --------------------------------------------------------------------------- batch pipeline


@dataclass
class Pipeline:
    """How a uint8 batch becomes a model input on the device.

    Attributes:
        device: the training device.
        mean, std: ``(1, C, 1, 1) float32`` normalisation constants, in [0, 1] pixel units, on ``device``.
        amp_dtype: autocast dtype (bf16/fp16), or None for fp32.
        eval_view: optional function ``(N, C, H, W) float -> same`` applied to
            un-augmented images at evaluation and prediction (e.g. a centre crop).
    """

    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
    amp_dtype: torch.dtype | None = None
    eval_view: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def create(cls, device: torch.device, mean, std, amp_dtype=None, eval_view=None) -> "Pipeline":
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
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


class FrozenRefinery(nn.Module):
    """A trained model used only to make refined labels: eval mode for good, no gradients.

    ``train()`` on this module or on a parent module keeps it in eval mode, so
    its BatchNorm layers always use their running statistics (the pitfall noted
    in the paper's code, where the wrapper's ``train()`` flipped the refinery's
    BatchNorm into batch-statistics mode). Its parameters have
    ``requires_grad=False`` and must not be given to an optimizer.
    (Folding its Conv-BatchNorm pairs with torch.fx was measured at 1% more
    images/s on the CPU benchmark, so the model runs as it is.)
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


# --------------------------------------------------------------------------- inference


def predict(
    model: nn.Module, images: torch.Tensor, pipeline: Pipeline, batch_size: int = 1024, view: bool = True
) -> torch.Tensor:
    """Logits of ``model`` on ``images`` in dataset order.

    Args:
        model: classifier; put in eval mode here (and left so).
        images: ``(N, C, H, W) uint8`` on any device.
        pipeline: device, normalisation and precision.
        batch_size: images per forward pass.
        view: apply ``pipeline.eval_view`` (e.g. the evaluation centre crop).

    Returns:
        ``(N, K) float32`` logits on the CPU.
    """
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = pipeline.to_unit(images[start : start + batch_size])
            if view and pipeline.eval_view is not None:
                x = pipeline.eval_view(x)
            with pipeline.autocast():
                logits = model(pipeline.normalize(x))
            out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


RECALIBRATION_IMAGES = 4096  # training images (evenly strided) behind each epoch's BatchNorm statistics


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, pipeline: Pipeline, batch_size: int = 1024) -> None:
    """Recompute every BatchNorm layer's running mean and variance over ``images`` (precise BatchNorm).

    With few training steps the running statistics (an exponential average with
    momentum 0.1) lag far behind the weights, so the model is badly calibrated in
    eval mode: its softmax is nearly uniform and refined labels made from it
    carry little signal, which makes later generations collapse. One pass in
    train mode without gradients, averaging over all batches
    (``torch.optim.swa_utils.update_bn``; Wu & Johnson 2021, "Rethinking 'Batch'
    in BatchNorm", the "precise BN" statistics), fixes the statistics. Weights are unchanged.

    Args:
        model: trained in place (its BatchNorm buffers only); left in eval mode.
        images: ``(N, C, H, W) uint8`` training images, un-augmented.
        pipeline: device, normalisation, precision.
        batch_size: images per forward pass.
    """
    from torch.optim.swa_utils import update_bn

    def batches():
        for start in range(0, len(images), batch_size):
            x = pipeline.to_unit(images[start : start + batch_size])
            if pipeline.eval_view is not None:
                x = pipeline.eval_view(x)
            yield pipeline.normalize(x)

    with torch.no_grad(), pipeline.autocast():
        update_bn(batches(), model)
    model.eval()


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of ``logits: (N, K)`` against ``labels: (N,) int64``."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * (logits.argmax(1).cpu() == labels.cpu()).float().mean().item()


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, pipeline: Pipeline,
             batch_size: int = 1024) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy (nats) of ``model`` on ``(N, C, H, W) uint8`` images."""
    logits = predict(model, images, pipeline, batch_size)
    return {
        "top1": top1_accuracy(logits, labels),
        "loss": soft_target_cross_entropy(logits, labels.cpu()).item(),
    }


# --------------------------------------------------------------------------- training


@dataclass
class OnlineLabels:
    """Per-batch refined labels from a frozen refinery (``labels=online``).

    Attributes:
        refinery: the frozen model labelling each augmented batch.
        make_targets: ``(logits (B, K), ground_truth (B,) int64) -> (B, K) float32`` targets
            (temperature, label form and ground-truth weight applied).
        ground_truth: ``(N,) int64`` labels on the device, indexed like the images.
        jitter_prob: probability per image of adversarial jittering.
        jitter_eps: jittering step size, in [0, 1] pixel units.
    """

    refinery: FrozenRefinery
    make_targets: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ground_truth: torch.Tensor
    jitter_prob: float = 0.0
    jitter_eps: float = 1.0 / 255


def adversarial_jitter(
    model: nn.Module, refinery: FrozenRefinery, x: torch.Tensor, pipeline: Pipeline, eps: float
) -> torch.Tensor:
    """One-step gradient-sign perturbation of ``x`` that most increases the student's disagreement with the refinery.

    x' = clip(x + eps * sign(grad_x CE(student(x), softmax(refinery(x)))), 0, 1): our reading of the
    Label Refinery paper's "adversarial jittering" (Bagherinezhad et al. 2018, arXiv 1805.02641),
    in the fast-gradient-sign form of Goodfellow et al. 2015.

    Args:
        x: ``(B, C, H, W) float32`` in [0, 1] pixel units.
        eps: step in [0, 1] pixel units.

    Returns:
        ``(B, C, H, W) float32`` in [0, 1], detached.
    """
    x = x.detach().requires_grad_(True)
    with torch.no_grad():
        target = torch.softmax(refinery(pipeline.normalize(x.detach())).float(), 1)
    with pipeline.autocast():
        logits = model(pipeline.normalize(x))
    loss = soft_target_cross_entropy(logits, target)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp_(0, 1).detach()


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: torch.Tensor | OnlineLabels,
    pipeline: Pipeline,
    *,
    batch_size: int,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    temperature: float = 1.0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    progress: bool = False,
    desc: str = "",
) -> dict[str, float]:
    """One pass over ``images`` in a random order.

    Args:
        model: the student, trained in place.
        optimizer: its optimizer.
        images: ``(N, C, H, W) uint8`` training images, ideally already on the device.
        targets: ``(N,) int64`` labels or ``(N, K) float32`` soft targets on the device,
            indexed like ``images``; or an :class:`OnlineLabels` refinery.
        pipeline: device, normalisation, precision.
        batch_size: B.
        generator: CPU generator for the permutation and augmentation.
        augment: batched ``(x, generator) -> x`` on [0, 1] floats, or None.
        temperature: T applied to student logits against soft targets
            (loss scaled by T^2; see :func:`labelrefinery.losses.distillation_loss`).
        scheduler: stepped after every batch (onecycle), or None.
        grad_scaler: for fp16.
        progress: show a tqdm bar with loss, accuracy and images/s.

    Returns:
        dict with ``train_loss`` (soft-target cross-entropy, nats), ``train_kl``
        (KL divergence to the targets, nats), ``train_top1`` (%, against the
        targets' argmax), ``images_per_s`` and ``epoch_time_s``.
    """
    model.train()
    n = len(images)
    perm = torch.randperm(n, generator=generator).to(images.device, non_blocking=True)
    num_batches = max(1, n // batch_size + (1 if n % batch_size >= 2 else 0))
    online = targets if isinstance(targets, OnlineLabels) else None
    totals = torch.zeros(4, dtype=torch.float64, device=pipeline.device)  # loss, kl, correct, seen
    start = time.perf_counter()
    bar = tqdm(total=n, desc=desc, unit="img", leave=False, disable=not progress, dynamic_ncols=True)
    for b in range(num_batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        x = pipeline.to_unit(images[idx])
        if augment is not None:
            x = augment(x, generator)
        if online is not None:
            gt = online.ground_truth[idx]
            if online.jitter_prob > 0:
                chosen = (torch.rand(len(idx), generator=generator) < online.jitter_prob).to(x.device)
                if chosen.any():
                    x = x.clone()
                    x[chosen] = adversarial_jitter(model, online.refinery, x[chosen], pipeline, online.jitter_eps)
            with torch.inference_mode(), pipeline.autocast():
                refinery_logits = online.refinery(pipeline.normalize(x))
            t = online.make_targets(refinery_logits.float(), gt).clone()
        else:
            t = targets[idx]
        with pipeline.autocast():
            logits = model(pipeline.normalize(x))
        logits = logits.float()
        soft = t.is_floating_point()
        scale = temperature if soft else 1.0
        loss = soft_target_cross_entropy(logits / scale, t) * (scale * scale)
        optimizer.zero_grad(set_to_none=True)
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            hard = t.argmax(1) if soft else t
            kl = kl_divergence(logits / scale, t)
            totals += torch.stack([
                loss.detach().double() * len(idx), kl.double() * len(idx),
                (logits.argmax(1) == hard).sum().double(), torch.tensor(float(len(idx)), device=totals.device,
                                                                       dtype=torch.float64)])
        if progress:
            bar.update(len(idx))
            if b % 10 == 0 or b == num_batches - 1:
                t_loss, _, correct, seen = totals.tolist()
                bar.set_postfix(loss=f"{t_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
    bar.close()
    t_loss, t_kl, correct, seen = totals.tolist()
    elapsed = time.perf_counter() - start
    return {
        "train_loss": t_loss / seen,
        "train_kl": t_kl / seen,
        "train_top1": 100.0 * correct / seen,
        "images_per_s": seen / elapsed,
        "epoch_time_s": elapsed,
    }


@dataclass
class FitResult:
    """Outcome of :func:`fit`: best validation top-1 (%), the epoch it came from (0-based), epochs run."""

    best_val_top1: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """Adam or SGD (momentum 0.9, Nesterov) over the trainable parameters, with ``cfg.lr`` and ``cfg.weight_decay``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer, cfg, steps_per_epoch: int):
    """The lr schedule named by ``cfg.lr_schedule``; returns (scheduler, steps per batch?)."""
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience_epochs,
            min_lr=cfg.min_lr,
        ), False
    if cfg.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.25,
        ), True
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch), True
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.lr_step_epochs(), gamma=cfg.plateau_factor), False


def _state_dict_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | OnlineLabels,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    cfg,
    pipeline: Pipeline,
    *,
    seed_keys: tuple[int, ...],
    augment=None,
    state_path: Path | None = None,
    log: Callable[[dict], None] | None = None,
    desc: str = "",
) -> FitResult:
    """Train ``model`` for up to ``cfg.epochs`` epochs, tracking validation top-1 accuracy.

    Learning-rate schedule per ``cfg.lr_schedule``; early stopping when
    validation top-1 has not improved by more than ``cfg.early_stop_min_delta``
    points for ``cfg.early_stop_patience_epochs`` epochs (0 = never); at the end
    the best-validation weights are restored when ``cfg.restore_best``. With
    ``cfg.recalibrate_bn`` the BatchNorm statistics are recomputed over up to
    ``RECALIBRATION_IMAGES`` evenly strided training images before each
    validation (see :func:`recalibrate_batchnorm`), so the best epoch, the plateau
    schedule and early stopping judge a calibrated model.

    Every epoch is seeded from ``seed_keys + (epoch,)`` and, when ``state_path``
    is given, the whole training state (weights, optimizer, scheduler, best
    weights, counters) is written there atomically after each epoch. If the file
    exists at the start, training resumes after its last epoch and reaches the
    same result as an uninterrupted run.

    Args:
        model: the student, on ``pipeline.device``, trained in place.
        images, targets: see :func:`train_one_epoch`.
        val_images: ``(M, C, H, W) uint8`` validation images (never augmented).
        val_labels: ``(M,) int64`` ground-truth labels.
        cfg: a :class:`labelrefinery.config.RunConfig` (epochs, lr, schedule, patience ...).
        pipeline: device, normalisation and precision.
        seed_keys: integers identifying this fit (e.g. seed, generation).
        augment: batched augmentation or None.
        state_path: resume file (``.pt``, loaded with ``weights_only=True``).
        log: called with one metrics dict per epoch.

    Returns:
        :class:`FitResult`.
    """
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = max(1, len(images) // cfg.batch_size + (1 if len(images) % cfg.batch_size >= 2 else 0))
    scheduler, per_batch = build_scheduler(optimizer, cfg, steps_per_epoch)
    grad_scaler = torch.amp.GradScaler(pipeline.device.type) if pipeline.amp_dtype == torch.float16 else None
    best_top1, best_epoch, since_best, epoch0 = -math.inf, -1, 0, 0
    best_weights = _state_dict_copy(model)
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location=pipeline.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best_weights = state["best_model"]
        best_top1, best_epoch, since_best = float(state["best_top1"]), int(state["best_epoch"]), int(state["since_best"])
        epoch0 = int(state["epoch"]) + 1
    patience = cfg.early_stop_patience_epochs
    stopped_early = False
    epoch = epoch0 - 1
    if patience and since_best >= patience:
        stopped_early, epoch0 = True, cfg.epochs
    for epoch in range(epoch0, cfg.epochs):
        generator = torch.Generator().manual_seed(derive_seed(*seed_keys, epoch))
        torch.manual_seed(derive_seed(*seed_keys, epoch, 1))  # dropout and any other global-RNG use
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(
            model, optimizer, images, targets, pipeline, batch_size=cfg.batch_size, generator=generator,
            augment=augment, temperature=cfg.temperature, scheduler=scheduler if per_batch else None,
            grad_scaler=grad_scaler, progress=cfg.progress, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}",
        )
        if cfg.recalibrate_bn:
            # Running statistics lag behind in short runs; validation (and so best-epoch choice, plateau and
            # early stopping) would judge a miscalibrated model. Only eval-mode behaviour changes.
            recalibrate_batchnorm(model, images[:: max(1, len(images) // RECALIBRATION_IMAGES)], pipeline)
        val = evaluate(model, val_images, val_labels, pipeline)
        if cfg.lr_schedule == "plateau":
            scheduler.step(val["top1"])
        elif not per_batch:
            scheduler.step()
        improved = val["top1"] > best_top1 + cfg.early_stop_min_delta
        if val["top1"] > best_top1:
            best_top1, best_epoch = val["top1"], epoch
            best_weights = _state_dict_copy(model)
        since_best = 0 if improved else since_best + 1
        record = {"epoch": epoch + 1, "lr": lr, **stats, "val_top1": val["top1"], "val_loss": val["loss"]}
        if log is not None:
            log(record)
        if state_path is not None:
            buf = io.BytesIO()
            torch.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "best_model": best_weights,
                "best_top1": best_top1, "best_epoch": best_epoch, "since_best": since_best, "epoch": epoch,
            }, buf)
            atomic_write_bytes(state_path, buf.getvalue())
        if patience and since_best >= patience:
            stopped_early = True
            break
    if cfg.restore_best:
        model.load_state_dict(best_weights)
    return FitResult(best_top1, best_epoch, max(epoch + 1, 0), stopped_early)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile / DataParallel / DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def clone_module(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (for keeping a refinery while training a new student)."""
    return copy.deepcopy(unwrap(model))
