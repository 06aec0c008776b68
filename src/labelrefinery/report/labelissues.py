"""Label issues: the images whose given label a generation disputes, ranked, every labelled image checked.

``refinery label-issues RUN_DIR`` reads one generation's ``labels.npz`` (the
refinery's own labels, on each training image itself, not on stored augmented
copies), the seed's ``split.npz`` and the dataset, and checks every image of the
dataset's training split the seed used: the training images by their refined
labels, the validation images by the generation's saved model, out of sample (no
generation trains on them). With ``--all-seeds`` every seed's opinion counts: each image's probabilities are
averaged over the seeds that checked it (:func:`seeds_opinion`). It writes:

- ``label_issues.csv``: one row per disputed image (another class has a larger
  probability than the given label; ``--all`` for every image), most disputed first: ranked by the
  probability of the given label, ascending (the order of cleanlab's
  ``rank_by="self_confidence"``), ties by margin.
  Columns: ``rank``, ``index`` (position in the dataset's training split), ``split`` (``train`` or ``val``;
  with ``--all-seeds``, ``val+train`` for an image the seeds held differently),
  ``source`` (for ``folder:PATH`` datasets: the image's file), ``given_label``,
  ``suggested_label`` (argmax; the given label where it ties with the top), ``p_given``, ``p_suggested``,
  ``margin`` (p_given minus the largest other probability: negative when disputed), ``top3``
  (``class:probability`` thrice, ``;``-separated) and, with injected noise, ``clean_label`` and ``flipped``.
- ``label_issues_pred_probs.npy`` ``(M, K) float32``, ``label_issues_labels.npy`` ``(M,) int64`` (given),
  ``label_issues_indices.npy`` ``(M,) int64`` and ``label_issues_splits.npy`` ``(M,) str``: every checked
  image in ascending dataset order, the ``pred_probs`` / ``labels`` pair cleanlab's ``find_label_issues`` takes.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import ConfigError, RunDirError
from ..noise import given_label_scores, suggested_labels
from ..noise.quality import most_disputed_first
from .tables import best_of, next_label_file
from ..rundir import RunDir


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
               clean: np.ndarray | None = None, include_all: bool = False, limit: int | None = None,
               columns: dict[str, np.ndarray] | None = None) -> list[dict]:
    """The rows of ``label_issues.csv`` (see the module docstring), most disputed first, as dicts by column.

    Args:
        probs: ``(M, K)`` refined labels; given, indices, clean: ``(M,) int64``.
        include_all: a row for every image, not only those whose refined argmax differs from the given label.
        limit: at most this many rows.
        columns: more columns after ``index``, each ``(M,)`` values by row (``split``, ``source``).
    """
    p_given, margin = given_label_scores(given, probs)
    ranked = most_disputed_first(p_given, margin)
    suggested = suggested_labels(given, probs)  # a given label tied with the top one stands
    if not include_all:
        ranked = ranked[margin[ranked] < 0]
    ranked = ranked[:limit]
    top3 = np.argsort(-probs[ranked], axis=1, kind="stable")[:, :3]
    rows = []
    for rank, (r, best) in enumerate(zip(ranked.tolist(), top3.tolist()), 1):
        p = probs[r]
        row = {"rank": rank, "index": int(indices[r]), **{k: str(v[r]) for k, v in (columns or {}).items()},
               "given_label": classes[given[r]],
               "suggested_label": classes[suggested[r]], "p_given": f"{p_given[r]:.4f}",
               "p_suggested": f"{p[suggested[r]]:.4f}", "margin": f"{margin[r]:.4f}",
               "top3": ";".join(f"{classes[k]}:{p[k]:.3f}" for k in best)}
        if clean is not None:
            row.update(clean_label=classes[clean[r]], flipped=int(clean[r] != given[r]))
        rows.append(row)
    return rows


def check_issue_options(seed: int | None, all_seeds: bool, test: bool, write_labels: Path | None,
                        min_margin: float) -> None:
    """Refuse ``refinery label-issues`` options that do not go together (ConfigError, one line each)."""
    if not 0.0 <= min_margin < 1.0:
        raise ConfigError(f"--min-margin {min_margin:g} must be in [0, 1): the lead in probability of the "
                          "suggested class over the given label")
    if write_labels is not None and Path(write_labels).suffix != ".csv":
        raise ConfigError(f"--write-labels {write_labels} must be a file path ending in .csv")
    if all_seeds and seed is not None:
        raise ConfigError(f"--all-seeds combines every seed's opinion; leave out --seed {seed}")
    if min_margin and write_labels is None:
        raise ConfigError(f"--min-margin {min_margin:g} applies to --write-labels FILE.csv; add it or leave "
                          "--min-margin out")
    if test and write_labels is not None:
        raise ConfigError("--write-labels applies the suggested labels to the training images; leave out --test (or "
                          "write the test list and fix its labels by hand)")


def check_fixed_labels_path(run_dir: Path, out: Path) -> None:
    """Refuse a ``--write-labels`` path that is the label file the run trained on (``--dataset csv:FILE``):
    rewriting it would change the data of a finished run under it (its split no longer matches).

    Raises:
        ConfigError: ``out`` is that file, with another name to use.
        RunDirError: ``run_dir`` is not a run directory.
    """
    dataset = RunDir(run_dir).read_config().data.dataset
    if dataset.startswith("csv:") and Path(dataset[4:]).expanduser().resolve() == Path(out).expanduser().resolve():
        raise ConfigError(f"--write-labels {out} is the label file this run trained on ({dataset}); writing it "
                          f"would change the run's data under it: write another file, e.g. --write-labels "
                          f"{next_label_file(dataset)}")


def write_label_issues(run_dir: Path, generation: int | None = None, seed: int = 0, out: Path | None = None,
                       include_all: bool = False, all_seeds: bool = False,
                       test: bool = False) -> tuple[Path, int, tuple[int, int, int], dict[int, int]]:
    """Write the label-issue files of one generation of one seed (see the module docstring).

    Args:
        generation: which generation's refined labels; None: the seed's best generation by validation.
        seed: the run seed.
        out: the CSV path (default ``RUN_DIR/label_issues.csv``); the ``.npy`` files go beside it.
        include_all: a row for every training image, not only the disputed ones.
        all_seeds: the mean opinion of every seed with a finished generation (:func:`seeds_opinion`), not ``seed``'s.
        test: check the test images the run reports on instead (:func:`test_labels`; their labels can be wrong too).

    Returns:
        ``(csv path, rows written, (training, validation or test, training in one seed and validation in another)
        images checked, {seed: the generation used})``.

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
    seeds = [s for s in rd.seeds() if rd.finished_generations(s)] if all_seeds else [seed]
    return _write_issues(rd, generation, seeds or [seed], out, include_all, test)


