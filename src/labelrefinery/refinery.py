"""The generation loop: train R1 on ground truth, let it refine the labels, train R2 on them, repeat.

Label Refinery (Bagherinezhad, Horton, Rastegari, Farhadi 2018, arXiv 1805.02641),
in two forms:

- ``labels=offline`` (the blog write-up in shared/seed): after generation k is
  trained, it predicts softmax probabilities on the stored training views once;
  those refined labels are generation k+1's targets. They describe a fixed view
  of each image, so with random crops or strong online augmentation they
  describe a different picture than the student sees.
- ``labels=online`` (the paper's code): generation k, frozen, labels exactly the
  augmented batch generation k+1 sees at every step.

Validation (a stratified ``val_fraction`` of the training set, drawn by the
seed) and test images keep their ground-truth labels in every generation: they
are never augmented, refined, or used to make refined labels.

Run directory (``runs/<name>/``)::

    config.yaml      resolved configuration
    run.json         code and torch versions, device, precision
    metrics.jsonl    one line per epoch and per generation
    results.json     the table's numbers; results.md the table
    seed-<s>/split.npz              train/val indices and the ground-truth labels used
    seed-<s>/gen-<g>/model.safetensors  weights + class names + model spec
    seed-<s>/gen-<g>/labels.npz     refined labels made by this generation
    seed-<s>/gen-<g>/summary.json   written last: marks the generation finished
    seed-<s>/gen-<g>/train-state.pt only while training: the epoch-level resume point
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from . import __version__
from .augment import RandomAffine, RandomResizedCrop, augment_uint8
from .config import RunConfig, config_difference
from .data import DataError, Dataset, load_dataset, stratified_split
from .models import ModelSpec, build_model
from .report import summarize_run, write_results
from .runio import (append_jsonl, atomic_write_bytes, atomic_write_text, load_checkpoint, load_labels,
                    load_model, model_from_state, read_jsonl, save_checkpoint, save_labels, write_json)
from .targets import refined_labels
from .train import (FrozenRefinery, OnlineLabels, Pipeline, derive_seed, evaluate, fit, predict,
                    recalibrate_batchnorm, resolve_device, resolve_precision, top1_accuracy)


class RunDirError(ValueError):
    """An existing run directory that cannot be continued with the given configuration."""


def log(msg: str) -> None:
    """One line to stderr (progress bars share it)."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def code_version() -> str:
    """Package version plus the git commit of the source tree when it is a checkout."""
    import subprocess

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


def prepare_run_dir(run_dir: Path, cfg: RunConfig) -> bool:
    """Check an existing run directory against ``cfg``; returns True when it is being resumed.

    Raises:
        RunDirError: the directory holds a run with a different configuration.
    """
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunDirError(
                f"{run_dir} exists and is not a refinery run (no config.yaml); choose another --name or --runs-dir"
            )
        return False
    saved = yaml.safe_load(cfg_path.read_text()) or {}
    diff = config_difference(saved, cfg)
    if diff is not None:
        raise RunDirError(
            f"run directory {run_dir} was made with a different configuration ({diff}); "
            "rerun with the same flags to resume it, or pick a new --name"
        )
    return True


def make_augment(cfg: RunConfig, dataset: Dataset):
    """The batched augmentation for ``cfg.augment`` (None for none/static at training time)."""
    if cfg.augment in ("online", "static"):
        return RandomAffine(hflip=dataset.hflip_keeps_class)
    if cfg.augment == "crop":
        return RandomResizedCrop(size=input_size(cfg, dataset), hflip=dataset.hflip_keeps_class)
    return None


def input_size(cfg: RunConfig, dataset: Dataset) -> int:
    """Side of the images the model sees, in pixels: the stored size, or 224/256 of it for ``augment=crop``."""
    side = dataset.image_shape[1]
    return max(1, round(side * CenterCropView.fraction)) if cfg.augment == "crop" else side


