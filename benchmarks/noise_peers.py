"""Published noise-robust training, the peers ``benchmarks/refinery_gain.py --peers`` trains beside the refinery.

Each peer trains the same model with the same recipe, split and seeds as plain R1 (the engine's :func:`fit`; its
best epoch by the noisy validation labels, BatchNorm recalibrated), and changes only what the method changes:

- ``ce``: plain cross-entropy, nothing changed (this script's plain R1, the peers' paired baseline);
- ``gce``: generalized cross-entropy, q = 0.7 (Zhang & Sabuncu 2018, eq. 6);
- ``sce``: symmetric cross-entropy, alpha 0.1, beta 1.0, A = -4 (Wang et al. 2019, eq. 5-6, their CIFAR-10
  setting);
- ``mixup``: pairs of images and their one-hot labels mixed with lambda ~ Beta(1, 1) (Zhang et al. 2018,
  "mixup: Beyond Empirical Risk Minimization", eq. 1; section 3.4 measures it on corrupted labels): the engine's
  own ``--mixup 1`` (:class:`labelrefinery.augment.Mixup`);
- ``elr``: early-learning regularisation, cross-entropy + lambda * mean log(1 - <t_i, p_i>) with t_i a running
  average of the model's own predictions for image i, lambda 3, beta 0.7 (Liu et al. 2020, NeurIPS, eq. 6-7, their
  CIFAR-10 setting);
- ``coteaching``: two networks, each fitted to the images the other finds easiest (smallest cross-entropy), the
  share dropped rising to the noise rate over the first quarter of the epochs (Han et al. 2018, Algorithm 1;
  the paper gives it the true noise rate, and so does this benchmark: an advantage no other method gets); the
  first network is scored;
- ``plc``: progressive label correction (Zhang et al. ICLR 2021, "Learning with Feature-Dependent Label Noise",
  Algorithm 1 and its code's ``lrt_correction``): after a warm-up of ``epochs // 3`` epochs, after every epoch each
  label whose predicted probability is below delta times the top one becomes the top class; delta starts at 0.3
  and rises by 0.1 (to at most 0.9) whenever an epoch corrects under 0.1% of the labels; the predictions are
  those of the training passes, averaged over the last 3 epochs.

- ``dividemix``: DivideMix (Li et al. 2020: two networks, a Gaussian mixture of the losses each epoch, MixMatch
  on the other network's division), its own training loop in ``benchmarks/dividemix.py``, which says what
  differs from the paper's setting; the two networks' prediction averaged is scored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn

import labelrefinery.engine as engine
from labelrefinery.engine import TrainData, TrainSetup, fit
from labelrefinery.inference import predict, recalibrate_batchnorm, top1_accuracy
from labelrefinery.models import ModelSpec, build_model
from labelrefinery.protocol import seed_split
from labelrefinery.seeding import derive_seed
from labelrefinery.targets import BatchTargets, StoredTargets

from dividemix import DivideMix, dividemix_generator


def _one_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(targets, num_classes).float() if targets.dtype == torch.int64 else targets.float()


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, check: bool = True):
    """Generalized cross-entropy (Zhang & Sabuncu 2018, eq. 6), q = 0.7: mean of sum_c t_c (1 - p_c^q) / q."""
    p = logits.float().softmax(1).clamp_min(1e-7)
    return ((_one_hot(targets, p.shape[1]) * (1 - p ** 0.7)) / 0.7).sum(1).mean()


def sce_loss(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, check: bool = True):
    """Symmetric cross-entropy (Wang et al. 2019, eq. 5-6), alpha 0.1, beta 1.0 (their CIFAR-10 setting), the
    reverse term's log 0 clipped to -4 (A = -4)."""
    log_p = logits.float().log_softmax(1)
    t = _one_hot(targets, log_p.shape[1])
    ce = -(t * log_p).sum(1)
    rce = -(log_p.exp() * t.clamp_min(1e-4).log().clamp_min(-4.0)).sum(1)
    return (0.1 * ce + 1.0 * rce).mean()


class _Labels:
    """Given labels as a target source that remembers the last batch's positions (for a loss that keeps state per
    image). ``labels``: ``(N,) int64`` on the training device."""

    def __init__(self, labels: torch.Tensor):
        self.labels, self.index = labels, None

    def for_batch(self, index, images, student, pipeline, generator) -> BatchTargets:
        self.index = index
        return BatchTargets(images, self.labels[index], 1.0)

    def subset(self, positions):
        raise NotImplementedError("a peer's targets are not split (no cross-fitting here)")