def issues_line(path: Path, rows: int, checked: tuple[int, ...], generations: dict[int, int], include_all: bool,
                chosen: bool) -> str:
    """What :func:`write_label_issues` wrote, in one line (``chosen``: each generation is its seed's best)."""
    what = "rows for all" if include_all else "disputed of the"
    by = ", ".join(f"seed {s}'s R{g}" for s, g in generations.items())
    if not checked[0]:
        parts = f"{checked[1]} test"
    else:
        both = "" if len(checked) < 3 or not checked[2] else \
            f", {checked[2]} training in one seed and validation in another"
        parts = f"{checked[0]} training, {checked[1]} validation{both}"
    return (f"{path}: {rows} {what} {sum(checked)} images checked ({parts}) "
            f"by {'the mean of ' if len(generations) > 1 else ''}{by}" + (", the best by validation" if chosen else ""))


def validation_labels(rd: RunDir, seed: int, generation: int, dataset) -> tuple[np.ndarray, ...]:
    """The seed's validation images as generation ``generation`` labels them, out of sample (no generation trains
    on them): ``(indices (V,) int64, probs (V, K) float32, given (V,) int64, clean (V,) int64 or None)``, the
    saved model run as users run it (:class:`~labelrefinery.deployed.Classifier`).

    Raises:
        RunDirError: a missing or damaged split or model.
    """
    import torch

    split = rd.read_split(seed)
    indices = split["val_indices"].astype(np.int64)
    given = split["val_labels"].astype(np.int64)
    clean = split["clean_val_labels"].astype(np.int64) if "clean_val_labels" in split else None
    probs = _saved_model_probs(rd, seed, generation, dataset, dataset.train.images[torch.from_numpy(indices)])
    return indices, probs, given, clean