class CenterCropView:
    """Evaluation view for ``augment=crop``: the centre 224/256 of each side (256 -> 224 px, 32 -> 28 px)."""

    fraction = 224 / 256

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C, round(H * 7/8), round(W * 7/8))``."""
        _, _, h, w = x.shape
        ch, cw = max(1, round(h * self.fraction)), max(1, round(w * self.fraction))
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[:, :, top : top + ch, left : left + cw]


@dataclass
class TrainingViews:
    """The training set of one seed: the stored views and their ground truth.

    Attributes:
        images: ``(M, C, H, W) uint8``: the training images, followed by each stored augmented copy (static).
        labels: ``(M,) int64`` ground truth of each view.
        indices: ``(M,) int64`` index of each view's image in the dataset's training split.
        views: ``(M,) int64`` 0 = the image itself, c = its c-th stored augmented copy.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    views: torch.Tensor


def training_views(dataset: Dataset, train_idx: torch.Tensor, cfg: RunConfig, seed: int) -> TrainingViews:
    """The images generation 1 trains on; with ``augment=static``, plus ``static_copies`` copies made once from the seed."""
    images = dataset.train.images[train_idx]
    labels = dataset.train.labels[train_idx]
    parts, views = [images], [torch.zeros(len(images), dtype=torch.int64)]
    if cfg.augment == "static":
        affine = RandomAffine(hflip=dataset.hflip_keeps_class)
        for c in range(1, cfg.static_copies + 1):
            g = torch.Generator().manual_seed(derive_seed(seed, 0x57A71C, c))
            parts.append(augment_uint8(images, affine, g))
            views.append(torch.full((len(images),), c, dtype=torch.int64))
    reps = len(parts)
    return TrainingViews(torch.cat(parts), labels.repeat(reps), train_idx.repeat(reps), torch.cat(views))


def seed_split(dataset: Dataset, cfg: RunConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) into the dataset's training split for ``seed``."""
    labels = dataset.train.labels
    pool = torch.arange(len(labels))
    if cfg.train_size is not None and cfg.train_size < len(labels):
        _, pool = stratified_split(labels, cfg.train_size / len(labels), seed=0)
    train_pos, val_pos = stratified_split(labels[pool], cfg.val_fraction, seed)
    return pool[train_pos], pool[val_pos]


def load_refinery(path: str | Path, model_name: str | None, dataset: Dataset, image_size: int,
                  device: torch.device) -> torch.nn.Module:
    """Load a user-given refinery (``--refinery-checkpoint``) for ``dataset``.

    Accepts this tool's ``model.safetensors`` (which stores its model spec and
    class names) or a plain torchvision/timm state dict (``.safetensors``,
    ``.pt``, ``.pth``, loaded with ``weights_only=True``) together with
    ``model_name``. A ``module.`` prefix from DataParallel/DDP is stripped.

    Raises:
        ValueError: unreadable file; no model name known; stored class names
            that differ from the dataset's (the message shows the first
            difference); missing or unexpected weights (never a partial load).
    """
    state, classes, spec, _ = load_checkpoint(Path(path))
    if classes is not None and classes != dataset.classes:
        i = next((i for i, (a, b) in enumerate(zip(classes, dataset.classes)) if a != b),
                 min(len(classes), len(dataset.classes)))
        have = repr(classes[i]) if i < len(classes) else "(none)"
        want = repr(dataset.classes[i]) if i < len(dataset.classes) else "(none)"
        raise ValueError(
            f"refinery {path} was trained on other classes: class {i} is {have} there but {want} in "
            f"{dataset.name} ({len(classes)} vs {len(dataset.classes)} classes); use a refinery trained on this dataset"
        )
    c = dataset.image_shape[0]
    if spec is None or model_name is not None:
        if model_name is None:
            raise ValueError(f"{path} does not say which model it holds; add --refinery-model NAME")
        spec_obj = ModelSpec(model_name, dataset.train.num_classes, c, image_size)
    else:
        spec_obj = ModelSpec(**spec)
    if spec_obj.num_classes != dataset.train.num_classes or spec_obj.in_channels != c:
        raise ValueError(f"refinery {path} has {spec_obj.num_classes} classes and {spec_obj.in_channels} input "
                         f"channels; {dataset.name} needs {dataset.train.num_classes} and {c}")
    model = model_from_state(state, spec_obj, device, f"refinery {path} (check --refinery-model)")
    if classes is None:
        log(f"note: {path} stores no class names; assuming they are {dataset.name}'s, in order")
    return model


