"""DivideMix (Li, Socher & Hoi, ICLR 2020, "DivideMix: Learning with Noisy Labels as Semi-supervised Learning"),
the peer ``benchmarks/refinery_gain.py --peers dividemix`` trains beside the refinery.

Two networks; after a warm-up on every given label, each epoch each network's per-image cross-entropy losses
(min-max normalised) are fitted by a two-component Gaussian mixture whose low-loss component's posterior w_i is
the probability that label i is clean (section 3.1, their ``eval_train``). Each network then trains on the
*other's* division (co-divide): images with w_i > 0.5 are labelled, the rest unlabelled, and MixMatch runs on
them (section 3.2, Algorithm 1): labels refined as w y + (1 - w) p (label co-refinement, p the network's mean
prediction over two augmentations), guesses for the unlabelled images averaged over both networks and both
augmentations (co-guessing), both sharpened at T = 0.5; mixup with lambda' = max(lambda, 1 - lambda),
lambda ~ Beta(4, 4); loss = cross-entropy on the mixed labelled images + lambda_u x mean squared error on the
mixed unlabelled ones + KL(uniform || mean prediction) (their ``penalty``). Prediction: the two networks'
softmax averaged. Their CIFAR-10 settings: T 0.5, alpha 4, threshold 0.5, lambda_u 25 (0 at 20% noise); GMM
``max_iter=10, tol=1e-2, reg_covar=5e-4``.

What differs from theirs, to train on plain R1's recipe like every peer: the common optimiser and one-cycle
schedule (Adam to 3e-3, weight decay 5e-4, batch 128; theirs SGD 0.02 for 300 epochs), the common epochs with
``epochs // 4`` of warm-up (theirs 10 of 300) and lambda_u ramped linearly over the remaining epochs (theirs
over 16), plain cross-entropy in the warm-up (their negative-entropy penalty is for asymmetric noise only),
lambda_u 25 at every noise rate; the augmentation is a random shift of up to 2 px (zero padding) and a
horizontal flip (theirs: a 4-px padded 32-px crop and a flip); the prediction averages the two softmaxes
(theirs sums the logits); the epoch kept is the best by the noisy validation labels; as in the common recipe
(``--recalibrate-bn``), both networks' BatchNorm statistics are recomputed on the training images after every
epoch, before the division: without it, at this schedule's learning rates, the running statistics lag the
weights and the eval-mode losses the division reads are those of a broken model (their 300-epoch schedule
does not need it). Its cost per epoch is several
times a plain model's: each labelled batch takes six forward passes without gradients and one with gradients
on four times the images, for each network.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelrefinery.inference import predict, recalibrate_batchnorm, recalibration_subset
from labelrefinery.schedule import build_optimizer
from labelrefinery.seeding import derive_seed

T_SHARPEN, ALPHA, THRESHOLD, LAMBDA_U = 0.5, 4.0, 0.5, 25.0


def clean_probability(losses: torch.Tensor) -> torch.Tensor:
    """``(N,) float`` per-image losses -> ``(N,) float32`` posterior of the low-mean component of a two-component
    Gaussian mixture fitted to them after min-max normalisation (DivideMix section 3.1, their ``eval_train``)."""
    from sklearn.mixture import GaussianMixture

    x = losses.double()
    x = ((x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)).numpy().reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0).fit(x)
    return torch.from_numpy(gmm.predict_proba(x)[:, int(np.argmin(gmm.means_[:, 0]))]).float()


def sharpen(p: torch.Tensor, temperature: float = T_SHARPEN) -> torch.Tensor:
    """``(B, K)`` probabilities raised to 1 / T and renormalised per row (MixMatch's sharpening)."""
    q = p ** (1 / temperature)
    return q / q.sum(1, keepdim=True)


def shift_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """``(B, C, H, W) float`` images each shifted by up to ``pad`` px in both directions (zero padding) and flipped
    left-right with probability 1/2."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (b,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class _Net:
    """One of the two networks with its optimiser and one-cycle schedule, driven by the share of training done."""

    def __init__(self, model: nn.Module, cfg, total_steps: int):
        self.model, self.opt = model, build_optimizer(model, cfg)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=cfg.lr, total_steps=total_steps + 1,
                                                         pct_start=0.25)

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()


class DivideMix:
    """DivideMix on the images ``images: (N, C, H, W) uint8`` with given labels ``labels: (N,) int64``, for
    ``cfg.training.epochs`` epochs of ``ceil(N / batch)`` steps each (a labelled batch per step after the warm-up).

    Args:
        models: the two networks (initialised), trained in place.
        pipe: the common :class:`~labelrefinery.batch.Pipeline` (normalisation, autocast).
        generator: seeds the batch order, augmentation and mixup.
        num_classes: K.
    """

    def __init__(self, models: tuple[nn.Module, nn.Module], cfg, pipe, generator: torch.Generator,
                 num_classes: int):
        self.t, self.pipe, self.g, self.k = cfg.training, pipe, generator, num_classes
        self.models = models
        self.warmup = max(self.t.epochs // 4, 1)

    def _input(self, x_unit: torch.Tensor) -> torch.Tensor:
        return self.pipe.normalize(shift_flip(x_unit, self.g))

    def _logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with self.pipe.autocast():
            return model(x).float()

    def _losses(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        model.eval()
        return F.cross_entropy(predict(model, images, self.pipe).float(), labels, reduction="none")

    def _warmup_step(self, net: _Net, x: torch.Tensor, y: torch.Tensor) -> None:
        net.model.train()
        net.step(F.cross_entropy(self._logits(net.model, self._input(x)), y))

    def _mixmatch_step(self, net: _Net, other: nn.Module, batch: tuple, ramp: float) -> None:
        """One MixMatch step of ``net`` (DivideMix Algorithm 1, lines 10-23) on ``batch = (x, y, w, u)``: labelled
        images ``x`` in [0, 1] with labels ``y`` and clean probabilities ``w``, unlabelled images ``u``."""
        x, y, w, u = batch
        k = self.k
        x1, x2, u1, u2 = (self._input(v) for v in (x, x, u, u))
        with torch.no_grad():
            net.model.train()  # as theirs: the network trained guesses in train mode, the other in eval mode
            other.eval()
            pu = sum(self._logits(m, v).softmax(1) for m in (net.model, other) for v in (u1, u2)) / 4
            px = (self._logits(net.model, x1).softmax(1) + self._logits(net.model, x2).softmax(1)) / 2
            tx = sharpen(w[:, None] * F.one_hot(y, k).float() + (1 - w[:, None]) * px)
            tu = sharpen(pu)
        lam = float(np.random.default_rng(int(torch.randint(2 ** 31, (1,), generator=self.g))).beta(ALPHA, ALPHA))
        lam = max(lam, 1 - lam)
        inputs, targets = torch.cat([x1, x2, u1, u2]), torch.cat([tx, tx, tu, tu])
        perm = torch.randperm(len(inputs), generator=self.g)
        mixed_x = lam * inputs + (1 - lam) * inputs[perm]
        mixed_t = lam * targets + (1 - lam) * targets[perm]
        net.model.train()
        logits = self._logits(net.model, mixed_x)
        n = 2 * len(x)
        lx = -(mixed_t[:n] * logits[:n].log_softmax(1)).sum(1).mean()
        lu = ((logits[n:].softmax(1) - mixed_t[n:]) ** 2).mean()
        mean_p = logits.softmax(1).mean(0)
        penalty = (torch.full_like(mean_p, 1 / k) * (math.log(1 / k) - mean_p.clamp_min(1e-12).log())).sum()
        net.step(lx + LAMBDA_U * ramp * lu + penalty)

    def fit(self, images: torch.Tensor, labels: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor]) -> dict:
        """Train both networks; keep the epoch whose averaged prediction scores best on ``val = (images,
        labels)`` (the noisy validation labels).

        Args:
            images: ``(N, C, H, W) uint8`` training images; labels: ``(N,) int64`` their given labels in [0, K).
            val: ``((V, C, H, W) uint8, (V,) int64)``.

        Returns:
            ``{"val_top1": [top-1 % per epoch], "labelled": [share in [0, 1] of the images each division labelled,
            two per epoch after the warm-up]}``.
        """
        n, bs, epochs = len(labels), self.t.batch_size, self.t.epochs
        steps = -(-n // bs)
        nets = [_Net(m, self.t, epochs * steps) for m in self.models]
        unit = self.pipe.to_unit
        history: dict = {"val_top1": [], "labelled": []}
        best, best_state = -1.0, None
        for epoch in range(epochs):
            if epoch < self.warmup:
                for net in nets:
                    order = torch.randperm(n, generator=self.g)
                    for s in range(steps):
                        idx = order[s * bs:(s + 1) * bs]
                        self._warmup_step(net, unit(images[idx]), labels[idx])
            else:
                ramp = min((epoch - self.warmup + 1) / max(epochs - self.warmup, 1), 1.0)
                w = [clean_probability(self._losses(m, images, labels)) for m in self.models]
                for i, net in enumerate(nets):
                    w_other = w[1 - i]  # co-divide: each network trains on the other's division
                    labelled = (w_other > THRESHOLD).nonzero().squeeze(1)
                    unlabelled = (w_other <= THRESHOLD).nonzero().squeeze(1)
                    history["labelled"].append(len(labelled) / n)
                    if len(labelled) < 2 or len(unlabelled) < 2:
                        continue
                    lo = labelled[torch.randperm(len(labelled), generator=self.g)]
                    uo = unlabelled[torch.randint(len(unlabelled), (len(lo),), generator=self.g)]
                    for s in range(-(-len(lo) // bs)):
                        li, ui = lo[s * bs:(s + 1) * bs], uo[s * bs:(s + 1) * bs]
                        if len(li) < 2:
                            continue
                        self._mixmatch_step(net, self.models[1 - i], (unit(images[li]), labels[li], w_other[li],
                                                                      unit(images[ui])), ramp)
                    for _ in range(steps - (-(-len(lo) // bs))):  # the schedule keeps the common pace
                        net.sched.step()
            for m in self.models:
                recalibrate_batchnorm(m, recalibration_subset(images), self.pipe)
            top1 = self.score(*val)
            history["val_top1"].append(top1)
            if top1 > best:
                best, best_state = top1, [copy.deepcopy(m.state_dict()) for m in self.models]
        for m, state in zip(self.models, best_state):
            m.load_state_dict(state)  # its statistics recomputed at the end of its epoch
        return history

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, K) float32``: the two networks' softmax averaged (DivideMix's test-time prediction)."""
        for m in self.models:
            m.eval()
        return sum(predict(m, images, self.pipe).float().softmax(1) for m in self.models) / 2

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 (%) of :meth:`probabilities` against ``labels``."""
        return float((self.probabilities(images).argmax(1) == labels.cpu()).float().mean() * 100)


def dividemix_generator(seed: int, key: int) -> torch.Generator:
    """The CPU generator of a DivideMix run of ``seed``."""
    return torch.Generator().manual_seed(derive_seed(seed, key, 7))
