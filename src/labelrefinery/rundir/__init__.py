"""The run directory: :class:`RunDir` reads and writes every file of a run, and this package is the one writer
of them (commands that write a report or label-issue table into a run, or elsewhere with ``--out``, call
:func:`write_report_files`, :meth:`RunDir.write_label_issues` and :func:`write_results_files`).

- :mod:`.layout`: every path of a run (the layout is described there), and what its files say is there;
- :mod:`.writer`: atomic writes (:mod:`labelrefinery.fileio`) and the one append, ``metrics.jsonl``'s;
- :mod:`.integrity`: the checks of what is read back; :mod:`.labels`: refined labels' storage forms;
- :mod:`.lock`: one process per directory; :mod:`.trainstate`, :mod:`.metrics`, :mod:`.configfile`,
  :mod:`.split`, :mod:`.results`: one kind of file each.

Everything read back is verified before it is used: ``summary.json`` records the SHA-256 of the generation's
``model.safetensors`` and ``labels.npz``, ``config.yaml`` and ``train-state.pt`` carry their own, refined labels
must be probability rows of the run's shape, and a damaged file is reported in one line naming it and what to
delete.
"""

from __future__ import annotations

import contextlib
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..checkpoint import load_model, save_checkpoint
from ..config import RunConfig
from ..dist import is_main_process
from ..errors import CheckpointError, RunDirError
from ..fileio import seal, sha256_bytes, sha256_file
from ..models import ModelSpec
from .configfile import ConfigFile
from .integrity import _label_problem
from .labels import LABEL_STORAGE_FLOAT32_MAX, _labels_file, _read_labels_file, as_stored, label_storage
from .layout import RunLayout, label_issue_files, report_files
from .lock import hold
from .metrics import MetricsLog
from .results import (add_ensemble_entry, read_ensemble_file, read_external_summary, read_run_info_file,
                      read_summary_file)
from .split import check_split, load_split, save_split, split_arrays
from .trainstate import TrainStateFile
from .writer import (main_process_writes, write_bytes, write_json, write_label_issue_files, write_report_files,
                     write_results_files)

__all__ = ["LABEL_STORAGE_FLOAT32_MAX", "RunDir", "RunLayout", "TrainStateFile", "as_stored", "label_issue_files",
           "label_storage", "report_files", "write_label_issue_files", "write_report_files", "write_results_files"]


