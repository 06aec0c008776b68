"""Label issues: the training images whose given label a generation's refined labels dispute, ranked.

``refinery label-issues RUN_DIR`` reads one generation's ``labels.npz`` (the
refinery's own labels, on each training image itself, not on stored augmented
copies) and the seed's ``split.npz``, and writes:

- ``label_issues.csv``: one row per disputed image (refined argmax differs from the
  given label; ``--all`` for every image), most disputed first: ranked by the
  refined probability of the given label, ascending (the order of cleanlab's
  ``rank_by="self_confidence"``), ties by margin.
  Columns: ``rank``, ``index`` (position in the dataset's training split), ``given_label``,
  ``suggested_label`` (refined argmax), ``p_given``, ``p_suggested``, ``margin``
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

from .errors import ConfigError, RunDirError
from .fileio import atomic_write_bytes, atomic_write_text
from .report import best_of
from .rundir import RunDir


def given_label_scores(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p_given, margin)``, each ``(M,) float``: the refined probability of the given label, and it minus the
    largest other probability (negative when the refined argmax disputes the label).

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


def check_out_path(rd: RunDir, out: Path) -> None:
    """Refuse an ``--out`` that is not a ``.csv`` file path, or that would land among the run's own files.

    Raises:
        ConfigError: a directory, a name not ending in ``.csv``, or a place inside the run directory other
            than its top level (where only ``label_issues``-style names are free).
    """
    if out.suffix != ".csv" or out.is_dir():
        raise ConfigError(f"--out {out} must be a file path ending in .csv (the .npy files go beside it)")
    root, where = rd.root.resolve(), out.resolve().parent
    if where != root and root in where.parents:
        raise ConfigError(f"--out {out} is inside the run's seed directories; choose a path outside them or leave "
                          "--out out (RUN_DIR/label_issues.csv)")


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
    if out is not None:
        check_out_path(rd, Path(out))
    with rd.lock():  # no run may change the generation while it is read
        return _write_locked(rd, generation, seed, out, include_all)


def _write_locked(rd: RunDir, generation: int | None, seed: int, out: Path | None,
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
    saved = rd.load_labels(seed, generation)
    split = rd.read_split(seed)
    if "train_labels" not in split:
        raise RunDirError(f"{rd.seed_dir(seed) / 'split.npz'} predates stored training labels; rerun `refinery run` "
                          f"on {run_dir} with the same settings to add them (finished generations are kept)")
    own = saved["views"] == 0
    indices, probs = saved["indices"][own], saved["labels"][own]
    order = np.argsort(indices, kind="stable")
    indices, probs = indices[order], probs[order]
    sorter = np.argsort(split["train_indices"], kind="stable")  # where each image sits in the split's arrays
    pos = sorter[np.searchsorted(split["train_indices"], indices, sorter=sorter)]
    given = split["train_labels"][pos].astype(np.int64)
    clean = split["clean_train_labels"][pos] if "clean_train_labels" in split else None
    classes = [str(c) for c in saved["classes"]]
    p_given, margin = given_label_scores(probs, given)
    ranked = _most_disputed_first(p_given, margin)
    suggested = probs.argmax(1)
    top3 = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    if not include_all:
        ranked = ranked[suggested[ranked] != given[ranked]]
    header = ["rank", "index", "given_label", "suggested_label", "p_given", "p_suggested", "margin", "top3"]
    header += ["clean_label", "flipped"] if clean is not None else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for rank, r in enumerate(ranked.tolist(), 1):
        p = probs[r]
        row = [rank, int(indices[r]), classes[given[r]], classes[suggested[r]], f"{p_given[r]:.4f}",
               f"{p[suggested[r]]:.4f}", f"{margin[r]:.4f}", ";".join(f"{classes[k]}:{p[k]:.3f}" for k in top3[r])]
        if clean is not None:
            row += [classes[clean[r]], int(clean[r] != given[r])]
        writer.writerow(row)
    csv_path = Path(out) if out is not None else rd.label_issues_path
    stem = csv_path.with_suffix("")
    for suffix, array in (("pred_probs", probs.astype(np.float32)), ("labels", given), ("indices", indices)):
        npy = io.BytesIO()
        np.save(npy, array)
        atomic_write_bytes(Path(f"{stem}_{suffix}.npy"), npy.getvalue())
    atomic_write_text(csv_path, buf.getvalue())
    return csv_path, len(ranked), len(indices)
