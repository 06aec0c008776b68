"""The run directory: the only module that knows its file layout, and the one writer of its files.

Layout (``runs/<name>/``)::

    config.yaml      resolved configuration (one mapping per section)
    run.json         code and torch versions, device, precision, dataset facts
    metrics.jsonl    one JSON line per epoch and per generation, appended
    results.json     the table's numbers; results.md the table
    report.html      `refinery inspect`'s page (report.json, report_*.csv beside it); label_issues.csv likewise
    ensemble.json    test top-1 of ensembles of generations
    seed-<s>/split.npz                  train/val indices and labels; with --label-noise also clean labels, flip masks
    seed-<s>/gen-<g>/model.safetensors  weights + class names + model spec
    seed-<s>/gen-<g>/labels.npz         refined labels made by this generation (its own, before any --gt-weight mix)
    seed-<s>/gen-<g>/summary.json       written last: marks the generation finished
    seed-<s>/gen-<g>/train-state.pt     only while training: the epoch-level resume point
    seed-<s>/control-<name>/            with --controls: the same files for a control model
    seed-<s>/refinery/                  with --refinery-checkpoint: its labels.npz and summary.json (top-1)
    tb/seed-<s>/     with --tensorboard: TensorBoard event files of the metrics (:mod:`labelrefinery.tblog`)

    .lock            held (``flock``) by the one process using the directory; it holds that process's PID

Every file is written atomically (:mod:`labelrefinery.fileio`) except
``metrics.jsonl``, which is appended one whole line per write; a reader skips
a partial last line left by a killed process. Everything read back is verified
before it is used: ``summary.json`` records the SHA-256 of the generation's
``model.safetensors`` and ``labels.npz``, ``config.yaml`` and ``train-state.pt``
carry their own, refined labels must be probability rows of the run's shape,
and a damaged file is reported in one line naming it and what to delete.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import json
import math
import os
import re
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from .checkpoint import load_model, save_checkpoint
from .config import RunConfig, config_difference, merged_seeds
from .console import log
from .dist import is_main_process
from .errors import CheckpointError, ConfigError, RunDirError
from .fileio import atomic_write_bytes, atomic_write_text, seal, seal_broken, sha256_bytes, sha256_file, write_json
from .losses import ROW_SUM_TOLERANCE
from .models import ModelSpec
from .tblog import TensorBoardLog

_SEED_DIR = re.compile(r"^seed-(\d+)$")
_CONFIG_CHECKSUM = "# sha256 of the lines below: "
_RUN_ID = "# run id: "  # config.yaml's second line: made once, kept, recorded in every summary of the run


def write_results_files(out_dir: Path, results: Any, markdown: str) -> None:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (a run directory or a report's), atomically."""
    write_json(Path(out_dir) / "results.json", results)
    atomic_write_text(Path(out_dir) / "results.md", "# Label Refinery results\n\n" + markdown)


_STATE_TRAILER = b"LRSHA256"  # train-state.pt ends with this tag and the SHA-256 of what precedes it


