"""The run directory: the only module that knows its file layout, and the one writer of its files.

Layout (``runs/<name>/``)::

    config.yaml      resolved configuration (one mapping per section)
    run.json         code and torch versions, device, precision, dataset facts
    metrics.jsonl    one JSON line per epoch and per generation, appended
    results.json     the table's numbers; results.md the table
    ensemble.json    test top-1 of ensembles of generations
    seed-<s>/split.npz                  train/val indices and the ground-truth labels used
    seed-<s>/gen-<g>/model.safetensors  weights + class names + model spec
    seed-<s>/gen-<g>/labels.npz         refined labels made by this generation
    seed-<s>/gen-<g>/summary.json       written last: marks the generation finished
    seed-<s>/gen-<g>/train-state.pt     only while training: the epoch-level resume point

Every file is written atomically (:mod:`labelrefinery.fileio`) except
``metrics.jsonl``, which is appended one whole line per write; a reader skips
a partial last line left by a killed process.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .checkpoint import load_model, save_checkpoint
from .config import RunConfig, config_difference
from .errors import ConfigError, RunDirError
from .fileio import atomic_write_bytes, atomic_write_text, write_json
from .models import ModelSpec

_SEED_DIR = re.compile(r"^seed-(\d+)$")


def write_results_files(out_dir: Path, results: Any, markdown: str) -> None:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (a run directory or a report's), atomically."""
    write_json(Path(out_dir) / "results.json", results)
    atomic_write_text(Path(out_dir) / "results.md", "# Label Refinery results\n\n" + markdown)


