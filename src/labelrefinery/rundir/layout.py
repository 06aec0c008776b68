"""The layout of a run directory: every path of a run, and which files say what is there.

Layout (``runs/<name>/``)::

    config.yaml      resolved configuration (one mapping per section)
    run.json         code and torch versions, device, precision, dataset facts
    metrics.jsonl    one JSON line per epoch and per generation, appended
    results.json     the table's numbers; results.md the table
    report.html      `refinery inspect`'s page; report.json, report_label_stats.csv, report_images.csv beside it
    label_issues.csv `refinery label-issues`' table; label_issues_{pred_probs,labels,indices}.npy beside it
    label_issues_test.csv  `refinery label-issues --test`: the same for the test images (files beside it alike)
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

A report (``report.*``) or label-issue table (``label_issues*``) written elsewhere with ``--out`` keeps the
same names beside its given path (:func:`report_files`, :func:`label_issue_files`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError

_SEED_DIR = re.compile(r"^seed-(\d+)$")
LABEL_ISSUE_ARRAYS = ("pred_probs", "labels", "indices", "splits")  # the .npy files beside a label-issue table, in write order


def results_files(out_dir: Path) -> tuple[Path, Path]:
    """``results.json`` and ``results.md`` in ``out_dir`` (a run directory or a report's)."""
    return Path(out_dir) / "results.json", Path(out_dir) / "results.md"


def report_files(html_path: Path) -> dict[str, Path]:
    """The page and its data files: ``html``, ``json``, ``label_stats`` and ``images`` paths, side by side."""
    stem = html_path.with_suffix("")
    return {"html": html_path, "json": stem.with_suffix(".json"),
            "label_stats": Path(f"{stem}_label_stats.csv"), "images": Path(f"{stem}_images.csv")}


def label_issue_files(csv_path: Path) -> dict[str, Path]:
    """A label-issue table's ``.npy`` files (:data:`LABEL_ISSUE_ARRAYS`) beside ``csv_path``, then ``csv``."""
    stem = Path(csv_path).with_suffix("")
    return {**{name: Path(f"{stem}_{name}.npy") for name in LABEL_ISSUE_ARRAYS}, "csv": Path(csv_path)}


class RunLayout:
    """The paths of the run directory ``root`` (see the module docstring), and what its files say is there."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # ------------------------------------------------------------------ the top level
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_info_path(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def ensemble_path(self) -> Path:
        return self.root / "ensemble.json"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @property
    def tensorboard_dir(self) -> Path:
        """``tb/``: TensorBoard event files (:class:`labelrefinery.tblog.TensorBoardLog` writes them)."""
        return self.root / "tb"

    @property
    def report_path(self) -> Path:
        """Where ``refinery inspect`` writes its page by default (its data files go beside it)."""
        return self.root / "report.html"

    @property
    def label_issues_path(self) -> Path:
        """Where ``refinery label-issues`` writes its CSV by default."""
        return self.root / "label_issues.csv"

    @property
    def test_label_issues_path(self) -> Path:
        """Where ``refinery label-issues --test`` writes its CSV by default."""
        return self.root / "label_issues_test.csv"

    # ------------------------------------------------------------------ one seed, one generation
    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed-{seed}"

    def split_path(self, seed: int) -> Path:
        return self.seed_dir(seed) / "split.npz"

    def refinery_dir(self, seed: int) -> Path:
        """``seed-<s>/refinery``: what an external ``--refinery-checkpoint`` said before generation 1 trained."""
        return self.seed_dir(seed) / "refinery"

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

    def train_state_path(self, seed: int, generation: int | str) -> Path:
        return self.gen_dir(seed, generation) / "train-state.pt"

    def retrain_hint(self, seed: int, generation: int | str) -> str:
        """What to delete to train a generation (or control) again: the end of a damaged file's message."""
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

    def summary_paths(self, seed: int | None = None) -> list[Path]:
        """Every ``summary.json`` of a finished generation or control (of ``seed``, or of every seed), sorted."""
        where = self.root.glob("seed-*/*-*/summary.json") if seed is None else self.seed_dir(seed).glob(
            "*-*/summary.json")
        return sorted(where)

    def has_finished_work(self) -> bool:
        """True when any generation finished or any epoch was saved (such a directory is never removed)."""
        return any(self.root.glob("seed-*/*-*/summary.json")) or any(self.root.glob("seed-*/*-*/train-state.pt"))

    def leftovers(self) -> Iterator[Path]:
        """Temporary files of killed writes, then resume points of generations that finished."""
        yield from self.root.rglob(".*.tmp")
        for state in self.root.glob("seed-*/*-*/train-state.pt"):
            if (state.parent / "summary.json").is_file():
                yield state

    def is_empty_or_leftovers(self) -> bool:
        """True when the directory holds nothing but a lock file and temporary files of killed writes."""
        return all(p.name == ".lock" or (p.name.startswith(".") and p.name.endswith(".tmp"))
                   for p in self.root.iterdir())

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
