"""Correcting a refinery's labels with verified labels (``--trusted`` with ``--noise-prior verified``).

A refinery trained on labels with annotator-like (instance-dependent) noise learns that noise: where the wrong
labels follow what the images look like, its refined labels repeat them, and nothing in the given labels says
otherwise. A few hundred verified labels do: on them, what the refinery says can be compared with the truth.
A new classifier layer is fitted there and gives every training image's corrected label before the next
generation fits it. Two inputs are tried, and the one of lower out-of-fold cross-entropy on the verified labels
is kept:

- the refinery's log-probabilities: matrix scaling, q = softmax(W log p + b) (Guo et al. 2017, "On Calibration
  of Modern Neural Networks", section 4.2), W pulled towards the identity and b towards 0 (the regulariser of
  Kull et al. 2019, "Beyond temperature scaling: Obtaining well-calibrated multiclass probabilities with
  Dirichlet calibration", section 3.3, on the whole W - I);
- the refinery's penultimate features (what its last linear layer reads): its classifier layer refitted on the
  verified images, pulled towards the layer it has (a linear probe, as in the last-layer retraining of
  Kirichenko et al. 2023, "Last Layer Re-Training is Sufficient for Robustness to Spurious Correlations").

The pull's strength is chosen by :data:`FOLDS`-fold cross-validation on the verified labels too. Its effect
on a 12,000-image Fashion-MNIST subset with 35% annotator-like noise: BENCHMARKS.md, "Annotator-like noise".

Letters: T verified images, N images, K classes, D features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)  # the pull's strengths tried (a sum of squares, against a mean cross-entropy)
FOLDS = 5  # cross-validation folds over the verified labels
FLOOR = 1e-6  # probabilities are clipped here before the log (float16-stored rows hold exact zeros)


@dataclass(frozen=True)
class VerifiedCorrection:
    """A fitted correction: a classifier layer over the refinery's log-probabilities or features.

    Attributes:
        inputs: ``"log-probabilities"`` or ``"features"``; ``"none"`` when neither beats the refinery's own labels
            out of fold (then the labels are left as they are).
        weight, bias: ``(K, K)`` or ``(D, K)`` and ``(K,)`` float64: q = softmax(x @ weight + bias).
        strength: the pull's strength chosen.
        before, after: top-1 (%) against the verified labels of the refinery's own labels and of the corrected
            ones, out of fold (each verified image corrected by a layer fitted without it).
    """

    inputs: str
    weight: torch.Tensor
    bias: torch.Tensor
    strength: float
    before: float
    after: float

    def __call__(self, probs: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, K)`` refined labels (and, for ``inputs == "features"``, the refinery's ``(N, D)`` features of the
        same images) -> ``(N, K) float32`` corrected rows, on ``probs``' device.

        Raises:
            ValueError: features needed and not given.
        """
        if self.inputs == "none":
            return probs.float()
        if self.inputs == "features":
            if features is None:
                raise ValueError("this correction reads the refinery's features; pass them")
            x = features.double().to(probs.device)
        else:
            x = _log(probs)
        return (x @ self.weight.to(probs.device) + self.bias.to(probs.device)).softmax(1).float()

    def record(self) -> dict:
        """The small form a summary keeps: inputs, strength and the out-of-fold top-1 before and after."""
        return {"inputs": self.inputs, "strength": self.strength, "verified_top1_before": self.before,
                "verified_top1_after": self.after}


def _log(probs: torch.Tensor) -> torch.Tensor:
    return probs.double().clamp_min(FLOOR).log()


def _fit(x: torch.Tensor, labels: torch.Tensor, start: tuple[torch.Tensor, torch.Tensor],
         strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    weight0, bias0 = start
    weight = weight0.clone().requires_grad_(True)
    bias = bias0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = F.cross_entropy(x @ weight + bias, labels) + strength * (
            ((weight - weight0) ** 2).sum() + ((bias - bias0) ** 2).sum())
        value.backward()
        return value

    opt.step(loss)
    return weight.detach(), bias.detach()


def fit_verified_correction(probs: torch.Tensor, verified: torch.Tensor, features: torch.Tensor | None = None,
                            layer: tuple[torch.Tensor, torch.Tensor] | None = None) -> VerifiedCorrection:
    """Fit the correction on a refinery's view of the verified images, which it never trained on.

    Args:
        probs: ``(T, K) float`` its refined labels (probability rows at T = 1).
        verified: ``(T,) int64`` their verified labels.
        features: ``(T, D) float`` its penultimate features of them, or None (log-probabilities only).
        layer: with ``features``, its classifier layer ``(weight (K, D), bias (K,))`` (``nn.Linear`` form).

    Returns:
        The input and strength of lowest out-of-fold cross-entropy (:data:`FOLDS` folds: the images in a fixed
        shuffled order, dealt round; strengths :data:`STRENGTHS`), refitted on every verified image; or, when
        that is no lower than the cross-entropy of the refined labels as they are, ``inputs="none"`` (identity).
        Deterministic (float64, full-batch L-BFGS).
    """
    y = verified.cpu()
    k = probs.shape[1]
    candidates = {"log-probabilities": (_log(probs.cpu()), (torch.eye(k, dtype=torch.float64),
                                                            torch.zeros(k, dtype=torch.float64)))}
    if features is not None and layer is not None:
        candidates["features"] = (features.double().cpu(), (layer[0].detach().double().cpu().T.contiguous(),
                                                            layer[1].detach().double().cpu()))
    fold = torch.empty(len(y), dtype=torch.int64)
    fold[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))] = torch.arange(len(y)) % FOLDS
    best = None
    for name, (x, start) in candidates.items():
        for strength in STRENGTHS:
            out = torch.empty(len(y), k, dtype=torch.float64)
            for f in range(FOLDS):
                held = fold == f
                weight, bias = _fit(x[~held], y[~held], start, strength)
                out[held] = x[held] @ weight + bias
            nll = float(F.cross_entropy(out, y))
            if best is None or nll < best[0]:
                best = (nll, name, strength, out)
    nll, name, strength, out = best
    before = 100.0 * float((probs.cpu().argmax(1) == y).double().mean())
    own = candidates["log-probabilities"][0]
    if float(F.cross_entropy(own, y)) <= nll:  # no layer beats the labels as they are: leave them
        return VerifiedCorrection("none", torch.eye(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64),
                                  0.0, before, before)
    x, start = candidates[name]
    weight, bias = _fit(x, y, start, strength)
    after = 100.0 * float((out.argmax(1) == y).double().mean())
    return VerifiedCorrection(name, weight, bias, strength, before, after)
