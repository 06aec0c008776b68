"""Reading label noise from a refinery's labels, and the posterior of the true class under it.

Every function takes the given labels first and a refinery's refined labels (cleanlab's ``pred_probs``)
second: ``given (N,) int64``, ``refined (N, K) float`` probability rows. Letters: N images, K classes.

The noise model is a transition matrix T of shape (K, K), **T[c, y] = P(given label y | true class c)**, rows
summing to 1 (Patrini et al. 2017, "Making deep neural networks robust to label noise: a loss correction
approach"). It is cleanlab's ``noise_matrix`` transposed: cleanlab's ``noise_matrix[i][j]`` is
P(given label i | true label j), columns summing to 1.
"""

from __future__ import annotations

import torch

from .inject import max_noise_rate


def disputes(given: torch.Tensor, refined: torch.Tensor) -> torch.Tensor:
    """``(N,) bool``: another class has a strictly larger refined probability than the given label.

    Args:
        given: ``(N,) int64`` the given labels.
        refined: ``(N, K)`` refined labels (probabilities or logits).

    A given label tied with the top class (rows stored in float16 tie now and then) is not disputed, whatever
    the class order, unlike ``argmax != given``.
    """
    p_given = refined.gather(1, given.to(refined.device).view(-1, 1)).squeeze(1)
    return refined.max(1).values > p_given


def estimate_symmetric_noise(given: torch.Tensor, refined: torch.Tensor) -> float:
    """The share of given labels a refinery trained on them believes wrong, under symmetric label noise.

    A model fitted to labels of which a share r was replaced by a uniformly drawn other class predicts
    that noise: where it is sure of the true class, every other class keeps about r / (K - 1) of the
    probability. The estimate is (K - 1) x the median over images of the median of each row's K - 1
    non-top probabilities, capped at the share of images whose refined argmax differs from the given label
    (a refinery cannot believe more labels wrong than it disputes; an under-trained one, unsure of every
    image, would otherwise read as noise). It reads near 0 for a refinery that memorised its labels (near
    one-hot rows) and needs calibrated soft rows from a model trained without label smoothing: a run passes R1's rows
    at the temperature fitted on validation (:mod:`~labelrefinery.noise.calibrate`; its accuracy: BENCHMARKS.md,
    "Telling the refinery how noisy the labels are" and "Calibrated before estimating").

    Args:
        refined: ``(N, K) float`` soft refined labels of a refinery trained on the given labels, K >= 2.
        given: ``(N,) int64`` the given labels.

    Returns:
        r in [0, 1 - 1/K), clipped just below that bound.
    """
    num_classes = refined.shape[1]
    rest = refined.float().sort(dim=1, descending=True).values[:, 1:]
    floor = float(rest.median(dim=1).values.median()) * (num_classes - 1)
    disputed = float(disputes(given, refined).float().mean())
    return min(max(min(floor, disputed), 0.0), max_noise_rate(num_classes) * 0.99)


def symmetric_transition(num_classes: int, noise_rate: float) -> torch.Tensor:
    """The transition matrix of symmetric label noise of rate r: ``(K, K) float32``, T[c, y] = P(given label y |
    true class c) = 1 - r on the diagonal and r / (K - 1) elsewhere.

    Raises:
        ValueError: r outside [0, 1 - 1/K) (T is then not invertible, or a wrong class is likelier than the
            right one).
    """
    if not 0.0 <= noise_rate < max_noise_rate(num_classes):
        raise ValueError(f"noise rate must be in [0, {max_noise_rate(num_classes):.3g}) for {num_classes} classes, "
                         f"got {noise_rate}")
    off = noise_rate / (num_classes - 1)
    return torch.full((num_classes, num_classes), off) + (1 - noise_rate - off) * torch.eye(num_classes)


def estimate_noise_transition(given: torch.Tensor, refined: torch.Tensor) -> torch.Tensor:
    """Class-conditional label noise read from a refinery trained on the given labels: ``(K, K) float32`` T,
    T[c, y] = P(given label y | true class c), rows summing to 1.

    A model fitted to noisy labels predicts their noise: on an image of class c its soft labels approach row c
    of T. Row c is the elementwise median of the refined rows of every image whose refined argmax is c,
    renormalised: the anchor-point estimator of T in Patrini et al. 2017 ("Making deep neural networks robust
    to label noise: a loss correction approach"; row c = the noisy-label prediction on an image surely of class
    c), with the median over the images the refinery puts in class c in place of their single image at the 97th
    percentile of p~_c. A class that no image's argmax picks keeps the identity row. As with
    :func:`estimate_symmetric_noise`, the share of wrong labels T implies,
    sum_c pi_c (1 - T[c, c]) with pi the given labels' class shares, is capped at the share of given labels
    the refinery disputes (T shrunk towards the identity): an unsure refinery does not read as noise.
    Its accuracy: BENCHMARKS.md, "Class-conditional noise".

    Args:
        refined: ``(N, K) float`` calibrated soft refined labels of a refinery trained on the given labels (a run
            passes R1's rows at the temperature fitted on validation, :mod:`~labelrefinery.noise.calibrate`).
        given: ``(N,) int64`` the given labels.

    Returns:
        ``(K, K) float32`` on the CPU.
    """
    return _capped_transition(given, refined)[0]