def test_labels(rd: RunDir, seed: int, generation: int, dataset) -> tuple:
    """The test images the run reports on (the first ``--test-size``, or all) as generation ``generation`` labels
    them, out of sample, as :func:`checked_images` returns them (``index``: the position in the test split,
    ``split``: ``test``; clean None: injected noise never touches test labels)."""
    from ..protocol import reported_test_set

    images, labels = reported_test_set(dataset, rd.read_config())
    probs = _saved_model_probs(rd, seed, generation, dataset, images)
    return (np.arange(len(labels), dtype=np.int64), probs, labels.numpy().astype(np.int64), None,
            np.array(["test"] * len(labels)), dataset.classes)


def _saved_model_probs(rd: RunDir, seed: int, generation: int, dataset, images) -> np.ndarray:
    import torch

    from ..checkpoint import preprocessing_record
    from ..deployed import Classifier

    model, classes = rd.load_model(seed, generation, torch.device("cpu"))
    augment = rd.read_config().data.augment
    classifier = Classifier(model, classes or dataset.classes, preprocessing_record(dataset, augment))
    return classifier.predict_proba(images).numpy()


def checked_images(rd: RunDir, seed: int, generation: int, dataset=None) -> tuple:
    """Every image of the dataset's training split that the seed used, with generation ``generation``'s labels
    of it: the training images by their refined labels, and (given the loaded ``dataset``) the validation images
    by the saved model, out of sample, unless they are ``--trusted`` verified labels. Ascending dataset index.

    Returns:
        ``(indices (M,) int64, probs (M, K) float32, given (M,) int64, clean (M,) int64 or None, splits (M,) str
        ("train" | "val"), class names)``.

    Raises:
        RunDirError: a split of an older version without the given labels, or a missing or damaged file.
    """
    indices, probs, classes, _ = own_labels(rd, seed, generation)
    given, clean = split_labels(rd.read_split(seed), indices)
    if given is None:
        raise RunDirError(f"{rd.seed_dir(seed) / 'split.npz'} predates stored training labels; rerun `refinery run` "
                          f"on {rd.root} with the same settings to add them (finished generations are kept)")
    splits = np.array(["train"] * len(indices))
    if dataset is not None and rd.read_config().data.trusted is None:  # verified images are no label issues
        v_indices, v_probs, v_given, v_clean = validation_labels(rd, seed, generation, dataset)
        splits = np.concatenate([splits, np.array(["val"] * len(v_indices))])
        indices, given = np.concatenate([indices, v_indices]), np.concatenate([given, v_given])
        probs = np.concatenate([probs, v_probs.astype(probs.dtype)])
        clean = None if clean is None or v_clean is None else np.concatenate([clean, v_clean])
    order = np.argsort(indices, kind="stable")
    return (indices[order], probs[order], given[order], None if clean is None else clean[order], splits[order],
            classes)


