"""Verified labels of some training images (``--trusted FILE``, ``--true-labels FILE``): a CSV file of
``image,label`` rows.

The file is UTF-8 text with a header naming the columns ``image`` (or ``path`` or ``index``) and ``label``
(other columns ignored). ``image`` is an image file of a folder or CSV dataset (as the dataset lists it;
relative paths relative to the CSV file's folder) or the image's position in the dataset's training split
(``index``, as ``label_issues.csv`` gives it); ``label`` a class name or a class index. These are the "gold"
labels of Hendrycks et al. 2018 ("Using Trusted Data to Train Deep Networks on Labels Corrupted by Severe Noise").
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..errors import DataError
from .core import ImageData
from .csvfile import read_user_text


def read_verified_labels(path: Path, train: ImageData, flag: str = "--trusted") -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices (T,) int64 sorted, labels (T,) int64)`` of a verified-label CSV file, every row checked.

    Args:
        flag: the option that named the file, for the messages.

    Raises:
        DataError: not UTF-8, no ``image``/``label`` header, an image not in the training split, an image listed
            twice, a label that is not a class (each named with its line), or no rows.
    """
    rows = list(csv.reader(read_user_text(path, f"{flag} {path}", "a CSV file of image,label rows").splitlines()))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    key = next((k for k in ("image", "path", "index") if k in header), None)
    if key is None or "label" not in header:
        raise DataError(f"{flag} {path} needs a header line with the columns image (or path or index) and label, "
                        f"got {rows[0] if rows else 'an empty file'}")
    at_image, at_label = header.index(key), header.index("label")
    by_file = {str(Path(f).resolve()): i for i, f in enumerate(train.sources)} if train.sources else {}
    names = {name: k for k, name in enumerate(train.classes)}
    picked: dict[int, int] = {}
    for line, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(at_image, at_label):
            raise DataError(f"{flag} {path} line {line} has {len(row)} columns; give image and label")
        image, label = row[at_image].strip(), row[at_label].strip()
        index = _image_index(image, path, by_file, len(train), line, flag)
        if index in picked:
            raise DataError(f"{flag} {path} line {line}: image {image!r} is listed twice; keep one row")
        if label in names:
            picked[index] = names[label]
        elif label.isdigit() and int(label) < len(train.classes):
            picked[index] = int(label)
        else:
            raise DataError(f"{flag} {path} line {line}: label {label!r} is not one of the dataset's classes "
                            f"({', '.join(train.classes[:10])}{', ...' if len(train.classes) > 10 else ''}) "
                            "nor a class index")
    if not picked:
        raise DataError(f"{flag} {path} lists no image; give image,label rows")
    indices = torch.tensor(sorted(picked), dtype=torch.int64)
    return indices, torch.tensor([picked[int(i)] for i in indices], dtype=torch.int64)


def _image_index(image: str, path: Path, by_file: dict[str, int], count: int, line: int, flag: str) -> int:
    if image.isdigit():
        if int(image) >= count:
            raise DataError(f"{flag} {path} line {line}: index {image} is outside the training split's {count} "
                            "images")
        return int(image)
    if not by_file:
        raise DataError(f"{flag} {path} line {line}: {image!r} is not an index, and this dataset has no files; "
                        "give the image's index in the training split (as label_issues.csv lists it)")
    file = Path(image) if Path(image).is_absolute() else path.parent / image
    found = by_file.get(str(file.resolve()))
    if found is None:
        raise DataError(f"{flag} {path} line {line}: {image} is not a training image of this dataset; give a "
                        "file the dataset lists (relative paths are relative to the CSV file's folder)")
    return found
