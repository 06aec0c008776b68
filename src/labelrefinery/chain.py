"""The chain: for every seed, generations R1..Rn one after another, then the results table.

:func:`run` checks everything that can be checked before the run directory is
made (settings, data, model, external refinery), then trains every seed's
chain, skipping finished generations and resuming an interrupted one from its
last epoch. See :mod:`labelrefinery.generation` for one generation and
:mod:`labelrefinery.rundir` for the files.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
from pathlib import Path

import torch

from .augment import eval_view, input_size, make_augment, static_copies
from .batch import Pipeline, scaled_side
from .checkpoint import load_refinery
from .config import PRESETS, DataConfig, RunConfig, parse_label_form
from .console import ChainClock, log
from . import dist
from .data import Dataset, check_dataset_name
from .device import cpu_features, precision_name, precision_reason, resolve_device, resolve_precision, set_threads
from .errors import ConfigError, DataError
from .deployed import DEPLOYED_BATCH_SIZE, DEPLOYED_PRECISION
from .evaluate import ensemble_results
from .experiment import Experiment
from .generation import (CONTROL_LABEL_SMOOTHING, run_controls, planned_epochs, reload_generation,
                         target_source, train_generation)
from .models import ModelSpec, build_model, check_model_name
from .noise import max_noise_rate
from .protocol import load_run_dataset, reported_test_set, seed_data, seed_split, with_given_labels
from .report.labelissues import issues_line, write_label_issues
from .report.tables import format_table, summarize_run
from .rundir import RunDir
from .rundir.split import split_arrays
from .targets import LabelRecipe, StoredTargets
from .tblog import TensorBoardLog, check_tensorboard
from .version import code_version


def prepare(cfg: RunConfig, run_dir: RunDir) -> Experiment:
    """Resolve the device, load and check the data, the model and any external refinery; makes no file.

    Raises:
        UserError: any setting, file or directory that cannot be used (see :mod:`labelrefinery.errors`).
    """
    check_dataset_name(cfg.data.dataset)
    check_model_name(cfg.model)
    if cfg.execution.tensorboard:
        check_tensorboard()
    if cfg.refinement.refinery_model is not None:
        check_model_name(cfg.refinement.refinery_model)
    run_dir.check_resumable(cfg)
    device = resolve_device(cfg.execution.device)
    world = dist.process_info().world_size
    if cfg.execution.sync_bn and world > 1 and device.type != "cuda":
        raise ConfigError(f"--sync-bn needs CUDA devices (torch.nn.SyncBatchNorm), but this run uses {device}; "
                          "leave it out on the CPU")
    if cfg.execution.sync_bn and world == 1:
        log("warning: --sync-bn changes nothing in a single process (start several with torchrun)")
    set_threads(cfg.execution.threads)
    amp_dtype = resolve_precision(cfg.execution.precision, device)
    d = cfg.data
    dataset = load_run_dataset(cfg, device)
    if dataset.streamed and d.augment == "static":
        raise ConfigError("--augment static stores augmented copies of every image in memory, but this dataset is "
                          "streamed from its files; use --augment online or crop, or --data-in-memory yes")
    dataset, noise = with_given_labels(dataset, cfg)
    _warn_about_verified(dataset, cfg)
    _check_against_data(cfg, dataset)
    side = input_size(d.augment, dataset.image_shape[1])
    spec = ModelSpec(cfg.model, dataset.train.num_classes, dataset.image_shape[0], side)
    ref = cfg.refinement
    _warn_unused(cfg)
    external = load_refinery(ref.refinery_checkpoint, ref.refinery_model, dataset, side, device,
                             ref.refinery_normalization) \
        if ref.refinery_checkpoint else None
    _check_smallest_input(build_model(spec), cfg, spec, cfg.model)
    if external is not None and ref.labels == "online":  # it labels the resized views the student trains on
        _check_smallest_input(external, cfg, spec, f"the refinery {ref.refinery_checkpoint}", device)
    pipeline = Pipeline.create(device, dataset.mean, dataset.std, amp_dtype, eval_view(d.augment))
    return Experiment(cfg, dataset, run_dir, pipeline, spec,
                      make_augment(d.augment, dataset.hflip_keeps_class, dataset.image_shape[1]),
                      LabelRecipe(ref.temperature, ref.label_form, ref.gt_weight), external, noise)


MIN_TRAIN_SIDE = 4  # px: the smallest side --train-scale-start may train at (two 2x2 poolings leave 1 px)


def _check_against_data(cfg: RunConfig, dataset: Dataset) -> None:
    """Settings that only the loaded data can judge: subset sizes, folds, batch size, top-k forms.

    Raises:
        ConfigError, DataError: a setting the data cannot satisfy (the message names the flag and the fix).
    """
    d = cfg.data
    for name, size, have in (("train", d.train_size, len(dataset.train)), ("test", d.test_size, len(dataset.test))):
        if size is not None and size > have:
            raise DataError(f"--{name}-size {size} exceeds the {have} {name} images of {dataset.name}; "
                            f"use at most {have} or leave it out")
    if d.test_size is not None:
        kept, have = dataset.test.labels[: d.test_size].unique().numel(), dataset.test.labels.unique().numel()
        if kept < have:
            log(f"warning: --test-size {d.test_size} keeps the first {d.test_size} test images, which hold only {kept} "
                f"of the test split's {have} classes (its images are in class order); leave it out or raise it")
    if len(dataset.train) < 20:
        raise DataError(f"{d.dataset} has only {len(dataset.train)} training images; at least 20 are needed")
    train_idx, _ = seed_split(dataset, cfg, 0)  # raises if the validation split cannot hold every class
    if cfg.refinement.cross_fit:
        counts = torch.bincount(dataset.train.labels[train_idx])
        smallest = int(counts[counts > 0].min())
        if cfg.refinement.cross_fit > smallest:
            raise ConfigError(f"--cross-fit {cfg.refinement.cross_fit} exceeds the {smallest} training images of "
                              f"the smallest class; use K <= {smallest}")
    views = len(train_idx) * (1 + (d.static_copies if d.augment == "static" else 0))
    if cfg.training.batch_size > views:
        raise ConfigError(f"--batch-size {cfg.training.batch_size} exceeds the {views} training images of a seed; "
                          f"use at most {views}")
    start = cfg.training.train_scale_start
    smallest_side = scaled_side(min(input_size(d.augment, side) for side in dataset.image_shape[1:]), start)
    if cfg.training.epochs // 2 and smallest_side < MIN_TRAIN_SIDE:
        raise ConfigError(f"--train-scale-start {start:g} trains the {dataset.name} images at {smallest_side} px; "
                          f"use a fraction that keeps at least {MIN_TRAIN_SIDE} px")
    storage = cfg.refinement.label_storage
    if storage.startswith("topk:") and int(storage[5:]) > dataset.train.num_classes:
        raise ConfigError(f"--label-storage {storage} keeps more classes than {dataset.name}'s "
                          f"{dataset.train.num_classes}; use J <= {dataset.train.num_classes} or float32")
    prior, bound = cfg.refinement.prior, max_noise_rate(dataset.train.num_classes)
    if prior.rate is not None and prior.rate >= bound:
        raise ConfigError(f"--noise-prior {prior.rate:g} is not below 1 - 1/K = {bound:.3g} for {dataset.name}'s "
                          f"{dataset.train.num_classes} classes; give a smaller share or auto")
    kind, k = parse_label_form(cfg.refinement.label_form)
    if kind == "topk" and k > dataset.train.num_classes:
        raise ConfigError(f"--label-form topk:{k} keeps more classes than {dataset.name}'s "
                          f"{dataset.train.num_classes}; use K <= {dataset.train.num_classes} or soft")


def _check_smallest_input(model: torch.nn.Module, cfg: RunConfig, spec: ModelSpec, name: str,
                          device: torch.device = torch.device("cpu")) -> None:
    """With progressive resizing, run ``model`` once on two blank images of the smallest training size.

    Raises:
        ConfigError: the model takes only full-size images (a flattening layer sized for them, a fixed-size
            transformer): the message names the size and, when the model works at full size, the fix,
            --train-scale-start 1.
    """
    t = cfg.training
    if t.epochs // 2 == 0 or t.train_scale_start == 1:
        return
    side = scaled_side(spec.image_size, t.train_scale_start)
    problem = _forward_problem(model, spec.in_channels, side, device)
    if problem is not None:
        fix = "add --train-scale-start 1 (full size every epoch)" \
            if _forward_problem(model, spec.in_channels, spec.image_size, device) is None else \
            f"it cannot take the full {spec.image_size} x {spec.image_size} px either: choose another --model"
        raise ConfigError(f"--train-scale-start {t.train_scale_start:g} trains at {side} x {side} px, which "
                          f"{name} cannot take ({problem}); {fix}")


def _forward_problem(model: torch.nn.Module, channels: int, side: int, device: torch.device) -> str | None:
    """The first line of the error ``model`` raises on two blank ``side`` x ``side`` images, or None."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, channels, side, side, device=device))
    except (RuntimeError, ValueError, AssertionError) as e:
        return (str(e).splitlines() or [type(e).__name__])[0]
    finally:
        model.train(was_training)
    return None


