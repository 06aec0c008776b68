"""What refined labels say, as numbers: entropy, agreement, class overlap, and which images to show.

Letters: N training images, K classes, G generations. Every function takes
NumPy arrays: refined labels ``(N, K) float`` rows of probabilities (a
generation's ``labels.npz``, on each image itself) and labels ``(N,) int64``.
Shares are fractions in [0, 1]; entropies are in nats.

These are the numbers behind ``refinery inspect`` (:mod:`labelrefinery.report.inspection`):
the paper's Figure 4 (Bagherinezhad et al. 2018, "Label Refinery", arXiv
1805.02641, section 4) shows one image's top-3 refined labels at every
generation; :func:`pick_images` chooses which images to show that way.
"""

from __future__ import annotations

import numpy as np

from ..noise.quality import suggested_labels


def class_overlap(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K) float64``: row i is the mean refined label of the images labelled i (NaN for a class with none).

    Entry (i, j) is the probability mass images of class i give to class j: large
    off-diagonal entries are classes the refinery thinks co-occur or are confusable.
    Each row of a class with images sums to 1.
    """
    sums = np.zeros((num_classes, num_classes))
    np.add.at(sums, labels, np.asarray(probs, dtype=np.float64))
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K) int64`` counts: entry (i, j) is how many images labelled i have ``predicted`` label j (for
    refined labels, their :func:`suggested_labels`)."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def top_k(probs: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(classes (N, k) int64, probabilities (N, k) float)`` of each row's k largest entries, largest first
    (ties: the lower class first)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, 1)


def pick_images(label_sets: list[np.ndarray], given: np.ndarray, count: int, rng: np.random.Generator,
                clean: np.ndarray | None = None, judge: int = -1) -> dict[str, np.ndarray]:
    """Which images to show, as ``(<= count,) int64`` row positions per group, each group without repeats.

    ``judge`` is the position in ``label_sets`` of the generation whose labels decide the disputed and noise
    groups (default the last; ``refinery inspect`` uses the best by validation, as ``label-issues`` does).

    Groups: ``disputed`` (lowest refined probability of the given label in the judged generation, the order of
    ``label_issues.csv``), ``changed`` (largest total variation ``sum_g 0.5 * |p_g - p_(g-1)|_1`` between
    consecutive generations; with one generation, between the one-hot given label and R1's labels),
    ``random`` (uniform, from ``rng``); with ``clean`` labels (injected noise), also ``flipped_corrected``,
    ``flipped_missed`` (flipped, suggested label still not the clean class) and ``clean_harmed``
    (unflipped, disputed), most confident first; all judged by ``judge`` with :func:`suggested_labels`.

    Raises:
        ValueError: ``count`` < 1 or no generations.
    """
    if count < 1 or not label_sets:
        raise ValueError(f"need count >= 1 and at least one generation, got count={count}, {len(label_sets)} sets")
    last = label_sets[judge]
    rows = np.arange(len(given))
    p_given = last[rows, given]
    onehot = np.eye(last.shape[1])[given]
    chain = [onehot, *label_sets] if len(label_sets) == 1 else label_sets
    variation = sum(0.5 * np.abs(b - a).sum(1) for a, b in zip(chain, chain[1:]))
    groups = {
        "disputed": np.argsort(p_given, kind="stable")[:count],
        "changed": np.argsort(-variation, kind="stable")[:count],
        "random": np.sort(rng.choice(len(given), size=min(count, len(given)), replace=False)),
    }
    if clean is not None:
        top, confidence = suggested_labels(given, last), last.max(1)
        flipped = given != clean
        masks = {"flipped_corrected": flipped & (top == clean), "flipped_missed": flipped & (top != clean),
                 "clean_harmed": ~flipped & (top != given)}
        for name, mask in masks.items():
            where = np.flatnonzero(mask)
            groups[name] = where[np.argsort(-confidence[where], kind="stable")][:count]
    return {name: g.astype(np.int64) for name, g in groups.items()}


def crop_disagreement(crop_probs: np.ndarray, confident: float = 0.5) -> np.ndarray:
    """How confidently a refinery's labels of several crops of one image disagree, per image.

    The "crop shows only the ball" case: crops each labelled with confidence, with different classes.

    Args:
        crop_probs: ``(N, C, K)`` refined labels of C crops of each of N images.
        confident: a crop counts when its largest probability is at least this.

    Returns:
        ``(N,) float64``: the number of distinct argmax classes among the confident crops, plus the mean
        total variation of each crop's label from the crops' mean label (in [0, 1), so it only breaks ties).
    """
    top, sure = crop_probs.argmax(2), crop_probs.max(2) >= confident
    distinct = np.array([len(np.unique(t[s])) for t, s in zip(top, sure)], dtype=np.float64)
    spread = 0.5 * np.abs(crop_probs - crop_probs.mean(1, keepdims=True)).sum(2).mean(1)
    return distinct + np.minimum(spread, 0.999)