class ELR(_Labels):
    """Early-learning regularisation (Liu et al. 2020, eq. 6-7 and their code): the loss of a batch is
    CE(logits, y) + lam * mean_i log(1 - <t_i, p_i>), p = softmax clamped to [1e-4, 1 - 1e-4], and before it
    t_i <- beta t_i + (1 - beta) p_i / sum(p_i) (detached; ``(N, K) float32`` on the labels' device)."""

    def __init__(self, labels: torch.Tensor, num_classes: int, lam: float = 3.0, beta: float = 0.7):
        super().__init__(labels)
        self.lam, self.beta = lam, beta
        self.target = torch.zeros(len(labels), num_classes, device=labels.device)

    def loss(self, logits, targets, temperature=1.0, check=True):
        p = logits.float().softmax(1).clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            q = p / p.sum(1, keepdim=True)
            self.target[self.index] = self.beta * self.target[self.index] + (1 - self.beta) * q
        t = self.target[self.index]
        return F.cross_entropy(logits.float(), targets) + self.lam * (1 - (t * p).sum(1)).log().mean()


def lrt_correction(labels: torch.Tensor, probs: torch.Tensor, delta: float, step: float = 0.1,
                   cap: float = 0.9) -> tuple[torch.Tensor, float, int]:
    """One round of PLC (Zhang et al. 2021, Algorithm 1, their ``lrt_correction``): every label y with
    p_y < delta * max_c p_c becomes argmax_c p_c; delta rises by ``step`` (to at most ``cap``) when fewer than 0.1%
    of the labels changed.

    Args:
        labels: ``(N,) int64``; probs: ``(N, K) float`` predicted probabilities.

    Returns:
        ``(N,) int64`` new labels, the next delta, the count changed.
    """
    top, argmax = probs.max(1)
    change = probs.gather(1, labels[:, None]).squeeze(1) < delta * top
    changed = int((change & (argmax != labels)).sum())
    if changed < 0.001 * len(labels):
        delta = min(delta + step, cap)
    return torch.where(change, argmax, labels), delta, changed


class PLC(_Labels):
    """Progressive label correction (:func:`lrt_correction` after every epoch from ``warmup`` on) on the
    probabilities of the training passes, averaged over the last ``window`` epochs; cross-entropy to the current
    labels. ``labels`` are cloned (the given ones stay as they are)."""

    def __init__(self, labels: torch.Tensor, num_classes: int, warmup: int, window: int = 3, delta: float = 0.3):
        super().__init__(labels.clone())
        self.warmup, self.window, self.delta = warmup, window, delta
        self.probs = torch.zeros(window, len(labels), num_classes, device=labels.device)
        self.seen, self.epoch, self.changed = 0, 0, []

    def loss(self, logits, targets, temperature=1.0, check=True):
        with torch.no_grad():
            self.probs[self.epoch % self.window, self.index] = logits.float().softmax(1)
        self.seen += len(self.index)
        if self.seen >= len(self.labels):  # the epoch's last batch: correct before the next epoch draws labels
            self.seen, self.epoch = 0, self.epoch + 1
            if self.epoch >= self.warmup:
                mean = self.probs[: min(self.epoch, self.window)].mean(0)
                self.labels, self.delta, changed = lrt_correction(self.labels, mean, self.delta)
                self.changed.append(changed)
        return F.cross_entropy(logits.float(), targets)


class CoTeachingPair(nn.Module):
    """Two networks trained side by side: in training mode their logits side by side, ``(B, 2K)``; in eval mode
    the first network's ``(B, K)`` (the one scored)."""

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first(x), self.second(x)], 1) if self.training else self.first(x)


class CoTeaching:
    """Co-teaching's loss (Han et al. 2018, Algorithm 1) on a :class:`CoTeachingPair`'s ``(B, 2K)`` logits and
    ``(B,) int64`` labels: each network's cross-entropy on the ``round((1 - r) B)`` images with the smallest
    cross-entropy under the other, r = ``forget_rate`` * min(step / ``ramp_steps``, 1)."""

    def __init__(self, num_classes: int, forget_rate: float, ramp_steps: int):
        self.num_classes, self.forget_rate, self.ramp_steps, self.step = num_classes, forget_rate, ramp_steps, 0

    def loss(self, logits, targets, temperature=1.0, check=True):
        first, second = logits.float().split(self.num_classes, 1)
        rate = self.forget_rate * min(self.step / max(self.ramp_steps, 1), 1.0)
        keep = max(1, round((1 - rate) * len(targets)))
        self.step += 1
        with torch.no_grad():
            easy_first = F.cross_entropy(first, targets, reduction="none").argsort()[:keep]
            easy_second = F.cross_entropy(second, targets, reduction="none").argsort()[:keep]
        return (F.cross_entropy(first[easy_second], targets[easy_second])
                + F.cross_entropy(second[easy_first], targets[easy_first]))