def seeds_opinion(rd: RunDir, picks: dict[int, int | None], dataset, test: bool = False) -> tuple:
    """The seeds' combined opinion of every image any of them checked (:func:`checked_images`): each image's refined
    probabilities averaged over the seeds that checked it (``picks``: ``{seed: generation}``, None for the seed's
    best generation by validation), for a steadier ranking than one seed's; ``split`` is ``train`` or ``val``
    where every such seed agrees, else ``val+train``. One seed: its opinion as it is. ``test``: the test images
    instead (:func:`test_labels`).

    Returns:
        ``(indices, probs, given, clean or None, splits, classes, generations {seed: generation})`` as
        :func:`checked_images`.

    Raises:
        ConfigError: a seed without that generation finished.
        RunDirError: seeds that gave an image different labels (the run's files disagree), or a damaged file.
    """
    opinions = []
    generations, classes = {}, None
    for seed, generation in picks.items():
        generations[seed] = chosen_generation(rd, seed, generation)
        check = test_labels if test else checked_images
        *opinion, classes = check(rd, seed, generations[seed], dataset)
        opinions.append(opinion)
    indices = np.concatenate([o[0] for o in opinions])
    order, where = np.unique(indices, return_inverse=True)  # each checked image once, ascending index
    probs = np.zeros((len(order), opinions[0][1].shape[1]), dtype=np.float64)
    np.add.at(probs, where, np.concatenate([o[1] for o in opinions]).astype(np.float64))
    probs = (probs / np.bincount(where, minlength=len(order))[:, None]).astype(np.float32)
    given_all = np.concatenate([o[2] for o in opinions])
    given = np.empty(len(order), dtype=np.int64)
    given[where] = given_all
    if not np.array_equal(given[where], given_all):
        raise RunDirError(f"seeds of {rd.root} give a training image different labels; their split.npz files "
                          "disagree: check them or use one --seed")
    clean = None
    if all(o[3] is not None for o in opinions):
        clean = np.empty(len(order), dtype=np.int64)
        clean[where] = np.concatenate([o[3] for o in opinions])
    split_all = np.concatenate([o[4] for o in opinions])
    splits = np.empty(len(order), dtype=split_all.dtype)
    splits[where] = split_all
    in_train, held = np.zeros(len(order), bool), np.zeros(len(order), bool)
    in_train[where[split_all == "train"]] = True
    held[where[split_all != "train"]] = True
    splits = np.where(in_train & held, "val+train", splits)
    return order, probs, given, clean, splits, classes, generations


def chosen_generation(rd: RunDir, seed: int, generation: int | None) -> int:
    """``generation``, checked to be finished for ``seed``; None: the seed's best generation by validation.

    Raises:
        ConfigError: a seed with no finished generation, or ``generation`` not finished.
    """
    finished = rd.finished_generations(seed) if seed in rd.seeds() else []
    if not finished:
        raise ConfigError(f"seed {seed} has no finished generation in {rd.root}; finished seeds: "
                          f"{[s for s in rd.seeds() if rd.finished_generations(s)]}")
    if generation is None:
        return best_of([rd.read_summary(seed, g) for g in finished])["generation"]
    if generation not in finished:
        raise ConfigError(f"--generation {generation} is not finished for seed {seed}; finished: {finished}")
    return generation


