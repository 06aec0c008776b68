"""Evaluating saved generations, alone and as an ensemble of generations.

The ensemble's prediction is the average of the named generations' softmax
outputs (the ensemble of generations of "Born-Again Neural Networks",
Furlanello et al. 2018, ICML); its test top-1 accuracy is reported per seed and as mean ± std.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from .config import RunConfig
from .data import Dataset, load_dataset
from .runio import load_model, write_json
from .train import Pipeline, predict, resolve_device, resolve_precision, top1_accuracy


def generation_probabilities(run_dir: Path, seed: int, generation: int, dataset: Dataset, pipeline: Pipeline,
                             test_size: int | None = None) -> torch.Tensor:
    """Softmax ``(N, K) float32`` of one saved generation on the test split (first ``test_size`` images).

    Raises:
        ValueError: the generation's checkpoint is missing or does not match the dataset's classes.
    """
    path = Path(run_dir) / f"seed-{seed}" / f"gen-{generation}" / "model.safetensors"
    model, classes = load_model(path, pipeline.device)
    if classes is not None and classes != dataset.classes:
        raise ValueError(f"{path} was trained on classes {classes[:3]}..., not {dataset.name}'s")
    images = dataset.test.images if test_size is None else dataset.test.images[:test_size]
    return predict(model, images, pipeline).softmax(1)


def ensemble_results(run_dir: Path, cfg: RunConfig, dataset: Dataset, pipeline: Pipeline,
                     generations: list[int] | None = None) -> dict:
    """Test top-1 (%) of the averaged softmax of ``generations`` for every seed; appended to ``ensemble.json``."""
    gens = generations or cfg.ensemble_generations()
    labels = dataset.test.labels if cfg.test_size is None else dataset.test.labels[: cfg.test_size]
    per_seed = {}
    for seed_dir in sorted(Path(run_dir).glob("seed-*")):
        seed = int(seed_dir.name.split("-")[1])
        if not all((seed_dir / f"gen-{g}" / "summary.json").exists() for g in gens):
            continue
        probs = torch.stack([generation_probabilities(run_dir, seed, g, dataset, pipeline, cfg.test_size)
                             for g in gens]).mean(0)
        per_seed[str(seed)] = top1_accuracy(probs, labels)
    acc = np.array(list(per_seed.values()))
    entry = {"generations": gens, "per_seed": per_seed,
             "test_top1_mean": float(acc.mean()) if len(acc) else float("nan"),
             "test_top1_std": float(acc.std(ddof=1)) if len(acc) > 1 else None}
    path = Path(run_dir) / "ensemble.json"
    entries = [e for e in (json.loads(path.read_text()) if path.exists() else []) if e["generations"] != gens]
    write_json(path, entries + [entry])
    return entry


def evaluate_run(run_dir: Path, ensemble: str = "", device: str = "auto") -> str:
    """Recompute test top-1 of every saved generation (and of an ensemble) of a run; returns a Markdown table.

    Raises:
        ValueError: not a run directory, or a bad ``ensemble`` string.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml); give the directory `refinery run` made")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg = RunConfig(**{**saved, "ensemble": ensemble})
    gens_wanted = cfg.ensemble_generations()
    dataset = load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size, svhn_extra=cfg.svhn_extra)
    dev = resolve_device(device)
    from .refinery import CenterCropView

    pipeline = Pipeline.create(dev, dataset.mean, dataset.std, resolve_precision(cfg.precision, dev),
                               CenterCropView() if cfg.augment == "crop" else None)
    labels = dataset.test.labels if cfg.test_size is None else dataset.test.labels[: cfg.test_size]
    lines = ["| seed | generation | test top-1 (%) |", "|---|---|---|"]
    for seed_dir in sorted(run_dir.glob("seed-*")):
        seed = int(seed_dir.name.split("-")[1])
        g = 1
        while (seed_dir / f"gen-{g}" / "model.safetensors").exists():
            probs = generation_probabilities(run_dir, seed, g, dataset, pipeline, cfg.test_size)
            lines.append(f"| {seed} | R{g} | {top1_accuracy(probs, labels):.2f} |")
            g += 1
    if gens_wanted:
        entry = ensemble_results(run_dir, cfg, dataset, pipeline, gens_wanted)
        for seed, acc in entry["per_seed"].items():
            lines.append(f"| {seed} | ensemble {','.join(map(str, gens_wanted))} | {acc:.2f} |")
        from .report import summarize_run, write_results

        write_results(run_dir, [summarize_run(run_dir)])  # the table gains the ensemble row
    return "\n".join(lines)
