"""A seed's ``split.npz``: its train/val indices and the labels it is scored against, under their checksum."""

from __future__ import annotations

import zipfile
import zlib

import numpy as np
import torch

from ..errors import RunDirError
from .integrity import _arrays_checksum, split_problem
from .layout import RunLayout
from .writer import npz_bytes, write_bytes


def split_arrays(train_idx: torch.Tensor, val_idx: torch.Tensor, val_labels: torch.Tensor, test_labels: torch.Tensor,
                 given_labels: torch.Tensor | None, clean_labels: torch.Tensor | None,
                 true_labels: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``split.npz`` by name (see :meth:`labelrefinery.rundir.RunDir.write_split`)."""
    arrays = {"train_indices": train_idx.numpy(), "val_indices": val_idx.numpy(),
              "val_labels": val_labels.numpy(), "test_labels": test_labels.numpy()}
    if true_labels is not None:  # --true-labels: what the summaries were scored against, checked on resume
        arrays["true_label_indices"], arrays["true_label_values"] = (t.numpy() for t in true_labels)
    if given_labels is not None:
        arrays["train_labels"] = given_labels[train_idx].numpy()
    if given_labels is not None and clean_labels is not None:
        for part, idx in (("train", train_idx), ("val", val_idx)):
            arrays[f"clean_{part}_labels"] = clean_labels[idx].numpy()
            arrays[f"{part}_flipped"] = (clean_labels[idx] != given_labels[idx]).numpy()
    return arrays


def save_split(layout: RunLayout, seed: int, arrays: dict[str, np.ndarray]) -> None:
    """Save ``arrays`` as the seed's ``split.npz`` unless it holds them already; a damaged or different one is
    rewritten.

    Raises:
        RunDirError: an intact, different split on which generations were trained.
    """
    if not check_split(layout, seed, arrays):
        write_bytes(layout.split_path(seed), npz_bytes(**arrays, sha256=np.array(_arrays_checksum(arrays))))


def check_split(layout: RunLayout, seed: int, arrays: dict[str, np.ndarray]) -> bool:
    """Whether the seed's ``split.npz`` holds ``arrays`` already (False: missing or damaged, to be made again).

    Raises:
        RunDirError: an intact, different split on which generations were trained (another run's seed
            directory, changed data, or a changed ``--trusted``/``--true-labels`` file).
    """
    path, seed_dir = layout.split_path(seed), layout.seed_dir(seed)
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return False  # damaged: made again from the seed
    checksum = stored.pop("sha256", None)
    sealed = checksum is not None and str(checksum) == _arrays_checksum(stored)
    same = set(stored) == set(arrays) and all(np.array_equal(stored[k], v) for k, v in arrays.items())
    if sealed and same:
        return True
    if sealed and layout.summary_paths(seed):  # intact, yet not this run's split
        raise RunDirError(f"{path} holds another split than this run's settings make for seed {seed}, and "
                          "generations were trained on it: the seed directory belongs to another run, or the data "
                          f"or a --trusted/--true-labels file changed; move {seed_dir} away, or use the original "
                          "data and files")
    return False


def load_split(layout: RunLayout, seed: int) -> dict[str, np.ndarray]:
    """The seed's ``split.npz`` as arrays by name, checked against its checksum and for consistent lengths.

    Raises:
        RunDirError: missing, damaged, or arrays whose lengths disagree.
    """
    path = layout.split_path(seed)
    rerun = f"rerun `refinery run` on {layout.root} with the same settings to make it again"
    fix = f"delete it and {rerun}"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; {rerun}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise RunDirError(f"{path} is damaged ({type(e).__name__}); {fix}") from None
    stored = arrays.pop("sha256", None)
    if stored is not None and str(stored) != _arrays_checksum(arrays):
        raise RunDirError(f"{path} was edited or is damaged (its sha256 does not match its arrays); {fix}")
    problem = split_problem(arrays)
    if problem:
        raise RunDirError(f"{path} is damaged ({problem}); {fix}")
    return arrays
