"""Injecting label noise into a training split (``--label-noise``), clean labels kept for scoring.

Letters: N images, K classes.

``--label-noise symmetric:P`` replaces each training label with probability P by
a uniformly drawn *other* class; ``pairflip:P`` moves class k to k + 1 (mod K)
with probability P (the two noise models of Han et al. 2018, "Co-teaching",
section 4). The draw comes from a stream of its own
(:func:`labelrefinery.seeding.label_noise_generator`), so every run seed sees
the same corrupted dataset; the test split is never touched.

``swap:P`` swaps labels within pairs of similar classes: each label of a paired class becomes its partner with
probability P (:func:`similar_class_pairs`; the mix-ups of an annotator who confuses two classes both ways).

``idn:P`` is instance-dependent noise as annotators make it: the ambiguous images get the similar
class (:func:`instance_dependent_noise`, the recipe of Chen et al. 2021, "Beyond Class-Conditional
Assumption: A Primary Attempt to Combat Instance-Dependent Label Noise", section 3, with a linear
discriminant as the scorer and the images ranked within each class).

How refined labels are scored against the clean labels:
:func:`labelrefinery.noise.quality.label_statistics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import parse_label_noise
from ..errors import ConfigError

IDN_SIDE = 16  # the scorer of idn:P sees images average-pooled to at most 16 x 16 px per channel
IDN_SHRINKAGE = 0.1  # its covariance, shrunk this far towards a multiple of the identity


@dataclass(frozen=True)
class LabelNoise:
    """What noise injection did to a training split.

    Attributes:
        clean: ``(N,) int64`` the labels before injection.
        noisy: ``(N,) int64`` the labels after it (the *given* labels a run trains on).
    """

    clean: torch.Tensor
    noisy: torch.Tensor

    @property
    def flipped(self) -> torch.Tensor:
        """``(N,) bool``: where the given label differs from the clean one."""
        return self.noisy != self.clean



def max_noise_rate(num_classes: int) -> float:
    """The largest admissible P (exclusive): 1 - 1/K, beyond which a wrong class is as likely as the right one."""
    return 1.0 - 1.0 / num_classes


def inject_label_noise(labels: torch.Tensor, spec: str, num_classes: int, generator: torch.Generator,
                       images: torch.Tensor | None = None) -> LabelNoise:
    """Corrupt ``labels: (N,) int64`` per ``spec`` (``symmetric:P``, ``pairflip:P``, ``swap:P`` or ``idn:P``).

    ``symmetric``, ``pairflip`` and ``swap`` flip each label independently with probability P; a symmetric flip
    draws its new class uniformly from the K - 1 other classes, a pair flip takes k + 1 mod K, a swap takes the
    class's partner (:func:`similar_class_pairs`; a class without one keeps its labels). ``idn`` flips exactly
    round(P N) labels, chosen by the images (:func:`instance_dependent_noise`; ``generator`` unused).

    Args:
        images: ``(N, C, H, W) uint8`` the images, needed by ``idn`` and ``swap``.

    Raises:
        ConfigError: a malformed spec, P outside [0, 1 - 1/K) (``swap``: [0, 0.5)), or ``idn`` or ``swap``
            without images in memory.
    """
    kind, p = parse_label_noise(spec)
    bound = 0.5 if kind == "swap" else max_noise_rate(num_classes)
    if num_classes < 2 or not p < bound:
        raise ConfigError(f"--label-noise {spec}: P must be in [0, {bound:.3f}) for {num_classes} classes "
                          f"({'a swap beyond 1/2 makes the partner the majority' if kind == 'swap' else '1 - 1/K'}); "
                          "use a smaller P")
    if kind in ("idn", "swap") and images is None:
        raise ConfigError(f"--label-noise {spec} chooses by the images' pixels, but this dataset is streamed from "
                          "its files; add --data-in-memory yes")
    if kind == "idn":
        return LabelNoise(labels.clone(), instance_dependent_noise(images, labels, num_classes, p))
    flip = torch.rand(len(labels), generator=generator) < p
    if kind == "symmetric":
        target = (labels + torch.randint(1, num_classes, (len(labels),), generator=generator)) % num_classes
    elif kind == "swap":
        partner = torch.arange(num_classes)
        for a, b in similar_class_pairs(images, labels, num_classes):
            partner[a], partner[b] = b, a
        target = partner[labels]
    else:
        target = (labels + 1) % num_classes
    return LabelNoise(labels.clone(), torch.where(flip, target, labels))


def instance_dependent_noise(images: torch.Tensor, labels: torch.Tensor, num_classes: int, rate: float,
                             chunk: int = 4096) -> torch.Tensor:
    """Instance-dependent label noise: ``(N,) int64`` labels in which, in every class, the share ``rate`` of its
    images that look most like another class were moved to that class.

    After Chen et al. 2021 ("Beyond Class-Conditional Assumption: A Primary Attempt to Combat Instance-Dependent
    Label Noise", AAAI, section 3): a classifier trained on the clean labels scores every image; the images whose
    strongest *other* class comes closest to (or beats) their own are the ambiguous ones an annotator gets wrong,
    and each chosen image takes that other class. Two choices differ from theirs, both stated so the noise can be
    reproduced elsewhere:

    - the scorer is linear discriminant analysis (Gaussian classes with one shared covariance, shrunk by
      ``IDN_SHRINKAGE`` towards its mean variance; closed form in float64) of the images average-pooled to at most
      ``IDN_SIDE`` x ``IDN_SIDE`` px, in place of a CNN's predictions averaged over its epochs: deterministic, under
      a second for 60,000 Fashion-MNIST images, and the confusions a person makes there (Shirt as T-shirt/top or
      Coat, Pullover as Coat, Sandal as Sneaker);
    - the images are ranked within each class (round(rate n_c) of class c's n_c images move), where Chen et al.
      rank all images together: on Fashion-MNIST at rate 0.35 that relabels 85% of the shirts, which leaves no
      method anything to learn the class from. Which images move, and where to, depends on the image alone.

    The ambiguity of an image of class y is max_{c != y} s_c - s_y for its discriminant scores s; ties go to the
    lower index.

    Args:
        images: ``(N, C, H, W) uint8``.
        labels: ``(N,) int64`` the clean labels in [0, K).
        rate: the share of each class to relabel, in [0, 1).

    Returns:
        ``(N,) int64`` the noisy labels (a new tensor).
    """
    scores = discriminant_scores(images, labels, num_classes, chunk)
    own = scores.gather(1, labels.view(-1, 1)).squeeze(1)
    best_other, confused_with = scores.scatter(1, labels.view(-1, 1), float("-inf")).max(1)
    ambiguity = best_other - own
    noisy = labels.clone()
    for c in range(num_classes):
        members = (labels == c).nonzero().squeeze(1)
        ranked = torch.sort(ambiguity[members], descending=True, stable=True).indices
        chosen = members[ranked[:round(rate * len(members))]]
        noisy[chosen] = confused_with[chosen]
    return noisy


def discriminant_scores(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        chunk: int = 4096) -> torch.Tensor:
    """Linear discriminant scores of every image for every class, the scorer of ``idn:P`` and ``swap:P``.

    Gaussian classes with one shared covariance Sigma (shrunk by ``IDN_SHRINKAGE`` towards its mean variance),
    fitted in closed form on the images average-pooled to at most ``IDN_SIDE`` x ``IDN_SIDE`` px (pixel values
    in [0, 1]): s_k(x) = x^T Sigma^-1 mu_k - mu_k^T Sigma^-1 mu_k / 2 + log pi_k (Hastie, Tibshirani & Friedman,
    "The Elements of Statistical Learning", 2nd ed., section 4.3, eq. 4.10); larger is likelier.

    Args:
        images: ``(N, C, H, W) uint8``.
        labels: ``(N,) int64`` in [0, K).
        chunk: images pooled at a time (memory only).

    Returns:
        ``(N, K) float64``.
    """
    n = len(labels)
    side = (min(IDN_SIDE, images.shape[2]), min(IDN_SIDE, images.shape[3]))
    x = torch.cat([F.adaptive_avg_pool2d(images[i:i + chunk].float(), side).flatten(1)
                   for i in range(0, n, chunk)]).double() / 255
    onehot = F.one_hot(labels, num_classes).double()
    counts = onehot.sum(0)
    means = (onehot.T @ x) / counts.clamp_min(1)[:, None]
    centred = x - means[labels]
    cov = centred.T @ centred / max(n - num_classes, 1)
    cov = (1 - IDN_SHRINKAGE) * cov + IDN_SHRINKAGE * float(cov.diagonal().mean().clamp_min(1e-12)) * \
        torch.eye(len(cov), dtype=torch.float64)
    a = torch.linalg.solve(cov, means.T)
    return x @ a - 0.5 * (means * a.T).sum(1) + torch.log(counts.clamp_min(1) / n)


def similar_class_pairs(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[tuple[int, int]]:
    """The classes paired by similarity, most similar first, for ``swap:P``.

    Greedy matching on the confusions of :func:`discriminant_scores`: C[a, b] counts the images of class a whose
    strongest other class is b; the pairs are taken in order of C[a, b] + C[b, a], largest first (ties to the
    lower indices), each unless one of its classes is already paired. On Fashion-MNIST: the pairs an annotator
    mixes up (Sandal and Sneaker, T-shirt/top and Shirt, Trouser and Dress, Pullover and Coat, Bag and Ankle
    boot).

    Args:
        images: ``(N, C, H, W) uint8``.
        labels: ``(N,) int64`` in [0, K).

    Returns:
        ``[(a, b), ...]`` class indices with a < b, each class in at most one pair; K // 2 pairs (with K odd, one
        class is left out).
    """
    scores = discriminant_scores(images, labels, num_classes)
    confused_with = scores.scatter(1, labels.view(-1, 1), float("-inf")).argmax(1)
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((labels, confused_with), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    similarity = counts + counts.T
    a, b = torch.triu_indices(num_classes, num_classes, offset=1).tolist()
    candidates = sorted(zip(a, b), key=lambda ab: (-float(similarity[ab]), ab))
    pairs, paired = [], set()
    for x, y in candidates:
        if x not in paired and y not in paired:
            pairs.append((x, y))
            paired |= {x, y}
    return pairs