def _main_process_writes(default: Any = None):
    """Make a method that writes into the run directory a no-op returning ``default`` in every process but the
    main one (rank 0 under torchrun): one writer, each file written once."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if not self.writer:
                return default
            return method(self, *args, **kwargs)
        return wrapper
    return decorate


class TrainStateFile:
    """A generation's epoch-level resume point (``train-state.pt``, loaded with ``weights_only=True``).

    The file is ``torch.save`` output followed by ``LRSHA256`` and the SHA-256 of
    that output, so a truncated or garbled file is refused instead of resumed.
    """

    def __init__(self, path: Path, generation_dir: str = "", writer: bool = True):
        self.path = Path(path)
        self._where = generation_dir or str(self.path.parent)
        self.writer = writer

    def _damaged(self, what: str) -> RunDirError:
        return RunDirError(f"{self.path} is damaged ({what}); delete it to restart {self._where} from its first "
                           "epoch")

    def load(self, device: torch.device | str = "cpu") -> dict | None:
        """The saved training state (tensors and numbers only), or None when there is none.

        Raises:
            RunDirError: a damaged file (the message says to delete it).
        """
        if not self.path.exists():
            return None
        raw = self.path.read_bytes()
        tail = len(_STATE_TRAILER) + 32
        if len(raw) > tail and raw[-tail:-32] == _STATE_TRAILER:
            body = raw[:-tail]
            if sha256_bytes(body) != raw[-32:].hex():
                raise self._damaged("its checksum does not match")
        else:
            body = raw  # written before checksums were added
        try:
            state = torch.load(io.BytesIO(body), map_location=device, weights_only=True)
        except Exception as e:  # any way a damaged zip or pickle stream fails
            raise self._damaged(f"{type(e).__name__}") from None
        need = {"model", "optimizer", "scheduler", "best_model", "best_top1", "best_epoch", "since_best", "epoch"}
        if not isinstance(state, dict) or not need <= set(state):
            raise self._damaged("keys missing")
        return state

    def last_epoch(self) -> int | None:
        """The 0-based epoch the state was saved after, or None."""
        state = self.load()
        return None if state is None else int(state["epoch"])

    @_main_process_writes()
    def save(self, state: dict) -> None:
        """Write ``state`` (a dict of tensors, state dicts and numbers) atomically, with its checksum."""
        buf = io.BytesIO()
        torch.save(state, buf)
        body = buf.getvalue()
        atomic_write_bytes(self.path, body + _STATE_TRAILER + bytes.fromhex(sha256_bytes(body)))

    @_main_process_writes()
    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class RunDir:
    """One run directory (see the module docstring for its layout).

    Args:
        root: the directory; nothing is made until something is written.
        writer: whether this process writes (default: the main process only; under torchrun the others read,
            and every method that writes is a no-op there).
    """

    def __init__(self, root: Path | str, writer: bool | None = None):
        self.root = Path(root)
        self.writer = is_main_process() if writer is None else writer
        self._tensorboard: TensorBoardLog | None = None
        self._run_id: str | None = None

    @_main_process_writes()
    def start_tensorboard(self) -> None:
        """From now on every metrics record is also written as TensorBoard scalars to ``tb/``."""
        self._tensorboard = self._tensorboard or TensorBoardLog(self.root / "tb")

    def stop_tensorboard(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed-{seed}"

    def gen_dir(self, seed: int, generation: int | str) -> Path:
        """``seed-<s>/gen-<g>`` of generation g, or ``seed-<s>/control-<name>`` of a control (``--controls``),
        which holds the same files as a generation."""
        return self.seed_dir(seed) / (f"control-{generation}" if isinstance(generation, str) else f"gen-{generation}")

    def model_path(self, seed: int, generation: int | str) -> Path:
        return self.gen_dir(seed, generation) / "model.safetensors"

    def labels_path(self, seed: int, generation: int | str) -> Path:
        return self.gen_dir(seed, generation) / "labels.npz"

    def summary_path(self, seed: int, generation: int | str) -> Path:
        return self.gen_dir(seed, generation) / "summary.json"

    def train_state(self, seed: int, generation: int | str) -> TrainStateFile:
        where = self.gen_dir(seed, generation)
        return TrainStateFile(where / "train-state.pt", f"{where.parent.name}/{where.name}", self.writer)

    def _where(self, seed: int, generation: int | str) -> str:
        return f"delete {self.gen_dir(seed, generation)} to retrain that " + (
            "control" if isinstance(generation, str) else "generation")

    # ------------------------------------------------------------------ what is there
    def is_run(self) -> bool:
        """True when the directory holds a run (its ``config.yaml``)."""
        return self.config_path.is_file()

    def seeds(self) -> list[int]:
        """Seeds with a directory here, ascending."""
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if p.is_dir() and (m := _SEED_DIR.match(p.name)))

    def is_finished(self, seed: int, generation: int | str) -> bool:
        return self.summary_path(seed, generation).is_file()

    def finished_controls(self, seed: int) -> list[str]:
        """Names of the controls of ``seed`` that finished (``seed-<s>/control-<name>/summary.json``), sorted."""
        return sorted(p.parent.name[len("control-"):] for p in self.seed_dir(seed).glob("control-*/summary.json"))

    def finished_generations(self, seed: int) -> list[int]:
        """1, 2, ... up to the first generation of ``seed`` that is not finished."""
        g = 0
        while self.is_finished(seed, g + 1):
            g += 1
        return list(range(1, g + 1))

    def has_finished_work(self) -> bool:
        """True when any generation finished or any epoch was saved (such a directory is never removed)."""
        return any(self.root.glob("seed-*/*-*/summary.json")) or any(self.root.glob("seed-*/*-*/train-state.pt"))

    # ------------------------------------------------------------------ one process at a time
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for this process (an OS lock on ``.lock``, released even if the process dies).

        Raises:
            RunDirError: another process holds it (the message names its PID).
        """
        if not self.writer:  # under torchrun the main process holds the directory for all of them
            yield
            return
        existed = self.root.is_dir()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            f = open(self.root / ".lock", "a+")
        except OSError as e:
            if existed:
                raise RunDirError(f"cannot write into run directory {self.root}: {e.strerror}; make it writable") \
                    from None
            raise RunDirError(f"cannot make run directory {self.root}: {e.strerror}; choose another --runs-dir") from None
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise RunDirError(f"{self.root} is in use by another refinery process (PID {holder}); wait for it "
                                  "to finish or stop it, then rerun") from None
            except OSError as e:
                raise RunDirError(f"cannot lock run directory {self.root}: {e.strerror}; use a local file system "
                                  "that supports flock") from None
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield
        finally:
            f.close()

    @_main_process_writes()
    def remove_leftovers(self) -> None:
        """Remove temporary files of killed writes and resume points of generations that finished."""
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for state in self.root.glob("seed-*/*-*/train-state.pt"):
            if (state.parent / "summary.json").is_file():
                state.unlink(missing_ok=True)

    def is_empty_or_leftovers(self) -> bool:
        """True when the directory holds nothing but a lock file and temporary files of killed writes."""
        return all(p.name == ".lock" or (p.name.startswith(".") and p.name.endswith(".tmp"))
                   for p in self.root.iterdir())

    # ------------------------------------------------------------------ configuration
    def read_config(self) -> RunConfig:
        """The run's saved configuration, verified against the checksum in its first line.

        Raises:
            RunDirError: not a run directory, or a ``config.yaml`` that is damaged or cannot be read.
        """
        if not self.is_run():
            raise RunDirError(f"{self.root} is not a run directory (no config.yaml); give the directory "
                              "`refinery run` made")
        text = self.config_path.read_text(errors="replace")
        first, _, rest = text.partition("\n")
        fix = "restore it, or start a new run directory (another --name)"
        if first.startswith(_CONFIG_CHECKSUM) and first[len(_CONFIG_CHECKSUM):].strip() != sha256_bytes(rest.encode()):
            raise RunDirError(f"{self.config_path} is damaged (its checksum does not match); {fix}")
        try:
            return RunConfig.from_dict(yaml.safe_load(text) or {})
        except (yaml.YAMLError, ConfigError, TypeError, AttributeError, ValueError) as e:
            raise RunDirError(f"{self.config_path} cannot be read ({str(e).splitlines()[0]}); {fix}") from None

    @property
    def run_id(self) -> str | None:
        """The run's id (``# run id:`` line of ``config.yaml``, made when the directory is), or None (no
        ``config.yaml``, or one of an older version). Every summary records it, so a seed directory copied
        from another run is refused instead of shown as this run's."""
        if self._run_id is None and self.config_path.is_file():
            lines = self.config_path.read_text(errors="replace").split("\n", 2)
            if len(lines) > 1 and lines[1].startswith(_RUN_ID):
                self._run_id = lines[1][len(_RUN_ID):].strip()
        return self._run_id

    def _recorded_run_id(self) -> str | None:
        """The run id the summaries here record, for a ``config.yaml`` that lost its id line (rewritten by hand
        or by an older version): the directory keeps the id its generations were made under."""
        for path in sorted(self.root.glob("seed-*/*-*/summary.json")):
            try:
                found = json.loads(path.read_text()).get("run_id")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                continue
            if isinstance(found, str):
                return found
        return None

    def check_resumable(self, cfg: RunConfig) -> bool:
        """Check the directory against ``cfg``; True when it holds a run being resumed.

        Raises:
            RunDirError: it holds something else, or a run with a different configuration.
        """
        if not self.is_run():
            if self.root.exists() and (not self.root.is_dir() or not self.is_empty_or_leftovers()):
                raise RunDirError(f"{self.root} exists and is not a refinery run (no config.yaml); choose another "
                                  "--name or --runs-dir")
            return False
        diff = config_difference(self.read_config(), cfg)
        if diff is not None:
            raise RunDirError(f"run directory {self.root} was made with a different configuration ({diff}); "
                              f"rerun with the same flags, or `refinery run --resume {self.root}` to continue it with "
                              "its saved settings (a preset's values can change between versions), or pick a new "
                              "--name")
        return True

    @_main_process_writes()
    def write_config(self, cfg: RunConfig) -> None:
        """Save ``cfg``; ``generations`` and ``seeds`` only ever extend what the directory records."""
        stored = cfg.to_dict()
        if self.is_run():
            saved = self.read_config()
            stored["generations"] = max(saved.generations, cfg.generations)
            stored["seeds"] = merged_seeds(saved.seeds, cfg.seeds)
        body = f"{_RUN_ID}{self.run_id or self._recorded_run_id() or uuid.uuid4().hex}\n" + \
            yaml.safe_dump(stored, sort_keys=False)
        atomic_write_text(self.config_path, f"{_CONFIG_CHECKSUM}{sha256_bytes(body.encode())}\n{body}")
        self._run_id = None  # read again from the file

    @_main_process_writes()
    def write_run_info(self, info: dict) -> None:
        write_json(self.root / "run.json", seal(info))

    def read_run_info(self) -> dict:
        """``run.json`` (versions, device, precision, CPU, dataset facts), or {} when it is missing or unreadable,
        with a one-line warning naming the file (it describes the run and feeds no computation)."""
        path = self.root / "run.json"
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            log(f"warning: {path} is missing; the run's facts (versions, device, precision) are not shown")
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            log(f"warning: {path} is damaged ({type(e).__name__}); the run's facts (versions, device, precision) "
                "are not shown; `refinery run --resume` on this directory writes it again")
            return {}
        if not isinstance(info, dict) or seal_broken(info):
            what = "not a JSON object" if not isinstance(info, dict) else "its sha256 does not match its content"
            log(f"warning: {path} is damaged or was edited ({what}); the run's facts (versions, device, "
                "precision) are not shown; `refinery run --resume` on this directory writes it again")
            return {}
        return info

    # ------------------------------------------------------------------ metrics
    @_main_process_writes()
    def append_metrics(self, record: dict) -> None:
        """Append one JSON line (one write call, flushed to disk); also to TensorBoard once started."""
        line = (json.dumps(record) + "\n").encode("utf-8")
        try:
            with open(self.metrics_path, "ab") as f:
                if f.tell() > 0:
                    with open(self.metrics_path, "rb") as r:
                        r.seek(-1, os.SEEK_END)
                        if r.read(1) != b"\n":  # a partial line from a killed process: start a new one
                            line = b"\n" + line
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise RunDirError(f"cannot write {self.metrics_path}: {e.strerror or e}; free space or make it "
                              "writable") from None
        if self._tensorboard is not None:
            self._tensorboard.record(record)

    def read_metrics(self) -> list[dict]:
        """Every complete record of ``metrics.jsonl`` ([] when there is none).

        It feeds only the training curves (no number of a summary or table): a damaged line is skipped with a
        one-line warning naming the file and the lines, except a partial last line left by a killed append,
        which is skipped silently; a missing file of a run with finished work gets a warning too.
        """
        if not self.metrics_path.exists():
            if self.has_finished_work():
                log(f"warning: {self.metrics_path} is missing; the training curves of the finished generations "
                    "are not shown")
            return []
        records, damaged = [], []
        lines = self.metrics_path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif number < len(lines) or isinstance(record, (list, int, float, str)):
                damaged.append(number)  # a partial last line is a killed append's; anything else is damage
        if damaged:
            shown = ", ".join(map(str, damaged[:5])) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
            log(f"warning: {self.metrics_path} line{'s' if len(damaged) > 1 else ''} {shown} "
                f"{'are' if len(damaged) > 1 else 'is'} damaged and skipped; the training curves lack "
                f"{'those epochs' if len(damaged) > 1 else 'that epoch'}")
        finished = sum(1 for _ in self.root.glob("seed-*/*-*/summary.json"))
        recorded = len({(r.get("seed"), r.get("generation")) for r in records if r.get("kind") == "generation"})
        if recorded < finished:
            log(f"warning: {self.metrics_path} lacks the records of {finished - recorded} finished generation"
                f"{'s' if finished - recorded > 1 else ''} (cut or edited); the training curves are incomplete")
        return records

    @_main_process_writes()
    def drop_metrics(self, seed: int, generation: int | str, after_epoch: int) -> None:
        """Remove a restarted generation's records of epochs after ``after_epoch`` (1-based) and its summary."""
        records = self.read_metrics()
        kept = [r for r in records if not (r.get("seed") == seed and r.get("generation") == generation
                                           and (r.get("kind") == "generation" or r.get("epoch", 0) > after_epoch))]
        if len(kept) != len(records):
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ------------------------------------------------------------------ one seed
    @_main_process_writes()
    def write_split(self, seed: int, train_idx: torch.Tensor, val_idx: torch.Tensor, val_labels: torch.Tensor,
                    test_labels: torch.Tensor, given_labels: torch.Tensor | None = None,
                    clean_labels: torch.Tensor | None = None) -> None:
        """Save the seed's split; a damaged or different one is rewritten.

        Args:
            train_idx, val_idx: ``(N,) int64`` indices into the dataset's training split.
            val_labels, test_labels: ``(N,) int64`` the labels validation and test are scored against.
            given_labels: ``(N_train,) int64`` every training-split label as the run was given it (noisy
                with ``--label-noise``), stored as ``train_labels`` (of ``train_idx``).
            clean_labels: with ``--label-noise``, the labels before injection: stored as ``clean_train_labels``,
                ``clean_val_labels`` and the flip masks ``train_flipped``, ``val_flipped``.
        """
        path = self.seed_dir(seed) / "split.npz"
        arrays = {"train_indices": train_idx.numpy(), "val_indices": val_idx.numpy(),
                  "val_labels": val_labels.numpy(), "test_labels": test_labels.numpy()}
        if given_labels is not None:
            arrays["train_labels"] = given_labels[train_idx].numpy()
        if given_labels is not None and clean_labels is not None:
            for part, idx in (("train", train_idx), ("val", val_idx)):
                arrays[f"clean_{part}_labels"] = clean_labels[idx].numpy()
                arrays[f"{part}_flipped"] = (clean_labels[idx] != given_labels[idx]).numpy()
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    stored = {k: z[k] for k in z.files}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
                stored = {}  # damaged: made again from the seed below
            checksum = stored.pop("sha256", None)
            sealed = checksum is not None and str(checksum) == _arrays_checksum(stored)
            same = all(k in stored and np.array_equal(stored[k], v) for k, v in arrays.items())
            if sealed and same:
                return
            if sealed and any(self.seed_dir(seed).glob("*-*/summary.json")):  # intact, yet not this run's split
                raise RunDirError(f"{path} holds another split than this run's settings make for seed {seed}, and "
                                  "generations were trained on it: the seed directory belongs to another run or "
                                  f"the data changed; move {self.seed_dir(seed)} away, or use the original data")
        buf = io.BytesIO()
        np.savez(buf, **arrays, sha256=np.array(_arrays_checksum(arrays)))
        atomic_write_bytes(path, buf.getvalue())

    def read_split(self, seed: int) -> dict[str, np.ndarray]:
        """The seed's ``split.npz`` as arrays by name (see :meth:`write_split`), checked for consistent lengths.

        Raises:
            RunDirError: missing, damaged, or arrays whose lengths disagree.
        """
        path = self.seed_dir(seed) / "split.npz"
        rerun = f"rerun `refinery run` on {self.root} with the same settings to make it again"
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
        lengths = {"train": len(arrays.get("train_indices", [])), "val": len(arrays.get("val_indices", []))}
        for name, a in arrays.items():
            part = name.replace("clean_", "").split("_")[0]
            if part in lengths and a.shape != (lengths[part],):
                raise RunDirError(f"{path} is damaged ({name} has shape {a.shape}, expected ({lengths[part]},)); {fix}")
        return arrays

    @property
    def label_issues_path(self) -> Path:
        """Where ``refinery label-issues`` writes its CSV by default."""
        return self.root / "label_issues.csv"

    def check_output_path(self, out: Path, suffix: str, flag: str = "--out", beside: str = "") -> None:
        """Refuse an output file (of a command reading this run) that does not end in ``suffix``, or that would
        land among the run's own files: inside its seed directories (its top level is free for reports).

        Raises:
            ConfigError: a directory, a name not ending in ``suffix``, or a place inside a seed directory.
        """
        out = Path(out)
        if out.suffix != suffix or out.is_dir():
            raise ConfigError(f"{flag} {out} must be a file path ending in {suffix}" + (f" ({beside})" if beside
                                                                                         else ""))
        root, where = self.root.resolve(), out.resolve().parent
        if where != root and root in where.parents:
            raise ConfigError(f"{flag} {out} is inside the run's seed directories, among its own files; choose a "
                              f"path outside them or leave {flag} out")

    @property
    def report_path(self) -> Path:
        """Where ``refinery inspect`` writes its page by default (its data files go beside it)."""
        return self.root / "report.html"

    # ------------------------------------------------------------------ one generation
    @_main_process_writes("")
    def save_model(self, seed: int, generation: int | str, model: torch.nn.Module, classes: list[str],
                   spec: ModelSpec, extra: dict) -> str:
        """Write the generation's ``model.safetensors``; returns its SHA-256."""
        return save_checkpoint(self.model_path(seed, generation), model, classes, spec.to_dict(), extra)

    def verify_file(self, seed: int, generation: int | str, path: Path) -> None:
        """Check a generation's file against the SHA-256 its summary records.

        Raises:
            RunDirError: the file is missing or does not match (the message says what to delete).
        """
        self._verify(seed, generation, path)

    def _verify(self, seed: int, generation: int | str, path: Path) -> None:
        """Check ``path`` against the SHA-256 the generation's summary records (older summaries record none)."""
        if not self.is_finished(seed, generation):
            return
        want = self.read_summary(seed, generation).get("files", {}).get(path.name)
        if want is None:
            return
        if not path.is_file():
            raise RunDirError(f"{path} is missing; {self._where(seed, generation)}")
        if sha256_file(path) != want:
            raise RunDirError(f"{path} is damaged (its checksum does not match summary.json); "
                              f"{self._where(seed, generation)}")

    def load_model(self, seed: int, generation: int | str, device: torch.device,
                   spec: ModelSpec | None = None) -> tuple[torch.nn.Module, list[str] | None]:
        """A saved generation's model in eval mode, verified (see :func:`labelrefinery.checkpoint.load_model`).

        Raises:
            RunDirError: the file is missing, damaged, or does not fit the model.
        """
        path = self.model_path(seed, generation)
        self._verify(seed, generation, path)
        try:
            return load_model(path, device, spec)
        except CheckpointError as e:
            raise RunDirError(f"{e}; {self._where(seed, generation)}") from None

    def refinery_dir(self, seed: int) -> Path:
        """``seed-<s>/refinery``: what an external ``--refinery-checkpoint`` said before generation 1 trained."""
        return self.seed_dir(seed) / "refinery"

    @_main_process_writes()
    def save_external_refinery(self, seed: int, labels: torch.Tensor, indices: torch.Tensor, views: torch.Tensor,
                               classes: list[str], summary: dict) -> None:
        """Record an external refinery's offline labels (``refinery/labels.npz``, as a generation's) and its
        ``summary`` (top-1 on validation and test, agreement with the given labels) in ``refinery/summary.json``."""
        buf = _labels_file(labels, indices, views, classes, "float32")
        where = self.refinery_dir(seed)
        atomic_write_bytes(where / "labels.npz", buf.getvalue())
        write_json(where / "summary.json", seal({**summary, "files": {"labels.npz": sha256_bytes(buf.getvalue())}}))

    def read_external_refinery(self, seed: int) -> dict | None:
        """The external refinery's summary for ``seed``, or None (no ``--refinery-checkpoint``, or unreadable)."""
        try:
            summary = json.loads((self.refinery_dir(seed) / "summary.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        ok = isinstance(summary, dict) and all(_is_number(summary.get(k)) for k in ("val_top1", "test_top1"))
        if ok and seal_broken(summary):
            raise RunDirError(f"{self.refinery_dir(seed) / 'summary.json'} was edited or is damaged (its sha256 does "
                              f"not match its content); delete {self.refinery_dir(seed)} and rerun to label the "
                              "images with the refinery again")
        return summary if ok else None

    @_main_process_writes("")
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
        buf = _labels_file(labels, indices, views, classes, storage)
        atomic_write_bytes(self.labels_path(seed, generation), buf.getvalue())
        return sha256_bytes(buf.getvalue())

    def load_labels(self, seed: int, generation: int | str, rows: int | None = None,
                    num_classes: int | None = None) -> dict[str, np.ndarray]:
        """A generation's refined labels, verified: keys ``labels`` ``(M, K) float32`` (rows stored as float16 or
        top-J renormalised to sum to 1), ``storage``, ``indices``, ``views``, ``classes`` and ``refinery_only`` (False in files of older versions, which stored the labels after the
        ``--gt-weight`` mix).

        Args:
            rows, num_classes: the M and K the run expects (checked when given).

        Raises:
            RunDirError: a missing or damaged file, or labels that are not M probability rows over K classes.
        """
        path = self.labels_path(seed, generation)
        fix = self._where(seed, generation)
        self._verify(seed, generation, path)
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in ("indices", "views", "classes")}
                out["storage"] = str(z["storage"]) if "storage" in z.files else "float32"
                out["labels"] = _decode_labels(z, out["storage"], len(out["classes"]))
                out["refinery_only"] = bool(z["refinery_only"]) if "refinery_only" in z.files else False
        except FileNotFoundError:
            raise RunDirError(f"{path} is missing; {fix}") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise RunDirError(f"{path} is damaged ({type(e).__name__}); {fix}") from None
        problem = _label_problem(out, rows, num_classes)
        if problem:
            raise RunDirError(f"{path} holds unusable refined labels ({problem}); {fix}")
        return out

    @_main_process_writes()
    def finish_generation(self, seed: int, generation: int | str, summary: dict) -> None:
        """Record the generation's metrics line and summary (written last), then drop its resume point.

        ``summary["files"]`` should map ``model.safetensors`` and ``labels.npz`` to their SHA-256.
        """
        self.append_metrics({"kind": "generation", **{k: v for k, v in summary.items() if k != "files"}})
        write_json(self.summary_path(seed, generation), seal({**summary, "run_id": self.run_id}))
        self.train_state(seed, generation).remove()

    def read_summary(self, seed: int, generation: int | str) -> dict:
        """A finished generation's summary, checked for its keys and value types.

        Raises:
            RunDirError: a damaged or edited ``summary.json`` (the message says which generation to delete).
        """
        path = self.summary_path(seed, generation)
        try:
            summary = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunDirError(f"{path} is damaged ({type(e).__name__}); {self._where(seed, generation)}") from None
        if isinstance(summary, dict) and seal_broken(summary):
            raise RunDirError(f"{path} was edited or is damaged (its sha256 does not match its content); restore the "
                              f"file the run wrote, or {self._where(seed, generation)}")
        problem = _summary_problem(summary, seed, generation)
        if problem:
            raise RunDirError(f"{path} is damaged ({problem}); {self._where(seed, generation)}")
        theirs, ours = summary.get("run_id"), self.run_id
        if theirs is not None and ours is not None and theirs != ours:
            raise RunDirError(f"{path} belongs to another run (run id {theirs}, this run's is {ours}): "
                              f"{self.seed_dir(seed)} was copied from elsewhere; move it out of {self.root}")
        return summary

    # ------------------------------------------------------------------ results
    def read_ensembles(self) -> list[dict]:
        """The entries of ``ensemble.json`` ([] when there is none).

        Raises:
            RunDirError: a damaged file.
        """
        path = self.root / "ensemble.json"
        if not path.exists():
            return []
        fix = "delete it; `refinery evaluate RUN_DIR --ensemble G,G` makes it again"
        try:
            entries = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunDirError(f"{path} is damaged ({type(e).__name__}); {fix}") from None
        ok = isinstance(entries, list) and all(
            isinstance(e, dict) and isinstance(e.get("generations"), list) and isinstance(e.get("per_seed"), dict)
            and _is_number(e.get("test_top1_mean"), allow_nan=True) for e in entries)
        if not ok:
            raise RunDirError(f"{path} is damaged (unexpected content); {fix}")
        if any(seal_broken(e) for e in entries):
            raise RunDirError(f"{path} was edited or is damaged (an entry's sha256 does not match its content); {fix}")
        return entries

    @_main_process_writes()
    def write_ensemble(self, entry: dict) -> None:
        """Add ``entry`` to ``ensemble.json``, replacing one for the same generations."""
        entries = [e for e in self.read_ensembles() if e["generations"] != entry["generations"]]
        write_json(self.root / "ensemble.json", entries + [seal(entry)])

    @_main_process_writes()
    def write_results(self, results: dict, markdown: str) -> None:
        write_results_files(self.root, results, markdown)


def _arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes, in name order): ``split.npz`` stores it."""
    parts = []
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        parts += [name.encode(), str(a.dtype).encode(), str(a.shape).encode(), a.tobytes()]
    return sha256_bytes(b"\0".join(parts))


def _is_number(x: Any, allow_nan: bool = False) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and (allow_nan or math.isfinite(x))


def _summary_problem(s: Any, seed: int, generation: int | str) -> str | None:
    """What is wrong with a generation's summary, or None."""
    if not isinstance(s, dict):
        return "not a JSON object"
    if s.get("seed") != seed or s.get("generation") != generation:
        return f"it names seed {s.get('seed')!r}, generation {s.get('generation')!r}"
    for key in ("val_top1", "test_top1", "train_time_s", "refined_label_entropy", "refined_label_agreement"):
        if not _is_number(s.get(key)):
            return f"{key} is {s.get(key)!r}, not a number"
    for key in ("best_epoch", "epochs_run"):
        if not isinstance(s.get(key), int) or isinstance(s.get(key), bool):
            return f"{key} is {s.get(key)!r}, not an integer"
    if not isinstance(s.get("collapsed"), bool):
        return f"collapsed is {s.get('collapsed')!r}, not true or false"
    files = s.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return "files is not a map of names to checksums"
    return None