def _warn_unused(cfg: RunConfig) -> None:
    """Warn about settings that have no effect in this run (values that neither the defaults nor a preset set)."""
    ref, default = cfg.refinement, type(cfg.refinement)()
    if cfg.generations == 1 and ref.refinery_checkpoint is None:
        unused = [f"--{n.replace('_', '-')}" for n in ("labels", "temperature", "label_form", "gt_weight",
                                                       "noise_prior")
                  if getattr(ref, n) not in {getattr(default, n), *(p.get(n) for p in PRESETS.values())}]
        if unused:
            log(f"warning: {', '.join(unused)} change(s) nothing: with --generations 1 and no --refinery-checkpoint "
                "no refined labels are trained on")
    if ref.controls and cfg.training.label_smoothing == CONTROL_LABEL_SMOOTHING:
        log(f"warning: with --label-smoothing {CONTROL_LABEL_SMOOTHING} the label-smoothing control is R1 itself")
    if ref.controls and cfg.generations == 1:
        log("warning: with --generations 1 the equal-compute control is R1 itself")
    if cfg.data.data_dir is not None and cfg.data.dataset in ("digits", "synthetic"):
        log(f"warning: --data-dir changes nothing for {cfg.data.dataset}, which needs no files")


def _warn_about_verified(dataset: Dataset, cfg: RunConfig) -> None:
    """Warn about ``--trusted`` / ``--true-labels`` settings that do less than a user may think."""
    trusted, truth, k = dataset.trusted, dataset.true_labels, dataset.train.num_classes
    if trusted is not None:
        if cfg.data.val_fraction != DataConfig.val_fraction:
            log(f"warning: --val-fraction {cfg.data.val_fraction:g} changes nothing with --trusted: the verified "
                "images are the validation split")
        covered = int(trusted.verified.unique().numel())
        if covered < k:
            log(f"warning: the {len(trusted.indices)} verified labels (--trusted) cover {covered} of the {k} classes; "
                "validation never sees the others: verify some images of every class")
    if truth is not None and trusted is not None:
        both = int(torch.isin(truth.indices, trusted.indices).sum())
        if both:
            log(f"warning: {both} of the --true-labels images are --trusted images (validation); they are not scored")


