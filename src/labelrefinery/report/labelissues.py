"""Label issues: the training images whose given label a generation's refined labels dispute, ranked.

``refinery label-issues RUN_DIR`` reads one generation's ``labels.npz`` (the
refinery's own labels, on each training image itself, not on stored augmented
copies) and the seed's ``split.npz``, and writes:

- ``label_issues.csv``: one row per disputed image (another class has a larger refined
  probability than the given label; ``--all`` for every image), most disputed first: ranked by the
  refined probability of the given label, ascending (the order of cleanlab's
  ``rank_by="self_confidence"``), ties by margin.
  Columns: ``rank``, ``index`` (position in the dataset's training split), ``given_label``,
  ``suggested_label`` (refined argmax; the given label where it ties with the top), ``p_given``, ``p_suggested``, ``margin``
  (p_given minus the largest other probability: negative when disputed), ``top3``
  (``class:probability`` thrice, ``;``-separated) and, with injected noise,
  ``clean_label`` and ``flipped``.
- ``label_issues_pred_probs.npy`` ``(M, K) float32``, ``label_issues_labels.npy`` ``(M,) int64`` (given) and
  ``label_issues_indices.npy`` ``(M,) int64``: every training image's refined labels in ascending dataset
  order, the ``pred_probs`` / ``labels`` pair cleanlab's ``find_label_issues`` takes.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import ConfigError, RunDirError
from .tables import best_of
from ..rundir import RunDir


def given_label_scores(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p_given, margin)``, each ``(M,) float``: the refined probability of the given label, and it minus the
    largest other probability (negative exactly when :func:`~labelrefinery.noise.disputes` holds: another class
    has a strictly larger probability; a tie with the top class is 0, no dispute).

    Args:
        probs: ``(M, K)`` refined labels (rows of probabilities).
        given: ``(M,) int64`` the given labels.
    """
    rows = np.arange(len(given))
    p_given = probs[rows, given]
    other = probs.copy()
    other[rows, given] = -np.inf
    return p_given, p_given - other.max(1)