LABEL_STORAGE_FLOAT32_MAX = 2**26  # --label-storage auto: float32 up to this many M x K values (256 MiB), else float16


def label_storage(choice: str, rows: int, num_classes: int) -> str:
    """The storage of ``rows`` x ``num_classes`` refined labels for ``--label-storage choice``: ``auto`` is float32
    up to :data:`LABEL_STORAGE_FLOAT32_MAX` values (Fashion-MNIST: 0.5 M; ImageNet's 1.28 M x 1000: 1,281 M, float16),
    else float16; ``topk:J`` with J >= K is float32."""
    if choice == "auto":
        return "float32" if rows * num_classes <= LABEL_STORAGE_FLOAT32_MAX else "float16"
    if choice.startswith("topk:") and int(choice[5:]) >= num_classes:
        return "float32"
    return choice


def as_stored(labels: torch.Tensor, storage: str) -> torch.Tensor:
    """``labels: (M, K) float32`` as :meth:`RunDir.load_labels` will read them back from ``storage``, so a chain
    continues from the same rows whether or not it was interrupted."""
    if storage == "float32":
        return labels
    return torch.from_numpy(_decode_labels(_encode_labels(labels, storage), storage, labels.shape[1]))


def _encode_labels(labels: torch.Tensor, storage: str) -> dict[str, np.ndarray]:
    """The arrays of ``labels.npz`` that hold ``labels: (M, K) float`` rows in ``storage``."""
    rows = labels.float()
    if storage == "float32":
        return {"labels": rows.numpy()}
    if storage == "float16":
        return {"labels": rows.half().numpy()}
    if storage.startswith("topk:"):
        values, top = rows.topk(int(storage[5:]), dim=1)
        return {"topk_indices": top.numpy().astype(np.int64), "topk_values": values.half().numpy()}
    raise ValueError(f"unknown label storage {storage!r}")