def run_seed(exp: Experiment, seed: int) -> list[dict]:
    """Train the chain R1..Rn of one seed, skipping finished generations; returns one summary per generation."""
    data = seed_data(exp.dataset, exp.cfg, seed, exp.pipeline.device, exp.noise, static_copies)
    exp.run_dir.write_split(seed, data.train_idx, data.val_idx, data.val_labels, data.test_labels,
                            *_split_labels(exp))
    summaries: list[dict] = []
    refinery, stored = exp.external, None  # what made the next generation's labels (model, offline rows)
    for g in range(1, exp.cfg.generations + 1):
        if exp.run_dir.is_finished(seed, g):
            summary, stored = reload_generation(exp, data, g)
            refinery = None  # loaded from disk when the next generation needs it
        else:
            targets = target_source(exp, data, g, refinery, stored)
            refinery, summary, stored = train_generation(exp, data, g, targets, summaries[-1] if summaries else None)
        summaries.append(summary)
    for control in run_controls(exp.cfg):
        if not exp.run_dir.is_finished(seed, control):
            targets = StoredTargets(data.ground_truth, num_classes=exp.dataset.train.num_classes)
            train_generation(exp, data, 1, targets, None, control=control)
    return summaries


def _check_finished_work(exp: Experiment) -> None:
    """Read back (verify) the summary of every finished generation and control of every seed, and check that its
    ``split.npz`` is the split this run makes (the data, ``--trusted`` and ``--true-labels`` unchanged).

    Raises:
        UserError: an edited, damaged or foreign summary (see :meth:`RunDir.read_summary`), or another split.
    """
    rd, cfg = exp.run_dir, exp.cfg
    for seed in cfg.seed_values():
        finished = [*rd.finished_generations(seed), *rd.finished_controls(seed)]
        for g in finished:
            rd.read_summary(seed, g)
        if finished:
            train_idx, val_idx = seed_split(exp.dataset, cfg, seed)
            rd.check_split(seed, split_arrays(train_idx, val_idx, exp.dataset.train.labels[val_idx],
                                              reported_test_set(exp.dataset, cfg)[1], *_split_labels(exp)))