def run_seed(cfg: RunConfig, dataset: Dataset, run_dir: Path, seed: int, pipeline: Pipeline,
             external_refinery: torch.nn.Module | None = None) -> list[dict]:
    """Train the chain R1..Rn for one seed, skipping finished generations; returns one summary per generation.

    ``external_refinery`` (from ``--refinery-checkpoint``) makes generation 1's labels instead of the ground truth.
    """
    seed_dir = run_dir / f"seed-{seed}"
    train_idx, val_idx = seed_split(dataset, cfg, seed)
    val_images, val_labels = dataset.train.images[val_idx], dataset.train.labels[val_idx]
    test_images, test_labels = dataset.test.images, dataset.test.labels
    if cfg.test_size is not None:
        test_images, test_labels = test_images[: cfg.test_size], test_labels[: cfg.test_size]
    split_path = seed_dir / "split.npz"
    if not split_path.exists():
        buf = io.BytesIO()
        np.savez(buf, train_indices=train_idx.numpy(), val_indices=val_idx.numpy(),
                 val_labels=val_labels.numpy(), test_labels=test_labels.numpy())
        atomic_write_bytes(split_path, buf.getvalue())
    spec = ModelSpec(cfg.model, dataset.train.num_classes, dataset.image_shape[0], input_size(cfg, dataset))
    tv = training_views(dataset, train_idx, cfg, seed)
    device = pipeline.device
    images = tv.images.to(device)
    gt = tv.labels.to(device)
    targets: torch.Tensor = gt
    augment = make_augment(cfg, dataset) if cfg.augment != "static" else None
    summaries: list[dict] = []
    previous: torch.nn.Module | None = None  # the refinery of the next generation
    make_targets = lambda logits, truth: refined_labels(  # noqa: E731
        logits, temperature=cfg.temperature, form=cfg.label_form, ground_truth=truth, gt_weight=cfg.gt_weight)
    previous = external_refinery
    metrics_path = run_dir / "metrics.jsonl"
    for g in range(1, cfg.generations + 1):
        gen_dir = seed_dir / f"gen-{g}"
        summary_path = gen_dir / "summary.json"
        tag = f"seed {seed} R{g}"
        if summary_path.exists():
            previous = None  # loaded from disk when the next generation needs it
            summaries.append(json.loads(summary_path.read_text()))
            saved = load_labels(gen_dir / "labels.npz")
            if not np.array_equal(saved["indices"], tv.indices.numpy()):
                raise RunDirError(f"{gen_dir / 'labels.npz'} belongs to other training images; start a new --name")
            targets = torch.from_numpy(saved["labels"]).to(device)
            log(f"[{tag}] finished earlier: val {summaries[-1]['val_top1']:.2f}%  test {summaries[-1]['test_top1']:.2f}%")
            continue
        torch.manual_seed(derive_seed(seed, g, 0x1417))
        model = build_model(spec).to(device).to(memory_format=torch.channels_last)
        if g == 1 and external_refinery is not None and cfg.labels == "offline":
            targets = make_targets(predict(external_refinery, images, pipeline), tv.labels).to(device)
        train_targets: torch.Tensor | OnlineLabels = targets
        if cfg.labels == "online" and (g >= 2 or external_refinery is not None):
            if previous is None:
                previous, _ = load_model(seed_dir / f"gen-{g - 1}" / "model.safetensors", device, spec)
            train_targets = OnlineLabels(FrozenRefinery(previous), make_targets, gt,
                                         jitter_prob=cfg.adversarial_jitter, jitter_eps=cfg.jitter_eps)
        # A restarted generation drops the metrics of epochs after its resume point.
        state_path = gen_dir / "train-state.pt"
        resume_epoch = 0
        if state_path.exists():
            resume_epoch = int(torch.load(state_path, map_location="cpu", weights_only=True)["epoch"]) + 1
            log(f"[{tag}] resuming after epoch {resume_epoch}")
        kept = [r for r in read_jsonl(metrics_path)
                if not (r.get("seed") == seed and r.get("generation") == g
                        and (r.get("kind") == "generation" or r.get("epoch", 0) > resume_epoch))]
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

        def log_epoch(record: dict) -> None:
            append_jsonl(metrics_path, {"kind": "epoch", "seed": seed, "generation": g, **record})

        started = time.perf_counter()
        trainee = torch.compile(model) if cfg.compile else model  # shares model's parameters
        result = fit(trainee, images, train_targets, val_images, val_labels, cfg, pipeline,
                     seed_keys=(seed, g), augment=augment, state_path=state_path, log=log_epoch, desc=f"[{tag}]")
        if cfg.recalibrate_bn:
            recalibrate_batchnorm(model, images[(tv.views == 0).to(device)] if cfg.augment == "static" else images, pipeline)
        train_time = time.perf_counter() - started
        save_checkpoint(gen_dir / "model.safetensors", model, dataset.classes, spec.to_dict(),
                        {"seed": seed, "generation": g, "val_top1": result.best_val_top1})
        logits = predict(model, images, pipeline)
        new_targets = make_targets(logits, tv.labels)
        save_labels(gen_dir / "labels.npz", new_targets, tv.indices, tv.views, dataset.classes)
        val = evaluate(model, val_images, val_labels, pipeline)
        test_logits = predict(model, test_images, pipeline)
        test_top1 = top1_accuracy(test_logits, test_labels)
        chance = 100.0 / dataset.train.num_classes
        prev_val = summaries[-1]["val_top1"] if summaries else None
        collapsed = val["top1"] < chance + 5.0 or (prev_val is not None and val["top1"] < prev_val - 10.0)
        summary = {
            "seed": seed, "generation": g, "val_top1": val["top1"], "test_top1": test_top1,
            "best_epoch": result.best_epoch + 1, "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early, "train_time_s": train_time,
            "refined_label_entropy": float(-(torch.xlogy(new_targets, new_targets)).sum(1).mean()),
            "refined_label_agreement": top1_accuracy(new_targets, tv.labels),
            "collapsed": bool(collapsed),
        }
        append_jsonl(metrics_path, {"kind": "generation", **summary})
        write_json(summary_path, summary)
        state_path.unlink(missing_ok=True)
        summaries.append(summary)
        log(f"[{tag}] val {val['top1']:.2f}%  test {test_top1:.2f}%  ({result.epochs_run} epochs, "
            f"best {result.best_epoch + 1}, {train_time:.0f} s; refined labels agree with ground truth on "
            f"{summary['refined_label_agreement']:.1f}%, entropy {summary['refined_label_entropy']:.3f} nats)")
        if collapsed:
            log(f"[{tag}] WARNING: generation collapsed (val {val['top1']:.2f}%, chance {chance:.1f}%"
                + (f", previous {prev_val:.2f}%" if prev_val is not None else "") + "); it is flagged in the results")
        targets = new_targets.to(device)
        previous = model
    return summaries