def _capped_transition(given: torch.Tensor, refined: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """:func:`estimate_noise_transition`'s T, and whether the cap at the disputed share shrank it."""
    p, given = refined.float().cpu(), given.cpu()
    num_classes = p.shape[1]
    top = p.argmax(1)
    transition = torch.eye(num_classes)
    for c in range(num_classes):
        rows = p[top == c]
        if len(rows):
            median = rows.median(dim=0).values.clamp_min(0)
            transition[c] = median / median.sum() if median.sum() > 0 else transition[c]
    implied = implied_noise_rate(given, transition)
    disputed = float(disputes(given, p).float().mean())
    if implied > disputed:
        return torch.eye(num_classes) + (disputed / implied) * (transition - torch.eye(num_classes)), True
    return transition, False


def implied_noise_rate(given: torch.Tensor, transition: torch.Tensor) -> float:
    """The share of wrong labels a ``(K, K)`` transition matrix T implies for the ``(N,) int64`` given labels:
    sum_c pi_c (1 - T[c, c]), pi the given labels' class shares (a fraction in [0, 1])."""
    shares = torch.bincount(given.cpu(), minlength=len(transition)).float() / len(given)
    return float((shares * (1 - transition.float().cpu().diagonal())).sum())


CLASSWISE_CONCENTRATION = 0.5  # wrong labels count as class-dependent from this noise_concentration on


def noise_concentration(given: torch.Tensor, transition: torch.Tensor) -> float:
    """How much of the wrong labels a ``(K, K)`` transition matrix T implies go, class by class, to one other class:
    sum_c pi_c max_{y != c} T[c, y] / sum_c pi_c (1 - T[c, c]), pi the ``(N,) int64`` given labels' class shares.

    1 for pair flips and swaps (every wrong label of a class has one class), 1 / (K - 1) for symmetric noise
    (spread evenly over the others); 0 when T implies no wrong labels. Shrinking T towards the identity (as
    :func:`estimate_noise_transition` does) leaves it unchanged. ``--noise-prior evidence``
    (:mod:`labelrefinery.noisemodel`) and ``results.md`` count wrong labels as class-dependent from
    ``CLASSWISE_CONCENTRATION`` on; a measure of this project, no published formula.

    Returns:
        A fraction in [0, 1].
    """
    t = transition.float().cpu()
    shares = torch.bincount(given.cpu(), minlength=len(t)).float() / max(len(given), 1)
    off = t.clone()
    off.fill_diagonal_(0.0)
    wrong = float((shares * off.sum(1)).sum())
    return float((shares * off.max(1).values).sum()) / wrong if wrong > 0 else 0.0


def largest_transitions(transition: torch.Tensor, count: int = 5) -> list[list]:
    """The ``count`` largest off-diagonal entries of a ``(K, K)`` transition matrix, largest first, as
    ``[true class (int), given class (int), P(given | true) (float, 4 decimals)]`` rows."""
    off = transition.float().clone()
    off.fill_diagonal_(-1.0)
    values, flat = off.flatten().topk(min(count, off.numel() - len(off)))
    k = off.shape[1]
    return [[int(i) // k, int(i) % k, round(float(v), 4)] for v, i in zip(values, flat)]


def noisy_label_posterior(given: torch.Tensor, refined: torch.Tensor, transition: torch.Tensor,
                          denoise: bool) -> torch.Tensor:
    """P(true class | refined labels, given label) under label noise with transition matrix T.

    The noise model: T[c, y] = P(given label y | true class c) (:func:`symmetric_transition` for symmetric noise
    of rate r, :func:`estimate_noise_transition` for class-conditional noise). With ``denoise`` the refined rows
    come from a refinery trained on the given labels, so they estimate the *noisy* label distribution
    p~ = p T (row vectors); they are first mapped back, p = p~ T^-1 (the pseudo-inverse, should an estimated T
    be singular), clipped at 1e-4 and renormalised (the
    backward correction of Patrini et al. 2017, "Making deep neural networks robust to label noise: a loss
    correction approach", section 3; for symmetric noise p_c = (p~_c - r / (K - 1)) / (1 - r K / (K - 1))).
    Then Bayes' rule with the given label y: q_c proportional to p_c T[c, y]. The given label keeps its class
    unless the refinery is confident of another: a soft target that trusts ground truth exactly as much as
    the noise allows.

    Args:
        refined: ``(N, K) float32`` refined labels (rows summing to 1).
        given: ``(N,) int64`` given labels.
        transition: ``(K, K) float`` T, rows summing to 1.
        denoise: whether the refinery fitted the given labels (generation 1 of a chain).

    Returns:
        ``(N, K) float32`` rows summing to 1.

    Raises:
        ValueError: a transition matrix that is not K x K.
    """
    num_classes = refined.shape[1]
    if tuple(transition.shape) != (num_classes, num_classes):
        raise ValueError(f"transition matrix must be {num_classes} x {num_classes}, got {tuple(transition.shape)}")
    p = refined.float()
    t = transition.to(device=p.device, dtype=torch.float64)
    if denoise:
        p = (p.double() @ torch.linalg.pinv(t)).float().clamp_min(1e-4)
        p = p / p.sum(1, keepdim=True)
    q = p * t.float().T[given.to(p.device)]
    return q / q.sum(1, keepdim=True)


def classwise_summary(given: torch.Tensor, refined: torch.Tensor) -> dict:
    """What :func:`estimate_noise_transition` reads in ``(N, K)`` refined labels of the given ``(N,) int64``
    labels, in a form small enough for a summary whatever K: ``rate``, the share of wrong labels T implies
    (:func:`implied_noise_rate`), ``concentration`` (:func:`noise_concentration`), ``capped`` (bool: the rate
    is the share of given labels the refinery disputes, the estimator's cap), and ``largest``, its five
    largest off-diagonal entries as ``[true class, given class, P(given | true)]``."""
    transition, capped = _capped_transition(given, refined)
    return {"rate": implied_noise_rate(given, transition), "concentration": noise_concentration(given, transition),
            "capped": capped,
            "largest": largest_transitions(transition)}


def wilson_interval(count: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share ``count / total`` (95% for z = 1.96): ``(low, high)`` fractions
    (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the normal approximation for small totals)."""
    if total <= 0:
        return 0.0, 1.0
    p = count / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * (p * (1 - p) / total + z * z / (4 * total * total)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def trusted_transition(given: torch.Tensor, verified: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The noise transition matrix counted on images with verified labels: ``(K, K) float32``,
    T[c, y] = (#(verified c, given y) + [c = y]) / (#(verified c) + 1), rows summing to 1.

    The estimator of Hendrycks et al. 2018 ("Using Trusted Data to Train Deep Networks on Labels Corrupted by
    Severe Noise", section 3) with the trusted labels' own given labels in place of a model's predictions of
    them; the one pseudo-count on the diagonal keeps a class with no verified image at the identity row.

    Args:
        given: ``(T,) int64`` the labels the dataset gave the verified images.
        verified: ``(T,) int64`` their verified labels.
    """
    counts = confusion_counts(given, verified, num_classes) + torch.eye(num_classes)
    return counts / counts.sum(1, keepdim=True)


def confusion_counts(given: torch.Tensor, verified: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K) float32`` counts: entry [c, y] = images with verified label c and given label y."""
    counts = torch.zeros(num_classes, num_classes)
    counts.index_put_((verified.cpu(), given.cpu()), torch.ones(len(given)), accumulate=True)
    return counts


def trusted_noise_estimate(given: torch.Tensor, verified: torch.Tensor, num_classes: int) -> dict:
    """What verified labels say of the given ones: ``rate`` (share of given labels that are wrong), its 95%
    Wilson interval ``low``/``high``, ``images`` (T), and ``largest``, the five largest confusions as counted
    (the share of the verified images of a true class given as another, without :func:`trusted_transition`'s
    pseudo-count) as ``[true class, given class, share]``."""
    wrong = int((given.cpu() != verified.cpu()).sum())
    low, high = wilson_interval(wrong, len(given))
    counts = confusion_counts(given, verified, num_classes)
    observed = counts / counts.sum(1, keepdim=True).clamp_min(1)  # the shares as counted, no pseudo-count
    return {"source": "trusted", "rate": wrong / max(len(given), 1), "low": low, "high": high,
            "images": len(given), "largest": largest_transitions(observed)}