def _split_labels(exp: Experiment) -> tuple:
    """``(given labels, clean labels or None, (true-label indices, labels) or None)`` of the run's split files."""
    truth = exp.dataset.true_labels
    return (exp.dataset.train.labels, exp.noise.clean if exp.noise is not None else None,
            None if truth is None else (truth.indices, truth.verified))


def _write_run_facts(exp: Experiment, resumed: bool) -> None:
    cfg, ds, rd, device = exp.cfg, exp.dataset, exp.run_dir, exp.pipeline.device
    rd.write_config(cfg)
    precision = precision_name(exp.pipeline.amp_dtype)
    train = min(cfg.data.train_size or len(ds.train), len(ds.train))  # images the run uses (before validation)
    test = min(cfg.data.test_size or len(ds.test), len(ds.test))
    rd.write_run_info({
        "code_version": code_version(), "torch": torch.__version__, "python": platform.python_version(),
        "device": str(device), "precision": precision, "threads": torch.get_num_threads(),
        "processes": dist.process_info().world_size,
        "cpu": platform.processor() or platform.machine(), "cpu_features": cpu_features(),
        "precision_reason": precision_reason(cfg.execution.precision, device, exp.pipeline.amp_dtype),
        "scored_as": f"saved weights through load_classifier's path ({DEPLOYED_PRECISION}, batches of "
                     f"{DEPLOYED_BATCH_SIZE}): summary val/test top-1, evaluate and ensembles are what a user of "
                     "the saved model gets; per-epoch validation in metrics.jsonl runs in the training precision",
        "dataset": {"name": ds.name, "source": ds.source, "train": train, "test": test,
                    "train_available": len(ds.train), "test_available": len(ds.test),
                    "classes": ds.classes, "image_shape": list(ds.image_shape), "streamed": ds.streamed,
                    "workers_per_process": ds.train.images.workers if ds.streamed else 0,
                    "skipped_unreadable_files": ds.skipped_files},
    })
    world = dist.process_info().world_size
    sizes = ", ".join(f"{used} {'' if used == have else f'of {have} '}{name}"
                      for used, have, name in ((train, len(ds.train), "train"), (test, len(ds.test), "test")))
    log(f"{'resuming' if resumed else 'starting'} {rd.root}: {cfg.data.dataset} ({sizes}), "
        f"{cfg.model}, {_count(cfg.generations, 'generation')} x {_count(len(cfg.seed_values()), 'seed')}"
        f"{'' if isinstance(cfg.seeds, int) else ' (' + ','.join(map(str, cfg.seeds)) + ')'}, "
        f"augment={cfg.data.augment}, labels={cfg.refinement.labels}, {device}"
        f"{'' if world == 1 else f' x {world} processes (torchrun)'}, "
        f"{precision_reason(cfg.execution.precision, device, exp.pipeline.amp_dtype)}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def reported_ensembles(cfg: RunConfig) -> list[list[int]]:
    """The ensembles every run reports: all its generations (with two or more), then any ``--ensemble``."""
    every = list(range(1, cfg.generations + 1))
    out = [every] if cfg.generations > 1 else []
    if cfg.refinement.ensemble and cfg.refinement.ensemble != every:
        out.append(list(cfg.refinement.ensemble))
    return out


def run(cfg: RunConfig, run_dir: Path | str) -> dict:
    """Run (or continue) a whole experiment: every seed's chain, ensembles (:func:`reported_ensembles`), then the
    results table.

    Args:
        cfg: the configuration (checked on construction).
        run_dir: the run directory; created only after everything has been checked, and held (an OS lock)
            for the whole run. A fresh directory in which nothing finished is removed again when the run fails.

    Returns:
        The results dict also written to ``results.json``.

    Raises:
        UserError: a setting, file or run directory that cannot be used, or one in use by another process.
    """
    rd = RunDir(run_dir)
    exp = prepare(cfg, rd)
    fresh = not rd.root.exists()
    dist.start(exp.pipeline.device)  # under torchrun: join the other processes (a no-op for a plain run)
    tensorboard = TensorBoardLog(rd.tensorboard_dir)  # makes files only once it is given a record
    with rd.lock():  # one process per run directory (under torchrun: the main one, for all), to the end
        try:
            rd.remove_leftovers()
            resumed = rd.check_resumable(cfg)  # again: another process may have written it meanwhile
            if resumed and rd.read_config().refinement.controls and not cfg.refinement.controls:
                log("keeping --controls: this run trains them for every seed (they cannot be dropped)")
                cfg = dataclasses.replace(cfg, refinement=dataclasses.replace(cfg.refinement, controls=True))
                exp.cfg = cfg
            if resumed:
                _check_finished_work(exp)  # a refused summary or split stops the run before any file is rewritten
            _write_run_facts(exp, resumed)
            dist.barrier()  # the other processes read the directory only once the main one has tidied it
            exp.clock = ChainClock(planned_epochs(cfg, rd))
            if cfg.execution.tensorboard:  # from now on every metrics record is also a TensorBoard scalar
                rd.on_metrics = tensorboard.record
            for seed in cfg.seed_values():
                run_seed(exp, seed)
            for gens in reported_ensembles(cfg):
                ensemble_results(rd, exp.dataset, cfg.data.augment, exp.pipeline.device, gens, cfg.data.test_size)
            if not rd.writer:
                return {}  # the main process summarises and prints
            results = summarize_run(rd.root)
            rd.write_results(results, format_table([results]))
            if cfg.execution.label_issues:  # the list results.md points to; with several seeds their mean opinion
                log(issues_line(*write_label_issues(rd.root, all_seeds=len(cfg.seed_values()) > 1),
                                include_all=False, chosen=True))
            return results
        except BaseException:
            tensorboard.close()
            if rd.writer and fresh and not rd.has_finished_work():
                shutil.rmtree(rd.root, ignore_errors=True)  # nothing finished: leave nothing behind
                log(f"no epoch had finished: removed {rd.root}")
            raise
        finally:
            tensorboard.close()
            dist.stop()