def run(cfg: RunConfig, run_dir: Path) -> dict:
    """Run (or continue) a whole experiment: every seed's chain, then the results table.

    Args:
        cfg: a validated configuration.
        run_dir: the run directory; created after the data has loaded.

    Returns:
        The results dict also written to ``results.json``.

    Raises:
        RunDirError: ``run_dir`` holds a run with a different configuration.
        DataError: the dataset cannot be loaded.
        ValueError: bad configuration.
    """
    cfg.validate()
    resumed = prepare_run_dir(run_dir, cfg)
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads or len(os.sched_getaffinity(0)))
    amp_dtype = resolve_precision(cfg.precision, device)
    options = {"image_size": cfg.image_size, "svhn_extra": cfg.svhn_extra}
    dataset = load_dataset(cfg.dataset, cfg.data_dir, **options)
    # Everything that can be checked is checked before the run directory is made.
    for name, size, have in (("train", cfg.train_size, len(dataset.train)), ("test", cfg.test_size, len(dataset.test))):
        if size is not None and size > have:
            raise DataError(f"--{name}-size {size} exceeds the {have} {name} images of {dataset.name}; "
                            f"use at most {have} or leave it out")
    if len(dataset.train) < 20:
        raise DataError(f"{cfg.dataset} has only {len(dataset.train)} training images; at least 20 are needed")
    seed_split(dataset, cfg, 0)  # raises if the validation split cannot hold every class
    build_model(ModelSpec(cfg.model, dataset.train.num_classes, dataset.image_shape[0], input_size(cfg, dataset)))
    external = None
    if cfg.refinery_checkpoint:
        external = load_refinery(cfg.refinery_checkpoint, cfg.refinery_model, dataset, input_size(cfg, dataset),
                                 device)
    fresh = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot make run directory {run_dir}: {e.strerror}; choose another --runs-dir") from None
    try:
        return _run(cfg, run_dir, dataset, device, amp_dtype, resumed, external)
    except Exception:
        if fresh and not any(run_dir.glob("seed-*/gen-*/summary.json")) \
                and not any(run_dir.glob("seed-*/gen-*/train-state.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing finished: leave nothing behind
        raise


def _run(cfg: RunConfig, run_dir: Path, dataset: Dataset, device: torch.device, amp_dtype, resumed: bool,
         external: torch.nn.Module | None) -> dict:
    saved_path = run_dir / "config.yaml"
    stored = cfg.to_dict()
    if saved_path.exists():  # --generations / --seeds only ever extend what the directory records
        saved = yaml.safe_load(saved_path.read_text()) or {}
        for key in ("generations", "seeds"):
            stored[key] = max(int(saved.get(key, 0)), stored[key])
    atomic_write_text(saved_path, yaml.safe_dump(stored, sort_keys=False))
    write_json(run_dir / "run.json", {
        "code_version": code_version(), "torch": torch.__version__, "python": platform.python_version(),
        "device": str(device), "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "dataset": {"name": dataset.name, "source": dataset.source, "train": len(dataset.train),
                    "test": len(dataset.test), "classes": dataset.classes, "image_shape": list(dataset.image_shape)},
    })
    log(f"{'resuming' if resumed else 'starting'} {run_dir}: {cfg.dataset} ({len(dataset.train)} train, "
        f"{len(dataset.test)} test), {cfg.model}, {cfg.generations} generations x {cfg.seeds} seeds, "
        f"augment={cfg.augment}, labels={cfg.labels}, {device}, "
        f"{'fp32' if amp_dtype is None else str(amp_dtype).replace('torch.', '')}")
    pipeline = Pipeline.create(device, dataset.mean, dataset.std, amp_dtype,
                               CenterCropView() if cfg.augment == "crop" else None)
    for seed in range(cfg.seeds):
        run_seed(cfg, dataset, run_dir, seed, pipeline, external)
    if cfg.ensemble:
        from .evaluate import ensemble_results

        ensemble_results(run_dir, cfg, dataset, pipeline)
    results = summarize_run(run_dir)
    write_results(run_dir, [results])
    return results