def _labels_file(labels: torch.Tensor, indices: torch.Tensor, views: torch.Tensor, classes: list[str],
                 storage: str) -> io.BytesIO:
    """The bytes of a ``labels.npz`` holding ``labels: (M, K) float`` rows in ``storage``."""
    buf = io.BytesIO()
    np.savez(buf, **_encode_labels(labels, storage), indices=indices.numpy().astype(np.int64),
             views=views.numpy().astype(np.int64), classes=np.array(classes), refinery_only=np.array(True),
             storage=np.array(storage))
    return buf


def _decode_labels(z, storage: str, num_classes: int) -> np.ndarray:
    """``(M, K) float32`` rows from the arrays of a ``labels.npz`` (an open file, or :func:`_encode_labels`'s dict)
    in ``storage``; float16 and top-J rows renormalised."""
    if storage == "float32":
        return z["labels"]
    if storage == "float16":
        rows = z["labels"].astype(np.float32)
    elif storage.startswith("topk:"):
        top, values = z["topk_indices"], z["topk_values"].astype(np.float32)
        if top.shape != values.shape or top.ndim != 2 or (top.size and not 0 <= top.min() <= top.max() < num_classes):
            raise ValueError(f"top-k indices of shape {top.shape} outside [0, {num_classes})")
        rows = np.zeros((len(top), num_classes), dtype=np.float32)
        np.put_along_axis(rows, top, values, axis=1)
    else:
        raise ValueError(f"unknown label storage {storage!r}")
    sums = rows.sum(1, keepdims=True)
    return rows / np.where(sums > 0, sums, 1)


def _label_problem(z: dict[str, np.ndarray], rows: int | None, num_classes: int | None) -> str | None:
    """What is wrong with refined labels read from ``labels.npz``, or None."""
    labels, indices = z["labels"], z["indices"]
    if labels.ndim != 2 or labels.dtype != np.float32:
        return f"labels are {labels.dtype} {labels.shape}, not float32 (M, K)"
    if (rows is not None and labels.shape[0] != rows) or (num_classes is not None and labels.shape[1] != num_classes):
        return f"shape {labels.shape}, the run needs ({rows}, {num_classes})"
    if indices.shape != (labels.shape[0],) or z["views"].shape != (labels.shape[0],):
        return f"indices of shape {indices.shape} for {labels.shape[0]} rows"
    if not np.isfinite(labels).all():
        return "NaN or infinite values"
    if (labels < 0).any():
        return "negative probabilities"
    worst = float(np.abs(labels.sum(1, dtype=np.float64) - 1).max()) if len(labels) else 0.0
    if worst > ROW_SUM_TOLERANCE:
        return f"rows sum to 1 only within {worst:.3g}"
    return None
