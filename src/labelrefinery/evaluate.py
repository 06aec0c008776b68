"""Evaluating saved generations, alone and as an ensemble of generations.

The ensemble's prediction is the average of the named generations' softmax
outputs (the ensemble of generations of "Born-Again Neural Networks",
Furlanello et al. 2018, ICML); its test top-1 accuracy is reported per seed and as mean ± std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .checkpoint import check_classes, preprocessing_record
from .data import Dataset
from .deployed import Classifier
from .device import resolve_device
from .inference import top1_accuracy
from .errors import ConfigError, RunDirError
from .protocol import load_run_dataset
from .report.tables import format_table, summarize_run
from .rundir import RunDir


def generation_probabilities(run_dir: RunDir, seed: int, generation: int, dataset: Dataset, augment: str,
                             device: torch.device, test_size: int | None = None) -> torch.Tensor:
    """Softmax ``(N, K) float32`` of one saved generation on the test split (first ``test_size`` images), as
    the run scored it and :func:`~labelrefinery.classifier.load_classifier` predicts
    (:meth:`~labelrefinery.deployed.Classifier.predict_proba`: fp32, through the model's preprocessing).

    Raises:
        RunDirError: the generation's checkpoint is missing or damaged.
        CheckpointError: it was trained on other classes.
    """
    model, classes = run_dir.load_model(seed, generation, device)
    if classes is not None:
        check_classes(str(run_dir.model_path(seed, generation)), classes, dataset)
    classifier = Classifier(model, classes or dataset.classes, preprocessing_record(dataset, augment)).to(device)
    images = dataset.test.images if test_size is None else dataset.test.images[:test_size]
    return classifier.predict_proba(images)


def ensemble_results(run_dir: RunDir, dataset: Dataset, augment: str, device: torch.device, generations: list[int],
                     test_size: int | None = None) -> dict:
    """Test top-1 (%) of the averaged softmax of ``generations`` for every seed that finished them all.

    The entry is also written to ``ensemble.json`` (replacing one for the same generations).

    Returns:
        ``{"generations": [g, ...], "per_seed": {seed: top-1 %}, "test_top1_mean": %, "test_top1_std": % or None}``
        (the sample std over seeds, None with one seed).

    Raises:
        RunDirError: a damaged or missing file of a generation.
    """
    labels = dataset.test.labels if test_size is None else dataset.test.labels[:test_size]
    per_seed = {}
    for seed in run_dir.seeds():
        if not all(run_dir.is_finished(seed, g) for g in generations):
            continue
        probs = torch.stack([generation_probabilities(run_dir, seed, g, dataset, augment, device, test_size)
                             for g in generations]).mean(0)
        per_seed[str(seed)] = top1_accuracy(probs, labels)
    acc = np.array(list(per_seed.values()))
    entry = {"generations": list(generations), "per_seed": per_seed,
             "test_top1_mean": float(acc.mean()) if len(acc) else float("nan"),
             "test_top1_std": float(acc.std(ddof=1)) if len(acc) > 1 else None}
    run_dir.write_ensemble(entry)
    return entry


def evaluate_run(run_dir: Path, ensemble: list[int] | None = None, device: str = "auto") -> str:
    """Recompute test top-1 of every saved generation (and of an ensemble) of a run; returns a Markdown table.

    Without ``ensemble`` it only reads (a read-only or archived run directory works, and a run may be training
    in it); with one it writes ``ensemble.json`` and the results, holding the directory while it does.

    Raises:
        RunDirError: not a run directory, a damaged file, or (with ``ensemble``) a directory in use by another
            process or not writable.
        ConfigError: an ensemble that is not two or more generations of the run.
    """
    if ensemble is not None and not ensemble:
        raise ConfigError("--ensemble got no generations; give two or more, e.g. --ensemble 1,2")
    rd = RunDir(run_dir)
    cfg = rd.read_config()
    if not ensemble:
        return _evaluate_locked(rd, cfg, [], device)
    with rd.lock():
        return _evaluate_locked(rd, cfg, list(ensemble), device)


def _evaluate_locked(rd: RunDir, cfg, gens_wanted: list[int], device: str) -> str:
    if gens_wanted and (len(gens_wanted) < 2 or any(not 1 <= g <= cfg.generations for g in gens_wanted)
                        or len(set(gens_wanted)) != len(gens_wanted)):
        raise ConfigError(f"--ensemble needs two or more different generations in 1..{cfg.generations}, got "
                          f"{','.join(map(str, gens_wanted))!r}")
    if not any(rd.finished_generations(s) for s in rd.seeds()):
        raise RunDirError(f"{rd.root} has no finished generation yet; evaluate it once R1 has finished")
    d = cfg.data
    dataset = load_run_dataset(cfg)
    dev = resolve_device(device)
    labels = dataset.test.labels if d.test_size is None else dataset.test.labels[: d.test_size]
    lines = ["| seed | generation | test top-1 (%) |", "|---|---|---|"]
    for seed in rd.seeds():
        for g in rd.finished_generations(seed):
            probs = generation_probabilities(rd, seed, g, dataset, d.augment, dev, d.test_size)
            lines.append(f"| {seed} | R{g} | {top1_accuracy(probs, labels):.2f} |")
    if gens_wanted:
        entry = ensemble_results(rd, dataset, d.augment, dev, gens_wanted, d.test_size)
        for seed, acc in entry["per_seed"].items():
            lines.append(f"| {seed} | ensemble {','.join(map(str, gens_wanted))} | {acc:.2f} |")
        results = summarize_run(rd.root)
        rd.write_results(results, format_table([results]))  # the table gains the ensemble row
    return "\n".join(lines)