def issue_columns(splits: np.ndarray, sources: list[str] | None, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The ``split`` column and, for datasets read from files, the ``source`` column of each row."""
    columns = {"split": splits}
    if sources is not None:
        columns["source"] = np.array([sources[int(i)] for i in indices], dtype=object)
    return columns


def _checked_sources(dataset, indices: np.ndarray, name: str) -> list[str] | None:
    """The dataset's training files (None for built-in datasets), checked to reach every index the run used."""
    sources = dataset.train.sources
    if sources is not None and len(indices) and int(indices.max()) >= len(sources):
        raise RunDirError(f"{name} holds {len(sources)} training images, fewer than the run used: the folder "
                          "changed since the run; restore it to map rows to files")
    return sources


def _write_issues(rd: RunDir, generation: int | None, seeds: list[int], out: Path | None,
                  include_all: bool, test: bool) -> tuple[Path, int, tuple[int, int, int], dict[int, int]]:
    from ..protocol import load_run_dataset

    picks = {seed: chosen_generation(rd, seed, generation) for seed in seeds}  # refused before the data loads
    cfg = rd.read_config()
    dataset = load_run_dataset(cfg)
    indices, probs, given, clean, splits, classes, generations = seeds_opinion(rd, picks, dataset, test)
    sources = dataset.test.sources if test else _checked_sources(dataset, indices, cfg.data.dataset)
    columns = issue_columns(splits, sources, indices)
    rows = issue_rows(probs, given, indices, classes, clean, include_all, columns=columns)
    header = ["rank", "index", *columns, "given_label",
              "suggested_label", "p_given", "p_suggested", "margin", "top3"]
    header += ["clean_label", "flipped"] if clean is not None else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if out is None and test:
        out = rd.test_label_issues_path
    csv_path = Path(out) if out is not None else rd.label_issues_path
    try:
        rd.write_label_issues(buf.getvalue(), {"pred_probs": probs.astype(np.float32), "labels": given,
                                               "indices": indices, "splits": splits}, out)
    except RunDirError as e:
        if out is not None:
            raise
        raise RunDirError(f"cannot write {csv_path} into the run directory ({str(e).split(': ', 1)[-1]}); give "
                          "--out FILE.csv in a writable place") from None
    return csv_path, len(rows), (int((splits == "train").sum()), int(np.isin(splits, ["val", "test"]).sum()),
                                 int((splits == "val+train").sum())), generations


def write_fixed_labels(run_dir: Path, generations: dict[int, int], out: Path, min_margin: float = 0.0) -> str:
    """Write the dataset's label file with the suggested labels applied: ``path,label,split`` rows (absolute
    paths, class names; ``train`` for the training split, ``test`` for the test split), every image of the
    dataset once, in the dataset's order, read back by ``--dataset csv:OUT``. An image the seed checked takes its
    suggested label where the suggested class's probability exceeds the given label's by more than
    ``min_margin`` (:func:`checked_images`; with several seeds in ``generations``, ``{seed: generation}``, their
    mean opinion, :func:`seeds_opinion`); the ``--trusted`` images take their verified labels; every other image
    keeps the label the run was given. Returns the line ``refinery label-issues`` prints.

    Raises:
        ConfigError: a dataset not read from files (built-in datasets have no paths to write), or an ``out`` in
            the run's seed directories.
    """
    from ..fileio import atomic_write_text
    from ..protocol import load_run_dataset

    rd = RunDir(run_dir)
    cfg = rd.read_config()
    if not cfg.data.dataset.startswith(("folder:", "csv:")):
        raise ConfigError(f"--write-labels needs a dataset of image files (folder:PATH or csv:FILE); "
                          f"{cfg.data.dataset} has no paths to list")
    rd.check_output_path(Path(out), ".csv")
    dataset = load_run_dataset(cfg)
    indices, probs, given, _, _, classes, _ = seeds_opinion(rd, dict(generations), dataset)
    _, margin = given_label_scores(given, probs)
    labels = dataset.train.labels.numpy().copy()
    labels[indices] = np.where(margin < -min_margin, suggested_labels(given, probs), given)
    changed = int((labels[indices] != given).sum())
    verified = 0
    if cfg.data.trusted is not None:  # the verified images take their verified labels (the run's validation)
        split = rd.read_split(next(iter(generations)))
        v_indices, v_labels = split["val_indices"].astype(np.int64), split["val_labels"].astype(np.int64)
        verified = int((labels[v_indices] != v_labels).sum())
        labels[v_indices] = v_labels
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    for split, sources, split_labels_ in (("train", dataset.train.sources, labels),
                                          ("test", dataset.test.sources, dataset.test.labels.numpy())):
        writer.writerows([str(Path(f).resolve()), classes[int(y)], split] for f, y in zip(sources, split_labels_))
    atomic_write_text(Path(out), buf.getvalue())
    emptied = [classes[c] for c in range(len(classes)) if not (labels == c).any()]
    warning = "" if not emptied else (f"; warning: no training image keeps class {emptied[0]!r}"
                                      f"{f' (and {len(emptied) - 1} more)' if len(emptied) > 1 else ''}, so the file "
                                      "cannot train as it is: raise --min-margin or relabel by hand")
    also = "" if not cfg.data.trusted else f", {verified} to its verified label (--trusted)"
    return (f"{out}: {len(dataset.train) + len(dataset.test)} images ({len(dataset.train)} train, "
            f"{len(dataset.test)} test), {changed} label{'' if changed == 1 else 's'} changed to the suggested one "
            f"(lead > {min_margin:g}){also}; train on it with `refinery run --dataset csv:{out}`{warning}")