class RunDir(RunLayout):
    """One run directory: its paths (:class:`~labelrefinery.rundir.layout.RunLayout`), and every read (verified)
    and write of its files.

    Args:
        root: the directory; nothing is made until something is written.
        writer: whether this process writes (default: the main process only; under torchrun the others read,
            and every method that writes is a no-op there).

    ``on_metrics``, when set, is called with every record :meth:`append_metrics` appends (``--tensorboard``
    sets it to :meth:`labelrefinery.tblog.TensorBoardLog.record`).
    """

    def __init__(self, root: Path | str, writer: bool | None = None):
        super().__init__(root)
        self.writer = is_main_process() if writer is None else writer
        self.on_metrics: Callable[[dict], None] | None = None
        self._config = ConfigFile(self)
        self._metrics = MetricsLog(self)

    def train_state(self, seed: int, generation: int | str) -> TrainStateFile:
        where = self.gen_dir(seed, generation)
        return TrainStateFile(self.train_state_path(seed, generation), f"{where.parent.name}/{where.name}",
                              self.writer)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for this process (:func:`labelrefinery.rundir.lock.hold`; under torchrun the main
        process holds it for all of them).

        Raises:
            RunDirError: another process holds it (the message names its PID).
        """
        if not self.writer:
            yield
            return
        with hold(self.root, self.lock_path):
            yield

    @main_process_writes()
    def remove_leftovers(self) -> None:
        """Remove temporary files of killed writes and resume points of generations that finished."""
        for path in self.leftovers():
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the run's own files
    def read_config(self) -> RunConfig:
        """The run's saved configuration, verified (:meth:`~labelrefinery.rundir.configfile.ConfigFile.read`)."""
        return self._config.read()

    @property
    def run_id(self) -> str | None:
        """The run's id (in ``config.yaml``), or None. Every summary records it, so a seed directory copied
        from another run is refused instead of shown as this run's."""
        return self._config.run_id

    def check_resumable(self, cfg: RunConfig) -> bool:
        """Check the directory against ``cfg``; True when it holds a run being resumed (else RunDirError)."""
        return self._config.check_resumable(cfg)

    @main_process_writes()
    def write_config(self, cfg: RunConfig) -> None:
        """Save ``cfg``; ``generations`` and ``seeds`` only ever extend what the directory records."""
        self._config.write(cfg)

    @main_process_writes()
    def write_run_info(self, info: dict) -> None:
        write_json(self.run_info_path, seal(info))

    def read_run_info(self) -> dict:
        """``run.json``, or {} (with a warning) when it is missing or unreadable."""
        return read_run_info_file(self.run_info_path)

    @main_process_writes()
    def append_metrics(self, record: dict) -> None:
        """Append one line to ``metrics.jsonl`` (flushed to disk), then give it to ``on_metrics`` when set."""
        self._metrics.append(record)
        if self.on_metrics is not None:
            self.on_metrics(record)

    def read_metrics(self) -> list[dict]:
        """Every complete record of ``metrics.jsonl`` (:meth:`~labelrefinery.rundir.metrics.MetricsLog.read`)."""
        return self._metrics.read()

    @main_process_writes()
    def drop_metrics(self, seed: int, generation: int | str, after_epoch: int) -> None:
        """Remove a restarted generation's records of epochs after ``after_epoch`` (1-based) and its summary."""
        self._metrics.drop(seed, generation, after_epoch)

    @main_process_writes()
    def write_split(self, seed: int, train_idx: torch.Tensor, val_idx: torch.Tensor, val_labels: torch.Tensor,
                    test_labels: torch.Tensor, given_labels: torch.Tensor | None = None,
                    clean_labels: torch.Tensor | None = None,
                    true_labels: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Save the seed's split; a damaged or different one is rewritten.

        Args:
            train_idx, val_idx: ``(N,) int64`` indices into the dataset's training split.
            val_labels, test_labels: ``(N,) int64`` the labels validation and test are scored against.
            given_labels: ``(N_train,) int64`` every training-split label as the run was given it (noisy
                with ``--label-noise``), stored as ``train_labels`` (of ``train_idx``).
            clean_labels: with ``--label-noise``, the labels before injection: stored as ``clean_train_labels``,
                ``clean_val_labels`` and the flip masks ``train_flipped``, ``val_flipped``.
            true_labels: with ``--true-labels``, ``(indices, labels)`` of the verified training images, stored as
                ``true_label_indices``, ``true_label_values``.
        """
        save_split(self, seed, split_arrays(train_idx, val_idx, val_labels, test_labels, given_labels, clean_labels,
                                            true_labels))

    def check_split(self, seed: int, arrays: dict[str, np.ndarray]) -> None:
        """Refuse (RunDirError) an intact ``split.npz`` of finished generations that holds other ``arrays``
        (:func:`~labelrefinery.rundir.split.split_arrays`) than this run makes; writes nothing."""
        check_split(self, seed, arrays)

    def read_split(self, seed: int) -> dict[str, np.ndarray]:
        """The seed's ``split.npz`` as arrays by name (see :meth:`write_split`), verified (else RunDirError)."""
        return load_split(self, seed)

    # ------------------------------------------------------------------ one generation
    @main_process_writes("")
    def save_model(self, seed: int, generation: int | str, model: torch.nn.Module, classes: list[str],
                   spec: ModelSpec, extra: dict) -> str:
        """Write the generation's ``model.safetensors``; returns its SHA-256."""
        return save_checkpoint(self.model_path(seed, generation), model, classes, spec.to_dict(), extra)

    def verify_file(self, seed: int, generation: int | str, path: Path) -> None:
        """Check a generation's file against the SHA-256 its summary records (older summaries record none).

        Raises:
            RunDirError: the file is missing or does not match (the message says what to delete).
        """
        if not self.is_finished(seed, generation):
            return
        want = self.read_summary(seed, generation).get("files", {}).get(path.name)
        if want is not None and not path.is_file():
            raise RunDirError(f"{path} is missing; {self.retrain_hint(seed, generation)}")
        if want is not None and sha256_file(path) != want:
            raise RunDirError(f"{path} is damaged (its checksum does not match summary.json); "
                              f"{self.retrain_hint(seed, generation)}")

    def load_model(self, seed: int, generation: int | str, device: torch.device,
                   spec: ModelSpec | None = None) -> tuple[torch.nn.Module, list[str] | None]:
        """A saved generation's model in eval mode, verified (:func:`labelrefinery.checkpoint.load_model`)."""
        path = self.model_path(seed, generation)
        self.verify_file(seed, generation, path)
        try:
            return load_model(path, device, spec)
        except CheckpointError as e:
            raise RunDirError(f"{e}; {self.retrain_hint(seed, generation)}") from None

    @main_process_writes()
    def save_external_refinery(self, seed: int, labels: torch.Tensor, indices: torch.Tensor, views: torch.Tensor,
                               classes: list[str], summary: dict) -> None:
        """Record an external refinery's offline labels (``refinery/labels.npz``, as a generation's) and its
        ``summary`` (top-1 on validation and test, agreement with the given labels) in ``refinery/summary.json``."""
        data, where = _labels_file(labels, indices, views, classes, "float32").getvalue(), self.refinery_dir(seed)
        write_bytes(where / "labels.npz", data)
        write_json(where / "summary.json", seal({**summary, "files": {"labels.npz": sha256_bytes(data)}}))

    def read_external_refinery(self, seed: int) -> dict | None:
        """The external refinery's summary for ``seed``, or None (no ``--refinery-checkpoint``, or unreadable)."""
        return read_external_summary(self.refinery_dir(seed))

    @main_process_writes("")
    def save_labels(self, seed: int, generation: int | str, labels: torch.Tensor, indices: torch.Tensor,
                    views: torch.Tensor, classes: list[str], storage: str = "float32") -> str:
        """Save refined labels as ``labels.npz``; returns its SHA-256.

        Args:
            labels: ``(M, K) float32`` probability rows.
            indices: ``(M,) int64`` index of each row's image in the dataset's training split.
            views: ``(M,) int64`` 0 for the image itself, c >= 1 for its c-th stored augmented copy.
            classes: the K class names.
            storage: how the rows are stored (:func:`label_storage`): ``float32``, ``float16`` or ``topk:J``
                (the J largest probabilities of each row as float16 with their int64 class indices);
                :meth:`load_labels` reads every form back as float32 rows.
        """
        data = _labels_file(labels, indices, views, classes, storage).getvalue()
        write_bytes(self.labels_path(seed, generation), data)
        return sha256_bytes(data)

    def load_labels(self, seed: int, generation: int | str, rows: int | None = None,
                    num_classes: int | None = None) -> dict[str, np.ndarray]:
        """A generation's refined labels, verified: keys ``labels`` ``(M, K) float32`` (rows stored as float16 or
        top-J renormalised to sum to 1), ``storage``, ``indices``, ``views``, ``classes`` and ``refinery_only``
        (False in files of older versions, which stored the labels after the ``--gt-weight`` mix).

        Args:
            rows, num_classes: the M and K the run expects (checked when given).

        Raises:
            RunDirError: a missing or damaged file, or labels that are not M probability rows over K classes.
        """
        path, fix = self.labels_path(seed, generation), self.retrain_hint(seed, generation)
        self.verify_file(seed, generation, path)
        try:
            out = _read_labels_file(path)
        except FileNotFoundError:
            raise RunDirError(f"{path} is missing; {fix}") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise RunDirError(f"{path} is damaged ({type(e).__name__}); {fix}") from None
        problem = _label_problem(out, rows, num_classes)
        if problem:
            raise RunDirError(f"{path} holds unusable refined labels ({problem}); {fix}")
        return out

    @main_process_writes()
    def finish_generation(self, seed: int, generation: int | str, summary: dict) -> None:
        """Record the generation's metrics line and summary (written last; ``summary["files"]`` maps
        ``model.safetensors`` and ``labels.npz`` to their SHA-256), then drop its resume point."""
        self.append_metrics({"kind": "generation", **{k: v for k, v in summary.items() if k != "files"}})
        write_json(self.summary_path(seed, generation), seal({**summary, "run_id": self.run_id}))
        self.train_state(seed, generation).remove()

    def read_summary(self, seed: int, generation: int | str) -> dict:
        """A finished generation's summary, checked for its seal, run id, keys and value types (else RunDirError)."""
        path = self.summary_path(seed, generation)
        summary = read_summary_file(path, seed, generation, self.retrain_hint(seed, generation))
        theirs, ours = summary.get("run_id"), self.run_id
        if theirs is not None and ours is not None and theirs != ours:
            raise RunDirError(f"{path} belongs to another run (run id {theirs}, this run's is {ours}): "
                              f"{self.seed_dir(seed)} was copied from elsewhere; move it out of {self.root}")
        return summary

    # ------------------------------------------------------------------ results and reports
    def read_ensembles(self) -> list[dict]:
        """The entries of ``ensemble.json`` ([] when there is none; RunDirError when damaged)."""
        return read_ensemble_file(self.ensemble_path)

    @main_process_writes()
    def write_ensemble(self, entry: dict) -> None:
        """Add ``entry`` to ``ensemble.json``, replacing one for the same generations."""
        add_ensemble_entry(self.ensemble_path, entry)

    @main_process_writes()
    def write_results(self, results: dict, markdown: str) -> None:
        write_results_files(self.root, results, markdown)

    @main_process_writes()
    def write_label_issues(self, table: str, arrays: dict[str, np.ndarray], out: Path | None = None) -> Path:
        """Write ``refinery label-issues``' CSV ``table`` and its ``.npy`` ``arrays``
        (:func:`~labelrefinery.rundir.writer.write_label_issue_files`) at ``out``, default
        :attr:`label_issues_path`; returns the CSV's path."""
        csv_path = Path(out) if out is not None else self.label_issues_path
        write_label_issue_files(csv_path, table, arrays)
        return csv_path
