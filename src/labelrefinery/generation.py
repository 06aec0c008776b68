"""One generation of the chain: build, fit, recalibrate, save, make refined labels, evaluate, summarise.

Label Refinery (Bagherinezhad, Horton, Rastegari, Farhadi 2018, arXiv 1805.02641):
generation 1 fits the ground truth (or an external refinery's labels),
generation g fits the refined labels of generation g - 1, in two forms:

- ``labels=offline`` (the blog write-up in shared/seed): after generation g is
  trained, it predicts softmax probabilities on the stored training views once;
  those refined labels are generation g + 1's targets. They describe a fixed
  view of each image, so with random crops or strong online augmentation they
  describe a different picture than the student sees.
- ``labels=online`` (the paper's code): generation g, frozen, labels exactly the
  augmented batch generation g + 1 sees at every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .batch import Pipeline
from .config import RunConfig
from .console import log
from .data import Dataset
from .errors import RunDirError
from .engine import evaluate, fit, predict, recalibrate_batchnorm, top1_accuracy
from .models import ModelSpec, build_model
from .protocol import SeedData
from .rundir import RunDir
from .seeding import seed_model_init
from .targets import FrozenRefinery, LabelRecipe, RefineryTargets, StoredTargets, TargetSource

COLLAPSE_MARGIN_POINTS = 5.0  # validation top-1 within this many points of chance counts as collapsed
COLLAPSE_DROP_POINTS = 10.0  # ... and so does a drop of more than this many points from the previous generation


@dataclass
class Experiment:
    """What every generation of a run shares.

    Attributes:
        cfg: the run's configuration.
        dataset: the loaded dataset.
        run_dir: where results go.
        pipeline: device, normalisation, precision and evaluation view.
        spec: the model every generation builds.
        augment: the batched training augmentation, or None.
        recipe: how refinery logits become targets.
        external: a ``--refinery-checkpoint`` model that labels generation 1's targets, or None.
    """

    cfg: RunConfig
    dataset: Dataset
    run_dir: RunDir
    pipeline: Pipeline
    spec: ModelSpec
    augment: object | None
    recipe: LabelRecipe
    external: nn.Module | None = None


def target_source(exp: Experiment, data: SeedData, generation: int, refinery: nn.Module | None,
                  stored: torch.Tensor | None) -> TargetSource:
    """What generation ``generation`` of ``data.seed`` fits.

    Generation 1 fits the ground truth, or the external refinery's labels; generation g > 1 fits
    generation g - 1's labels: per batch (``labels=online``) or the rows it stored (``offline``).

    Args:
        refinery: the previous generation's model when it is in memory; else None (loaded when needed).
        stored: ``(M, K) float32`` offline refined labels of the previous generation, or None.
    """
    ref, pipeline = exp.cfg.refinement, exp.pipeline
    if generation == 1 and exp.external is None:
        return StoredTargets(data.ground_truth, num_classes=exp.dataset.train.num_classes)
    if ref.labels == "online":
        if refinery is None:
            refinery = exp.external if generation == 1 else \
                exp.run_dir.load_model(data.seed, generation - 1, pipeline.device, exp.spec)[0]
        return RefineryTargets(FrozenRefinery(refinery), exp.recipe, data.ground_truth,
                               jitter_prob=ref.adversarial_jitter, jitter_eps=ref.jitter_eps)
    if stored is None:  # the external refinery's offline labels, made once on the stored views
        stored = exp.recipe(predict(exp.external, data.images, pipeline), data.views.labels)
    return StoredTargets(stored.to(pipeline.device), exp.recipe.temperature)


def is_collapsed(val_top1: float, num_classes: int, previous_val_top1: float | None) -> bool:
    """Validation top-1 (%) near chance, or far below the previous generation's."""
    chance = 100.0 / num_classes
    return val_top1 < chance + COLLAPSE_MARGIN_POINTS or (
        previous_val_top1 is not None and val_top1 < previous_val_top1 - COLLAPSE_DROP_POINTS)