@contextlib.contextmanager
def engine_loss(loss):
    """The engine's loss swapped for ``loss`` (``(logits, targets, temperature, check) -> scalar``) inside."""
    own = engine.distillation_loss
    engine.distillation_loss = loss
    try:
        yield
    finally:
        engine.distillation_loss = own


def new_model(ds, cfg) -> nn.Module:
    return build_model(ModelSpec(cfg.model, ds.train.num_classes, *ds.image_shape[:2])).to(
        memory_format=torch.channels_last)


def fit_model(ds, split: tuple, labels: torch.Tensor, cfg, pipe, keys: tuple[int, int], targets=None,
              model: nn.Module | None = None) -> nn.Module:
    """One model of the common recipe on ``split = (train_idx, val_idx)``: ``targets`` (a target source; default
    the ``labels`` of the training images, ``labels`` being the given labels of the whole split), its best epoch by
    ``labels[val_idx]``; ``keys = (seed, key)`` seed its initialisation and epochs."""
    (train_idx, val_idx), (seed, key) = split, keys
    if model is None:
        torch.manual_seed(derive_seed(seed, key))
        model = new_model(ds, cfg)
    images = ds.train.images[train_idx]
    if targets is None:
        targets = StoredTargets(labels[train_idx], num_classes=ds.train.num_classes)
    fit(model, TrainData(images, targets, ds.train.images[val_idx], labels[val_idx]),
        TrainSetup(cfg.training, pipe, (seed, key)))
    recalibrate_batchnorm(model, images, pipe)
    return model


PEERS = ("ce", "gce", "sce", "mixup", "elr", "coteaching", "plc", "dividemix")
ROW_NAMES = {"ce": "plain cross-entropy (the peers' R1)", "gce": "GCE loss", "sce": "SCE loss",
             "mixup": "mixup (alpha 1)", "elr": "ELR",
             "coteaching": "co-teaching (true noise rate)", "plc": "PLC", "dividemix": "DivideMix"}


def peer_method(ds, cfg, pipe, seed: int, name: str, noise_rate: float) -> dict:
    """Train peer ``name`` (one of :data:`PEERS`) for ``seed`` on the given labels of ``ds``; ``noise_rate`` is
    the true share of wrong training labels (co-teaching's forget rate). Returns ``test_top1`` (%) on the clean
    test labels, ``wall_s`` and, for PLC, ``corrected`` (labels changed per round), for DivideMix ``labelled``
    (the share of images each division labelled)."""
    start = time.perf_counter()
    train_idx, val_idx = seed_split(ds, cfg, seed)
    given, k = ds.train.labels, ds.train.num_classes
    labels = given[train_idx].to(pipe.device)
    if name == "dividemix":  # its own loop; the first network starts where plain R1 of this script would
        torch.manual_seed(derive_seed(seed, 1))
        dm = DivideMix((new_model(ds, cfg), new_model(ds, cfg)), cfg, pipe, dividemix_generator(seed, 1), k)
        history = dm.fit(ds.train.images[train_idx], labels, (ds.train.images[val_idx], given[val_idx]))
        return {"test_top1": dm.score(ds.test.images, ds.test.labels), "wall_s": time.perf_counter() - start,
                "labelled": history["labelled"]}
    targets, loss, model, extra = None, engine.distillation_loss, None, {}
    if name in ("gce", "sce"):  # ce: nothing changed
        loss = gce_loss if name == "gce" else sce_loss
    elif name == "mixup":  # the engine's own --mixup 1
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, mixup=1.0))
    elif name in ("elr", "plc"):
        targets = ELR(labels, k) if name == "elr" else PLC(labels, k, warmup=max(cfg.training.epochs // 3, 1))
        loss = targets.loss
    elif name == "coteaching":  # the first network starts where plain R1 of this script would
        torch.manual_seed(derive_seed(seed, 1))
        model = CoTeachingPair(new_model(ds, cfg), new_model(ds, cfg))
        steps = -(-len(train_idx) // cfg.training.batch_size)
        loss = CoTeaching(k, noise_rate, ramp_steps=max(cfg.training.epochs // 4, 1) * steps).loss
    elif name != "ce":
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    with engine_loss(loss):
        model = fit_model(ds, (train_idx, val_idx), given, cfg, pipe, (seed, 1), targets, model)
    if name == "plc":
        extra["corrected"] = targets.changed
    return {"test_top1": top1_accuracy(predict(model, ds.test.images, pipe), ds.test.labels),
            "wall_s": time.perf_counter() - start, **extra}
