"""Datasets listed in a CSV file: rows ``path,label[,split]`` (Kaggle's, annotation tools', cleanlab's tutorials').

The file is UTF-8 text with a header naming the columns ``path`` and ``label`` (in any order, other columns
ignored) and optionally ``split``. ``path`` is an image file, relative paths relative to the CSV file's folder;
``label`` a class name (classes are the labels' distinct values, sorted, or the names of a ``--classes`` file,
one per line, in its order); ``split`` is ``train`` or ``test``
(``val`` reads as ``test``, the held-out set of an image folder's ``val/``). Without a ``split`` column every
row is a training image and a deterministic stratified share :data:`TEST_SHARE` of them (fixed draw, seed 0) is
the test set. Images are read as a folder's are (:func:`~labelrefinery.data.folder.load_listed`): held in memory
or streamed, at their own size unless ``--image-size`` says otherwise.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import torch

from ..errors import DataError
from .core import Dataset, stratified_split
from .folder import FolderReading, Listing, load_listed

CSV_PREFIX = "csv:"
TEST_SHARE = 0.1  # of the rows, held out as the test set when the file has no split column
SPLITS = {"train": "train", "test": "val", "val": "val"}  # a split's rows -> the listed dataset's train / val


def read_user_text(path: Path, name: str, expect: str) -> str:
    """The text of a UTF-8 file a user gave (a byte-order mark dropped).

    Args:
        name: how messages name it (e.g. ``--classes FILE``); expect: what it should be, for the fix.

    Raises:
        DataError: unreadable or not UTF-8, in one line naming ``name``.
    """
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{name} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"{name}: {e.strerror or e}; give {expect}") from None


def read_label_file(path: Path,
                    classes_file: Path | None = None) -> tuple[list[str], list[tuple[str, str, str | None]]]:
    """``(class names, rows (absolute file, label, split or None))`` of a label CSV, every row checked.

    Args:
        classes_file: a UTF-8 text file of class names, one per line (``--classes``): their order, and every
            label must be one of them; None: the labels' distinct values, sorted.

    Raises:
        DataError: not UTF-8, no ``path``/``label`` header, an empty label, an unknown split, a file listed twice,
            a file that does not exist, a label outside ``classes_file`` (each named with its line), or no rows;
            a classes file that cannot be read, is empty or names a class twice.
    """
    reader = csv.DictReader(read_user_text(path, str(path), "a CSV file of path,label rows").splitlines())
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "path" not in fields or "label" not in fields:
        raise DataError(f"{path} needs a header line naming the columns path and label (and optionally split), "
                        f"got {reader.fieldnames}")
    reader.fieldnames = fields
    rows, seen = [], {}
    for line, row in enumerate(reader, 2):
        rows.append(_checked_row(path, line, row, seen))
    if not rows:
        raise DataError(f"{path} lists no images; add path,label rows")
    if classes_file is None:
        return sorted({label for _, label, _ in rows}), rows
    classes = read_classes_file(Path(classes_file))
    known = set(classes)
    for line, (_, label, _) in enumerate(rows, 2):
        if label not in known:
            raise DataError(f"{path} line {line}: label {label!r} is not in --classes {classes_file}; add it there or "
                            "fix the row")
    return classes, rows


def read_classes_file(path: Path) -> list[str]:
    """The class names of a ``--classes`` file: UTF-8, one per line, blank lines skipped, in order.

    Raises:
        DataError: unreadable, not UTF-8, empty, or a name twice.
    """
    text = read_user_text(path, f"--classes {path}", "a text file of class names, one per line")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"--classes {path} names no class; give one class name per line")
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise DataError(f"--classes {path} names {twice[0]!r} twice; keep one")
    return names


def _checked_row(path: Path, line: int, row: dict, seen: dict[str, int]) -> tuple[str, str, str | None]:
    """One row as ``(absolute file, label, split or None)``, checked (see :func:`read_label_file`)."""
    file, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
    split = (row.get("split") or "").strip().lower() or None if "split" in row else None
    where = f"{path} line {line}"
    if not file:
        raise DataError(f"{where}: empty path; give an image file on every row")
    if not label:
        raise DataError(f"{where}: {file} has an empty label; label it or remove the row")
    if split is not None and split not in SPLITS:
        raise DataError(f"{where}: split {split!r} is not train, val or test")
    full = Path(file) if Path(file).is_absolute() else path.parent / file
    key = str(full.resolve())
    if key in seen:
        raise DataError(f"{where}: {file} is listed twice (first on line {seen[key]}); keep one row per image")
    seen[key] = line
    if not full.is_file():
        raise DataError(f"{where}: {file} does not exist (looked for {full}); fix the path or remove the row")
    return str(full), label, split


def load_csv(path: Path, image_size: int | None = None, data_dir: Path | None = None, *,
             reading: FolderReading | None = None, cache_root: Path | None = None,
             classes_file: str | Path | None = None) -> Dataset:
    """The dataset a label CSV lists (see the module docstring); ``classes_file``: see :func:`read_label_file`.

    Raises:
        DataError: see :func:`read_label_file`; a class without training rows; an unreadable image.
    """
    path = Path(path)
    classes, rows = read_label_file(path, None if classes_file is None else Path(classes_file))
    index = {c: i for i, c in enumerate(classes)}
    samples: dict[str, list] = {"train": [], "val": []}
    if any(split is not None for _, _, split in rows):
        for file, label, split in rows:
            samples[SPLITS[split or "train"]].append((file, index[label]))
    else:
        labels = torch.tensor([index[label] for _, label, _ in rows])
        train, test = stratified_split(labels, TEST_SHARE, seed=0)
        samples = {"train": [(rows[i][0], index[rows[i][1]]) for i in sorted(train.tolist())],
                   "val": [(rows[i][0], index[rows[i][1]]) for i in sorted(test.tolist())]}
    present = {label for _, label in samples["train"]}
    missing = [c for c in classes if index[c] not in present]
    if missing:
        raise DataError(f"{path}: class {missing[0]!r} has no training rows; add some or relabel its rows")
    if not samples["val"]:
        raise DataError(f"{path}: no test rows (split test or val); add some, or drop the split column to hold out "
                        f"{TEST_SHARE:.0%} of the rows")
    listing = hashlib.sha1("\n".join(classes).encode())
    for split in ("train", "val"):
        for file, label in samples[split]:
            st = Path(file).stat()
            listing.update(f"{split}|{file}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return load_listed(f"{CSV_PREFIX}{path}", str(path), Listing(classes, samples, listing.hexdigest()), image_size,
                       data_dir, reading=reading, cache_root=cache_root)