def train_generation(exp: Experiment, data: SeedData, generation: int, targets: TargetSource,
                     previous: dict | None) -> tuple[nn.Module, dict, torch.Tensor]:
    """Train, save and evaluate generation ``generation`` of ``data.seed``; resumes from its epoch-level state.

    Args:
        targets: what it fits (see :func:`target_source`).
        previous: the summary of the generation before, or None.

    Returns:
        ``(model in eval mode, summary dict, (M, K) float32 refined labels it made on the training views)``.
    """
    cfg, seed, rd, pipeline = exp.cfg, data.seed, exp.run_dir, exp.pipeline
    tag = f"seed {seed} R{generation}"
    seed_model_init(seed, generation)
    model = build_model(exp.spec).to(pipeline.device).to(memory_format=torch.channels_last)
    state_file = rd.train_state(seed, generation)
    last = state_file.last_epoch()
    resume_epoch = 0 if last is None else last + 1
    if resume_epoch:
        log(f"[{tag}] resuming after epoch {resume_epoch}")
    rd.drop_metrics(seed, generation, resume_epoch)  # a restarted generation forgets epochs it will redo
    started = time.perf_counter()
    result = fit(model, data.images, targets, data.val_images, data.val_labels, cfg.training, pipeline,
                 seed_keys=(seed, generation), augment=exp.augment, state_file=state_file,
                 log=lambda r: rd.append_metrics({"kind": "epoch", "seed": seed, "generation": generation, **r}),
                 progress=cfg.execution.progress, compile=cfg.execution.compile, desc=f"[{tag}]")
    if cfg.training.recalibrate_bn:
        originals = data.images[(data.views.views == 0).to(pipeline.device)] if cfg.data.augment == "static" \
            else data.images
        recalibrate_batchnorm(model, originals, pipeline)
    train_time = time.perf_counter() - started
    files = {"model.safetensors": rd.save_model(seed, generation, model, exp.dataset.classes, exp.spec,
                                                {"seed": seed, "generation": generation,
                                                 "val_top1": result.best_val_top1})}
    refined = exp.recipe(predict(model, data.images, pipeline), data.views.labels)
    files["labels.npz"] = rd.save_labels(seed, generation, refined, data.views.indices, data.views.views,
                                         exp.dataset.classes)
    val = evaluate(model, data.val_images, data.val_labels, pipeline)
    test_top1 = top1_accuracy(predict(model, data.test_images, pipeline), data.test_labels)
    summary = {
        "seed": seed, "generation": generation, "val_top1": val["top1"], "test_top1": test_top1,
        "best_epoch": result.best_epoch + 1, "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early, "train_time_s": train_time,
        "refined_label_entropy": float(-(torch.xlogy(refined, refined)).sum(1).mean()),
        "refined_label_agreement": top1_accuracy(refined, data.views.labels),
        "collapsed": is_collapsed(val["top1"], exp.dataset.train.num_classes,
                                  previous["val_top1"] if previous else None),
        "files": files,  # SHA-256 of what this generation wrote, checked whenever they are read back
    }
    rd.finish_generation(seed, generation, summary)
    _log_summary(tag, summary, exp.dataset.train.num_classes, previous)
    return model, summary, refined


def _log_summary(tag: str, s: dict, num_classes: int, previous: dict | None) -> None:
    log(f"[{tag}] val {s['val_top1']:.2f}%  test {s['test_top1']:.2f}%  ({s['epochs_run']} epochs, "
        f"best {s['best_epoch']}, {s['train_time_s']:.0f} s; refined labels agree with ground truth on "
        f"{s['refined_label_agreement']:.1f}%, entropy {s['refined_label_entropy']:.3f} nats)")
    if s["collapsed"]:
        log(f"[{tag}] WARNING: generation collapsed (val {s['val_top1']:.2f}%, chance {100.0 / num_classes:.1f}%"
            + (f", previous {previous['val_top1']:.2f}%" if previous else "") + "); it is flagged in the results")


def reload_generation(exp: Experiment, data: SeedData, generation: int) -> tuple[dict, torch.Tensor]:
    """A generation finished earlier: ``(its summary, its (M, K) float32 refined labels)``.

    Raises:
        RunDirError: its labels belong to other training images.
    """
    rd, seed = exp.run_dir, data.seed
    summary = rd.read_summary(seed, generation)
    saved = rd.load_labels(seed, generation, len(data.views.indices), exp.dataset.train.num_classes)
    if not np.array_equal(saved["indices"], data.views.indices.numpy()):
        raise RunDirError(f"{rd.labels_path(seed, generation)} belongs to other training images; start a new --name")
    log(f"[seed {seed} R{generation}] finished earlier: val {summary['val_top1']:.2f}%  "
        f"test {summary['test_top1']:.2f}%")
    return summary, torch.from_numpy(saved["labels"])