def rank_label_issues(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Row order of ``probs: (M, K)`` by refined probability of ``given: (M,) int64`` ascending, then margin.

    Returns:
        ``(M,) int64`` positions, most disputed first.
    """
    return _most_disputed_first(*given_label_scores(probs, given))


def _most_disputed_first(p_given: np.ndarray, margin: np.ndarray) -> np.ndarray:
    return np.lexsort((margin, p_given))


def own_labels(rd: RunDir, seed: int, generation: int) -> tuple[np.ndarray, np.ndarray, list[str], bool]:
    """A generation's refined labels on the training images themselves (not stored augmented copies).

    Returns:
        ``(indices (M,) int64 ascending, labels (M, K) float32, class names, refinery_only)``; refinery_only is
        False for files of older versions, which stored the labels after the ``--gt-weight`` mix.

    Raises:
        RunDirError: a missing or damaged ``labels.npz``.
    """
    saved = rd.load_labels(seed, generation)
    own = saved["views"] == 0
    indices, probs = saved["indices"][own], saved["labels"][own]
    order = np.argsort(indices, kind="stable")
    return indices[order], probs[order], [str(c) for c in saved["classes"]], bool(saved["refinery_only"])


def split_labels(split: dict[str, np.ndarray], indices: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(given, clean)`` labels ``(M,) int64`` of the training images ``indices`` from a seed's ``split.npz``
    arrays; given is None in splits of older versions (which did not store it), clean is None without
    injected noise."""
    if "train_labels" not in split:
        return None, None
    sorter = np.argsort(split["train_indices"], kind="stable")  # where each image sits in the split's arrays
    pos = sorter[np.searchsorted(split["train_indices"], indices, sorter=sorter)]
    given = split["train_labels"][pos].astype(np.int64)
    clean = split["clean_train_labels"][pos].astype(np.int64) if "clean_train_labels" in split else None
    return given, clean


def issue_rows(probs: np.ndarray, given: np.ndarray, indices: np.ndarray, classes: list[str],
               clean: np.ndarray | None = None, include_all: bool = False, limit: int | None = None) -> list[dict]:
    """The rows of ``label_issues.csv`` (see the module docstring), most disputed first, as dicts by column.

    Args:
        probs: ``(M, K)`` refined labels; given, indices, clean: ``(M,) int64``.
        include_all: a row for every image, not only those whose refined argmax differs from the given label.
        limit: at most this many rows.
    """
    p_given, margin = given_label_scores(probs, given)
    ranked = _most_disputed_first(p_given, margin)
    suggested = np.where(margin < 0, probs.argmax(1), given)  # a given label tied with the top one stands
    if not include_all:
        ranked = ranked[margin[ranked] < 0]
    ranked = ranked[:limit]
    top3 = np.argsort(-probs[ranked], axis=1, kind="stable")[:, :3]
    rows = []
    for rank, (r, best) in enumerate(zip(ranked.tolist(), top3.tolist()), 1):
        p = probs[r]
        row = {"rank": rank, "index": int(indices[r]), "given_label": classes[given[r]],
               "suggested_label": classes[suggested[r]], "p_given": f"{p_given[r]:.4f}",
               "p_suggested": f"{p[suggested[r]]:.4f}", "margin": f"{margin[r]:.4f}",
               "top3": ";".join(f"{classes[k]}:{p[k]:.3f}" for k in best)}
        if clean is not None:
            row.update(clean_label=classes[clean[r]], flipped=int(clean[r] != given[r]))
        rows.append(row)
    return rows


def write_label_issues(run_dir: Path, generation: int | None = None, seed: int = 0, out: Path | None = None,
                       include_all: bool = False) -> tuple[Path, int, int]:
    """Write the label-issue files of one generation of one seed (see the module docstring).

    Args:
        generation: which generation's refined labels; None: the seed's best generation by validation.
        seed: the run seed.
        out: the CSV path (default ``RUN_DIR/label_issues.csv``); the ``.npy`` files go beside it.
        include_all: a row for every training image, not only the disputed ones.

    Returns:
        ``(csv path, rows written, training images)``.

    Raises:
        RunDirError: not a run directory, the seed or generation not finished, or a damaged file.
        ConfigError: a seed or generation outside the run.
    """
    rd = RunDir(run_dir)
    if not rd.is_run():
        raise RunDirError(f"{run_dir} is not a run directory (no config.yaml); give the directory `refinery run` made")
    rd.read_config()  # verified, as every command that reads a run does
    if out is not None:
        rd.check_output_path(Path(out), ".csv", beside="the .npy files go beside it")
    # No lock: a finished generation's files never change (a run writes each atomically, once), so a run may
    # train in the directory meanwhile, and a read-only directory works with --out elsewhere.
    return _write_issues(rd, generation, seed, out, include_all)


def _write_issues(rd: RunDir, generation: int | None, seed: int, out: Path | None,
                  include_all: bool) -> tuple[Path, int, int]:
    run_dir = rd.root
    finished = rd.finished_generations(seed) if seed in rd.seeds() else []
    if not finished:
        raise ConfigError(f"seed {seed} has no finished generation in {run_dir}; finished seeds: "
                          f"{[s for s in rd.seeds() if rd.finished_generations(s)]}")
    if generation is None:
        generation = best_of([rd.read_summary(seed, g) for g in finished])["generation"]
    elif generation not in finished:
        raise ConfigError(f"--generation {generation} is not finished for seed {seed}; finished: {finished}")
    indices, probs, classes, _ = own_labels(rd, seed, generation)
    given, clean = split_labels(rd.read_split(seed), indices)
    if given is None:
        raise RunDirError(f"{rd.seed_dir(seed) / 'split.npz'} predates stored training labels; rerun `refinery run` "
                          f"on {run_dir} with the same settings to add them (finished generations are kept)")
    rows = issue_rows(probs, given, indices, classes, clean, include_all)
    header = ["rank", "index", "given_label", "suggested_label", "p_given", "p_suggested", "margin", "top3"]
    header += ["clean_label", "flipped"] if clean is not None else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = Path(out) if out is not None else rd.label_issues_path
    try:
        rd.write_label_issues(buf.getvalue(), {"pred_probs": probs.astype(np.float32), "labels": given,
                                               "indices": indices}, out)
    except RunDirError as e:
        if out is not None:
            raise
        raise RunDirError(f"cannot write {csv_path} into the run directory ({str(e).split(': ', 1)[-1]}); give "
                          "--out FILE.csv in a writable place") from None
    return csv_path, len(rows), len(indices)
