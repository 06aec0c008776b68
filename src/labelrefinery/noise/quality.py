"""How refined labels relate to the given labels and, where known, to the true ones: one rule, one function;
and the ranking of label issues (most disputed first, cleanlab's ``rank_by="self_confidence"``).

Numpy in, numbers out, shaped like cleanlab's: ``given (N,) int64`` labels first, refined labels
(``pred_probs``) ``(N, K) float`` probability rows second; ``clean (N,) int64`` true labels where known
(injected noise, or labels a user verified). Shares are fractions in [0, 1]; entropies in nats.
"""

from __future__ import annotations

import numpy as np


def entropy(probs: np.ndarray) -> np.ndarray:
    """``(N,) float64`` Shannon entropy of each row of ``probs: (N, K)``, in nats (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return np.maximum(-terms.sum(1), 0.0)


def suggested_labels(given: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(N,) int64``: the class refined labels ``probs: (N, K)`` suggest for each image given ``given: (N,)``.

    The argmax, except that a given label tied with the largest probability stands: a row is *disputed* only
    when another class is strictly more probable than its given label. Rows stored as float16, or made from
    bf16 logits, tie now and then, and ``argmax`` alone would then pick whichever class has the lower index.
    Every statistic of refined labels (:func:`label_statistics`, :func:`confusion`, :func:`pick_images`,
    ``refinery label-issues``) uses this one rule.
    """
    p = np.asarray(probs)
    given = np.asarray(given, dtype=np.int64)
    p_given = p[np.arange(len(given)), given]
    return np.where(p.max(1) > p_given, p.argmax(1), given).astype(np.int64)


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def label_statistics(given: np.ndarray, probs: np.ndarray, clean: np.ndarray | None = None,
                     previous: np.ndarray | None = None) -> dict[str, float | None]:
    """Every number reported about one generation's refined labels, from the rows exactly as stored.

    ``summary.json`` (``refined_label_entropy``, ``refined_label_agreement``, ``label_quality``), the results
    table, ``refinery inspect`` and its page all take their figures from this one function, given the rows a
    generation's ``labels.npz`` reads back as (after float16 or top-J storage).

    Args:
        probs: ``(N, K) float`` refined labels (probability rows) of N training images, each counted once.
        given: ``(N,) int64`` the labels the run was given (noisy when noise was injected).
        clean: ``(N,) int64`` the true labels (injected noise, or labels a user verified), or None.
        previous: ``(N,) int64`` the previous generation's suggested labels (:func:`suggested_labels`), or None
            (the first generation: compared with the given labels).

    Returns:
        Shares in [0, 1] (None for a share of an empty set): ``mean_entropy`` (nats), ``agreement`` (suggested
        label = given label), ``disputed`` (1 - agreement: another class strictly more probable than the given
        label), ``changed`` (suggested label differs from ``previous``). With ``clean``: ``flipped`` (given label
        wrong), ``corrected`` (of the flipped, suggested label = clean label), ``harmed`` (of the unflipped,
        disputed), and ``detection_precision``, ``detection_recall``, ``detection_f1`` of "disputed" as a
        detector of wrong given labels.
    """
    given = np.asarray(given, dtype=np.int64)
    n = len(given)
    suggested = suggested_labels(given, probs)
    disputed = suggested != given
    before = given if previous is None else np.asarray(previous, dtype=np.int64)
    out = {"mean_entropy": float(entropy(probs).mean()) if n else None,
           "agreement": _share(int((~disputed).sum()), n), "disputed": _share(int(disputed.sum()), n),
           "changed": _share(int((suggested != before).sum()), n)}
    if clean is None:
        return out
    clean = np.asarray(clean, dtype=np.int64)
    flipped = given != clean
    tp = int((disputed & flipped).sum())
    precision, recall = _share(tp, int(disputed.sum())), _share(tp, int(flipped.sum()))
    out.update({
        "flipped": _share(int(flipped.sum()), n),
        "corrected": _share(int((flipped & (suggested == clean)).sum()), int(flipped.sum())),
        "harmed": _share(int((~flipped & disputed).sum()), int((~flipped).sum())),
        "detection_precision": precision, "detection_recall": recall,
        "detection_f1": 2 * precision * recall / (precision + recall) if precision and recall else None,
    })
    return out


def suggestion_precision(given: np.ndarray, probs: np.ndarray, clean: np.ndarray) -> list[dict]:
    """How often each suggested relabelling is right, pair by pair. Over-correction of one side of a swapped pair
    shows here where the overall detection precision hides it.

    Args:
        given: ``(N,) int64`` the given labels.
        probs: ``(N, K) float`` refined labels; the suggestion is :func:`suggested_labels`'.
        clean: ``(N,) int64`` the true labels.

    Returns:
        One dict per (given class y, suggested class c != y) that some image gets: ``{"given": y, "suggested": c,
        "count": images, "precision": the share (in [0, 1]) of them whose true label is c}``, most suggested first.
    """
    given, clean = np.asarray(given, dtype=np.int64), np.asarray(clean, dtype=np.int64)
    suggested = suggested_labels(given, probs)
    moved = suggested != given
    pairs, which, counts = np.unique(np.stack([given[moved], suggested[moved]], 1), axis=0, return_inverse=True,
                                     return_counts=True)
    right = np.bincount(which.reshape(-1), weights=clean[moved] == suggested[moved], minlength=len(counts))
    out = [{"given": int(y), "suggested": int(c), "count": int(n), "precision": float(r / n)}
           for (y, c), n, r in zip(pairs.reshape(-1, 2), counts, right)]
    return sorted(out, key=lambda r: (-r["count"], r["given"], r["suggested"]))


def generation_label_stats(given: np.ndarray, label_sets: list[np.ndarray],
                           clean: np.ndarray | None = None) -> list[dict[str, float | None]]:
    """:func:`label_statistics` of each generation, ``changed`` counted from the generation before (for the
    first, from the given label).

    Args:
        label_sets: G arrays ``(N, K)``, the refined labels of generations 1..G on the same N images.
        given: ``(N,) int64`` the given labels.
        clean: ``(N,) int64`` the true labels, or None.
    """
    out, previous = [], None
    for probs in label_sets:
        out.append(label_statistics(given, probs, clean, previous))
        previous = suggested_labels(given, probs)
    return out


def given_label_scores(given: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p_given, margin)``, each ``(M,) float``: the refined probability of the given label, and it minus the
    largest other probability (negative exactly when :func:`~labelrefinery.noise.estimate.disputes` holds: another class
    has a strictly larger probability; a tie with the top class is 0, no dispute).

    Args:
        given: ``(M,) int64`` the given labels.
        probs: ``(M, K)`` refined labels (rows of probabilities).
    """
    rows = np.arange(len(given))
    p_given = probs[rows, given]
    other = probs.copy()
    other[rows, given] = -np.inf
    return p_given, p_given - other.max(1)


def rank_label_issues(given: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Row order of ``probs: (M, K)`` by refined probability of ``given: (M,) int64`` ascending, then margin.

    Returns:
        ``(M,) int64`` positions, most disputed first.
    """
    return most_disputed_first(*given_label_scores(given, probs))


def most_disputed_first(p_given: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """``(M,) int64`` positions by ``p_given`` ascending, ties by ``margin`` ascending (see
    :func:`given_label_scores`)."""
    return np.lexsort((margin, p_given))