class TrainStateFile:
    """A generation's epoch-level resume point (``train-state.pt``, loaded with ``weights_only=True``)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self, device: torch.device | str = "cpu") -> dict | None:
        """The saved training state (tensors and numbers only), or None when there is none."""
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location=device, weights_only=True)

    def last_epoch(self) -> int | None:
        """The 0-based epoch the state was saved after, or None."""
        state = self.load()
        return None if state is None else int(state["epoch"])

    def save(self, state: dict) -> None:
        """Write ``state`` (a dict of tensors, state dicts and numbers) atomically."""
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class RunDir:
    """One run directory (see the module docstring for its layout).

    Args:
        root: the directory; nothing is made until something is written.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed-{seed}"

    def gen_dir(self, seed: int, generation: int) -> Path:
        return self.seed_dir(seed) / f"gen-{generation}"

    def model_path(self, seed: int, generation: int) -> Path:
        return self.gen_dir(seed, generation) / "model.safetensors"

    def labels_path(self, seed: int, generation: int) -> Path:
        return self.gen_dir(seed, generation) / "labels.npz"

    def summary_path(self, seed: int, generation: int) -> Path:
        return self.gen_dir(seed, generation) / "summary.json"

    def train_state(self, seed: int, generation: int) -> TrainStateFile:
        return TrainStateFile(self.gen_dir(seed, generation) / "train-state.pt")

    # ------------------------------------------------------------------ what is there
    def is_run(self) -> bool:
        """True when the directory holds a run (its ``config.yaml``)."""
        return self.config_path.is_file()

    def seeds(self) -> list[int]:
        """Seeds with a directory here, ascending."""
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if p.is_dir() and (m := _SEED_DIR.match(p.name)))

    def is_finished(self, seed: int, generation: int) -> bool:
        return self.summary_path(seed, generation).is_file()

    def finished_generations(self, seed: int) -> list[int]:
        """1, 2, ... up to the first generation of ``seed`` that is not finished."""
        g = 0
        while self.is_finished(seed, g + 1):
            g += 1
        return list(range(1, g + 1))

    def has_finished_work(self) -> bool:
        """True when any generation finished or any epoch was saved (such a directory is never removed)."""
        return any(self.root.glob("seed-*/gen-*/summary.json")) or any(self.root.glob("seed-*/gen-*/train-state.pt"))

    # ------------------------------------------------------------------ configuration
    def read_config(self) -> RunConfig:
        """The run's saved configuration.

        Raises:
            RunDirError: not a run directory, or a ``config.yaml`` that cannot be read.
        """
        if not self.is_run():
            raise RunDirError(f"{self.root} is not a run directory (no config.yaml); give the directory "
                              "`refinery run` made")
        try:
            return RunConfig.from_dict(yaml.safe_load(self.config_path.read_text()) or {})
        except (yaml.YAMLError, ConfigError, TypeError, AttributeError) as e:
            raise RunDirError(f"{self.config_path} cannot be read ({str(e).splitlines()[0]}); restore it or start "
                              "a new run directory") from None

    def check_resumable(self, cfg: RunConfig) -> bool:
        """Check the directory against ``cfg``; True when it holds a run being resumed.

        Raises:
            RunDirError: it holds something else, or a run with a different configuration.
        """
        if not self.is_run():
            if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
                raise RunDirError(f"{self.root} exists and is not a refinery run (no config.yaml); choose another "
                                  "--name or --runs-dir")
            return False
        diff = config_difference(self.read_config(), cfg)
        if diff is not None:
            raise RunDirError(f"run directory {self.root} was made with a different configuration ({diff}); "
                              "rerun with the same flags to resume it, or pick a new --name")
        return True

    def write_config(self, cfg: RunConfig) -> None:
        """Save ``cfg``; ``generations`` and ``seeds`` only ever extend what the directory records."""
        stored = cfg.to_dict()
        if self.is_run():
            saved = self.read_config()
            stored["generations"] = max(saved.generations, cfg.generations)
            stored["seeds"] = max(saved.seeds, cfg.seeds)
        atomic_write_text(self.config_path, yaml.safe_dump(stored, sort_keys=False))

    def write_run_info(self, info: dict) -> None:
        write_json(self.root / "run.json", info)

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, record: dict) -> None:
        """Append one JSON line (one write call, flushed to disk)."""
        line = (json.dumps(record) + "\n").encode("utf-8")
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "ab") as f:
            if f.tell() > 0:
                with open(self.metrics_path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":  # a partial line from a killed process: start a new one
                        line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict]:
        """Every complete record of ``metrics.jsonl`` ([] when there is none)."""
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a partial line left by a killed append
        return records

    def drop_metrics(self, seed: int, generation: int, after_epoch: int) -> None:
        """Remove a restarted generation's records of epochs after ``after_epoch`` (1-based) and its summary."""
        records = self.read_metrics()
        kept = [r for r in records if not (r.get("seed") == seed and r.get("generation") == generation
                                           and (r.get("kind") == "generation" or r.get("epoch", 0) > after_epoch))]
        if len(kept) != len(records):
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ------------------------------------------------------------------ one seed
    def write_split(self, seed: int, train_idx: torch.Tensor, val_idx: torch.Tensor, val_labels: torch.Tensor,
                    test_labels: torch.Tensor) -> None:
        """Save the seed's split once (``(N,) int64`` indices and labels)."""
        path = self.seed_dir(seed) / "split.npz"
        if path.exists():
            return
        buf = io.BytesIO()
        np.savez(buf, train_indices=train_idx.numpy(), val_indices=val_idx.numpy(),
                 val_labels=val_labels.numpy(), test_labels=test_labels.numpy())
        atomic_write_bytes(path, buf.getvalue())

    # ------------------------------------------------------------------ one generation
    def save_model(self, seed: int, generation: int, model: torch.nn.Module, classes: list[str], spec: ModelSpec,
                   extra: dict) -> None:
        save_checkpoint(self.model_path(seed, generation), model, classes, spec.to_dict(), extra)

    def load_model(self, seed: int, generation: int, device: torch.device,
                   spec: ModelSpec | None = None) -> tuple[torch.nn.Module, list[str] | None]:
        """A saved generation's model (see :func:`labelrefinery.checkpoint.load_model`)."""
        return load_model(self.model_path(seed, generation), device, spec)

    def save_labels(self, seed: int, generation: int, labels: torch.Tensor, indices: torch.Tensor,
                    views: torch.Tensor, classes: list[str]) -> None:
        """Save refined labels as ``labels.npz``.

        Args:
            labels: ``(M, K) float32`` probability rows.
            indices: ``(M,) int64`` index of each row's image in the dataset's training split.
            views: ``(M,) int64`` 0 for the image itself, c >= 1 for its c-th stored augmented copy.
            classes: the K class names.
        """
        buf = io.BytesIO()
        np.savez(buf, labels=labels.float().numpy(), indices=indices.numpy().astype(np.int64),
                 views=views.numpy().astype(np.int64), classes=np.array(classes))
        atomic_write_bytes(self.labels_path(seed, generation), buf.getvalue())

    def load_labels(self, seed: int, generation: int) -> dict[str, np.ndarray]:
        """A generation's refined labels: keys ``labels``, ``indices``, ``views``, ``classes``."""
        with np.load(self.labels_path(seed, generation), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def finish_generation(self, seed: int, generation: int, summary: dict) -> None:
        """Record the generation's metrics line and summary (written last), then drop its resume point."""
        self.append_metrics({"kind": "generation", **summary})
        write_json(self.summary_path(seed, generation), summary)
        self.train_state(seed, generation).remove()

    def read_summary(self, seed: int, generation: int) -> dict:
        return json.loads(self.summary_path(seed, generation).read_text())

    # ------------------------------------------------------------------ results
    def read_ensembles(self) -> list[dict]:
        path = self.root / "ensemble.json"
        return json.loads(path.read_text()) if path.exists() else []

    def write_ensemble(self, entry: dict) -> None:
        """Add ``entry`` to ``ensemble.json``, replacing one for the same generations."""
        entries = [e for e in self.read_ensembles() if e["generations"] != entry["generations"]]
        write_json(self.root / "ensemble.json", entries + [entry])

    def write_results(self, results: dict, markdown: str) -> None:
        write_results_files(self.root, results, markdown)
