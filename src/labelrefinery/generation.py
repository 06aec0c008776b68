"""One generation of the chain: build, fit, recalibrate, save, make refined labels, evaluate, summarise.

Label Refinery (Bagherinezhad, Horton, Rastegari, Farhadi 2018, arXiv 1805.02641):
generation 1 fits the ground truth (or an external refinery's labels),
generation g fits the refined labels of generation g - 1, in two forms:

- ``labels=offline`` (the blog post "Label Refinery: A Softer Approach"): after generation g is
  trained, it predicts softmax probabilities on the stored training views once;
  those refined labels are generation g + 1's targets. They describe a fixed
  view of each image, so with random crops or strong online augmentation they
  describe a different picture than the student sees.
- ``labels=online`` (the paper's code): generation g, frozen, labels exactly the
  augmented batch generation g + 1 sees at every step.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from .config import RunConfig, TrainConfig
from .console import log
from .data import stratified_folds
from .deployed import Classifier, deployed_top1
from .dist import barrier
from .errors import RunDirError
from .engine import FitHooks, TrainData, TrainSetup, fit
from .inference import predict, recalibrate_batchnorm, recalibration_subset, top1_accuracy
from .models import build_model
from .experiment import Experiment
from .noise import classwise_summary, estimate_symmetric_noise, fit_temperature, label_statistics, temperature_scaled
from .noisemodel import MEMORISED_GAP_POINTS, noise_model, noise_records, noise_transition, verified_correction
from .protocol import SeedData
from .rundir import RunDir, as_stored, label_storage
from .seeding import CROSS_FIT, derive_seed, seed_model_init
from .targets import FrozenRefinery, RefineryTargets, StoredTargets, TargetSource

COLLAPSE_MARGIN_POINTS = 5.0  # validation top-1 within this many points of chance counts as collapsed
COLLAPSE_DROP_POINTS = 10.0  # ... and so does a drop of more than this many points from the previous generation


def planned_epochs(cfg: RunConfig, run_dir: RunDir) -> int:
    """Epochs of every seed's generations, cross-fit fold models and controls that have not finished yet
    (a partly trained generation counts whole)."""
    folds = 1 + (cfg.refinement.cross_fit or 0)
    total = 0
    for seed in cfg.seed_values():
        total += sum(generation_training(cfg, g).epochs * folds for g in range(1, cfg.generations + 1)
                     if not run_dir.is_finished(seed, g))
        total += sum(control_training(cfg, c).epochs for c in run_controls(cfg)
                     if not run_dir.is_finished(seed, c))
    return total


def target_source(exp: Experiment, data: SeedData, generation: int, refinery: nn.Module | None,
                  stored: torch.Tensor | None) -> TargetSource:
    """What generation ``generation`` of ``data.seed`` fits.

    Generation 1 fits the ground truth, or the external refinery's labels; generation g > 1 fits
    generation g - 1's labels: per batch (``labels=online``) or the rows it stored (``offline``).

    Args:
        refinery: the previous generation's model when it is in memory; else None (loaded when needed).
        stored: ``(M, K) float32`` offline refined labels of the previous generation (the refinery's own,
            before the ground-truth mix, which is applied here), or None.
    """
    ref, pipeline = exp.cfg.refinement, exp.pipeline
    if generation == 1 and exp.external is None:
        return StoredTargets(data.ground_truth, num_classes=exp.dataset.train.num_classes)
    if generation == 1:  # an external refinery: what it says about this data, before the chain relies on it
        outputs = predict(exp.external, data.images, pipeline)
        own = exp.recipe.refine(outputs)
        record = {"agreement": top1_accuracy(outputs, data.views.labels),
                  "val_top1": top1_accuracy(predict(exp.external, data.val_images, pipeline), data.val_labels),
                  "test_top1": top1_accuracy(predict(exp.external, data.test_images, pipeline), data.test_labels),
                  "checkpoint": ref.refinery_checkpoint}
        exp.run_dir.save_external_refinery(data.seed, own, data.views.indices, data.views.views,
                                           exp.dataset.classes, record)
        log(f"[seed {data.seed}] external refinery: val {record['val_top1']:.2f}%  test {record['test_top1']:.2f}%; "
            f"its argmax agrees with the given label on {record['agreement']:.1f}% of the {len(outputs)} training "
            "views" + ("" if record["agreement"] >= 50 else "; that is low: check --refinery-normalization and "
                       "--refinery-model"))
        if ref.labels == "offline" and stored is None:
            stored = own
    if ref.labels == "online":
        if refinery is None:
            refinery = exp.external if generation == 1 else \
                exp.run_dir.load_model(data.seed, generation - 1, pipeline.device, exp.spec)[0]
        return RefineryTargets(FrozenRefinery(refinery), exp.recipe, data.ground_truth,
                               jitter_prob=ref.adversarial_jitter, jitter_eps=ref.jitter_eps)
    if stored is None:  # the external refinery's offline labels, made once on the stored views
        stored = exp.recipe.refine(predict(exp.external, data.images, pipeline))
    model = noise_model(exp, data.seed, generation)
    if model == "verified":
        if refinery is None:
            refinery = exp.run_dir.load_model(data.seed, generation - 1, pipeline.device, exp.spec)[0]
        return StoredTargets(verified_correction(exp, data, generation, refinery, stored.to(pipeline.device)),
                             exp.recipe.temperature)
    # R1 fitted the given labels, so its labels predict their noise; later refineries fitted posteriors.
    denoise = generation == 2 and exp.external is None
    mixed = exp.recipe.mix(stored.to(pipeline.device), data.ground_truth,
                           noise_transition(exp, data, model, stored if denoise else None), denoise=denoise)
    return StoredTargets(mixed, exp.recipe.temperature)


def cross_fit_labels(exp: Experiment, data: SeedData, generation: int, targets: TargetSource) -> torch.Tensor:
    """Out-of-sample refined labels of generation ``generation``: ``(M, K) float32``, one row per training view.

    The seed's training images are cut into ``cross_fit`` folds, stratified by their given labels and drawn
    from the seed and generation (every view of an image in its image's fold); for each fold a fresh model
    is trained with the generation's recipe on ``targets`` of the other folds, recalibrated, and labels the
    held-out fold. No image is labelled by a model that trained on it (the out-of-sample ``pred_probs``
    that confident learning needs: Northcutt et al. 2021, "Confident Learning"). The fold models are not kept.
    """
    cfg, seed, pipeline = exp.cfg, data.seed, exp.pipeline
    k = cfg.refinement.cross_fit
    originals = data.views.views == 0
    image_fold = stratified_folds(data.views.labels[originals], k, derive_seed(seed, generation, CROSS_FIT))
    own = data.views.indices[originals]  # each view takes the fold of the image it shows
    order = own.argsort()
    fold = image_fold[order[torch.searchsorted(own[order], data.views.indices)]]
    refined = torch.empty(len(fold), exp.dataset.train.num_classes)
    for f in range(k):
        inside, held = (fold != f).nonzero().squeeze(1), (fold == f).nonzero().squeeze(1)
        log(f"[seed {seed} R{generation}] cross-fit fold {f + 1}/{k}: training on {len(inside)} images, "
            f"labelling {len(held)}")
        seed_model_init(seed, generation, CROSS_FIT, f)
        model = build_model(exp.spec).to(pipeline.device).to(memory_format=torch.channels_last)
        images = data.images[inside.to(pipeline.device)]
        fit(model, TrainData(images, targets.subset(inside), data.val_images, data.val_labels),
            TrainSetup(generation_training(cfg, generation), pipeline, (seed, generation, CROSS_FIT, f), exp.augment,
                       sync_bn=cfg.execution.sync_bn),
            FitHooks(progress=cfg.execution.progress, desc=f"[seed {seed} R{generation} fold {f + 1}/{k}]",
                     clock=exp.clock))
        if cfg.training.recalibrate_bn:
            recalibrate_batchnorm(model, recalibration_subset(images), pipeline)
        refined[held] = exp.recipe.refine(predict(model, data.images[held.to(pipeline.device)], pipeline))
    return refined


class _PhaseClock:
    """Wall seconds of consecutive phases: ``lap(name)`` closes the phase that began at the last lap."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = now - self._last
        self._last = now


CONTROLS = ("label-smoothing", "equal-compute", "no-mixup")  # --controls, in training and report order
CONTROL_LABEL_SMOOTHING = 0.1


def run_controls(cfg: RunConfig) -> tuple[str, ...]:
    """The controls ``--controls`` trains for ``cfg``: label-smoothing and equal-compute, and no-mixup (plain
    training: R1's recipe without ``--mixup``) when R1 trains with mixup; none without ``--controls``."""
    if not cfg.refinement.controls:
        return ()
    return tuple(c for c in CONTROLS if c != "no-mixup" or cfg.training.mixup > 0)


def generation_training(cfg: RunConfig, generation: int) -> TrainConfig:
    """The recipe generation ``generation`` (1-based) trains with: ``cfg.training``, its epochs
    ``student_epochs`` from generation 2 on when that is set (the schedule, resizing and patience follow the
    shorter length; ``lr_steps`` cannot be set with it)."""
    t = cfg.training
    return dataclasses.replace(t, epochs=t.student_epochs) if generation > 1 and t.student_epochs else t


def control_training(cfg: RunConfig, control: str) -> TrainConfig:
    """The recipe of a control: R1's with label smoothing 0.1; R1's for the epochs of the whole chain (``epochs
    + (generations - 1) x student epochs``; ``lr_steps`` stretched by generations), the compute of the chain in
    one model; or R1's without mixup."""
    t = cfg.training
    if control == "label-smoothing":
        return dataclasses.replace(t, label_smoothing=CONTROL_LABEL_SMOOTHING)
    if control == "equal-compute":
        g = cfg.generations
        epochs = sum(generation_training(cfg, i).epochs for i in range(1, g + 1))
        return dataclasses.replace(t, epochs=epochs, lr_steps=[e * g for e in t.lr_steps])
    if control == "no-mixup":
        return dataclasses.replace(t, mixup=0.0)
    raise ValueError(f"unknown control {control!r}; known: {', '.join(CONTROLS)}")


def is_collapsed(val_top1: float, num_classes: int, previous_val_top1: float | None) -> bool:
    """Validation top-1 (%) near chance, or far below the previous generation's."""
    chance = 100.0 / num_classes
    return val_top1 < chance + COLLAPSE_MARGIN_POINTS or (
        previous_val_top1 is not None and val_top1 < previous_val_top1 - COLLAPSE_DROP_POINTS)


def train_generation(exp: Experiment, data: SeedData, generation: int, targets: TargetSource,
                     previous: dict | None, control: str | None = None) -> tuple[nn.Module, dict, torch.Tensor]:
    """Train, save and evaluate generation ``generation`` of ``data.seed``; resumes from its epoch-level state.

    Args:
        targets: what it fits (see :func:`target_source`).
        previous: the summary of the generation before, or None.
        control: a name of :data:`CONTROLS`: train that control instead (generation 1's initialisation, batch
            order and targets, the control's recipe), saved in its own directory.

    Returns:
        ``(model in eval mode, summary dict, (M, K) float32 refined labels it made on the training views)``.
    """
    cfg, seed, rd, pipeline = exp.cfg, data.seed, exp.run_dir, exp.pipeline
    slot = generation if control is None else control  # where it is saved: gen-<g> or control-<name>
    tag = f"seed {seed} R{generation}" if control is None else f"seed {seed} {control} control"
    training = generation_training(cfg, generation) if control is None else control_training(cfg, control)
    seed_model_init(seed, generation)
    model = build_model(exp.spec).to(pipeline.device).to(memory_format=torch.channels_last)
    state_file = rd.train_state(seed, slot)
    last = state_file.last_epoch()
    resume_epoch = 0 if last is None else last + 1
    if resume_epoch:
        log(f"[{tag}] resuming after epoch {resume_epoch}")
    rd.drop_metrics(seed, slot, resume_epoch)  # a restarted generation forgets epochs it will redo
    clock = _PhaseClock()
    result = fit(model, TrainData(data.images, targets, data.val_images, data.val_labels),
                 TrainSetup(training, pipeline, (seed, generation), exp.augment, compile=cfg.execution.compile,
                            sync_bn=cfg.execution.sync_bn),
                 FitHooks(state_file, progress=cfg.execution.progress, desc=f"[{tag}]", clock=exp.clock,
                          log=lambda r: rd.append_metrics({"kind": "epoch", "seed": seed, "generation": slot, **r})))
    clock.lap("fit")
    if cfg.training.recalibrate_bn:  # on a subset of the images themselves (static copies left out)
        originals = data.images[(data.views.views == 0).to(pipeline.device)] if cfg.data.augment == "static" \
            else data.images
        recalibrate_batchnorm(model, recalibration_subset(originals), pipeline)
    clock.lap("recalibrate")
    files = {"model.safetensors": rd.save_model(seed, slot, model, exp.dataset.classes, exp.spec,
                                                {"seed": seed, "generation": slot,
                                                 "val_top1": result.best_val_top1,
                                                 "preprocessing": exp.preprocessing})}
    # What it said (no ground truth mixed in): in-sample from this model, or out-of-sample from fold models.
    refined = cross_fit_labels(exp, data, generation, targets) if cfg.refinement.cross_fit and control is None \
        else exp.recipe.refine(predict(model, data.images, pipeline))
    storage = label_storage(cfg.refinement.label_storage, *refined.shape)
    files["labels.npz"] = rd.save_labels(seed, slot, refined, data.views.indices, data.views.views,
                                         exp.dataset.classes, storage)
    refined = as_stored(refined, storage)  # the rows labels.npz reads back as: what the chain and statistics use
    clock.lap("relabel")
    # Scored as a user runs the saved model (load_classifier, predict, exports): fp32, through its preprocessing.
    deployed = Classifier(model, exp.dataset.classes, exp.preprocessing).to(pipeline.device)
    val_top1 = deployed_top1(deployed, data.val_images, data.val_labels)
    test_top1 = deployed_top1(deployed, data.test_images, data.test_labels)
    clock.lap("evaluate")
    summary = {
        "seed": seed, "generation": slot, "val_top1": val_top1, "test_top1": test_top1,
        "best_epoch": result.best_epoch + 1, "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "train_time_s": clock.phases["fit"] + clock.phases["recalibrate"],
        "phase_time_s": clock.phases,  # seconds of this session's fit, recalibration, relabelling, evaluation
        **_label_statistics(exp, data, refined, model if generation == 1 and control is None else None),
        "label_storage": storage,
        "collapsed": is_collapsed(val_top1, exp.dataset.train.num_classes,
                                  previous["val_top1"] if previous else None),
        **(noise_records(exp, seed, generation, len(data.val_labels), val_top1) if control is None else {}),
        "files": files,  # SHA-256 of what this generation wrote, checked whenever they are read back
    }
    rd.finish_generation(seed, slot, summary)
    barrier()  # under torchrun: the others see it finished only once the main process has written it
    _log_summary(tag, summary, exp.dataset.classes, previous, exp.cfg.refinement.prior.model == "classwise",
                 exp.cfg.looks_for_wrong_labels())
    return model, summary, refined


def _label_statistics(exp: Experiment, data: SeedData, refined: torch.Tensor, fitted: nn.Module | None) -> dict:
    """What a generation's ``(M, K)`` refined labels, as stored, say about the training images, each counted
    once (static augmented copies left out), all from :func:`~labelrefinery.noise.label_statistics`:
    mean entropy (nats), agreement with the given labels (%), label quality (with ``--true-labels``, the figures
    against true labels on the ``true_labels_scored`` images that have one); and when ``fitted`` is the model that
    made them after fitting the given labels (R1 without ``--refinery-checkpoint``), with full soft rows at T = 1, no
    label smoothing and no cross-fit: the temperature that calibrates it on the validation images and their labels,
    given ones or, with ``--trusted``, verified ones (``calibration_temperature``,
    :func:`~labelrefinery.noise.fit_temperature`), and from its rows at that temperature the share of given labels
    they suggest are wrong (:func:`estimate_symmetric_noise`) and the class-conditional estimate
    (:func:`~labelrefinery.noise.classwise_summary`)."""
    originals = (data.views.views == 0).cpu()
    own, given = refined[originals], data.views.labels[originals].cpu()
    clean = None if data.clean_labels is None else data.clean_labels[originals].cpu().numpy()
    quality = label_statistics(given.numpy(), own.numpy(), clean if clean is None or (clean >= 0).all() else None)
    stats = {
        "refined_label_entropy": quality.pop("mean_entropy"),
        "refined_label_agreement": 100.0 * quality.pop("agreement"),
        "label_quality": {k: v for k, v in quality.items() if k != "changed"},
    }
    if clean is not None and not (clean >= 0).all():  # --true-labels: the figures against them, on their images
        known = clean >= 0
        scored = label_statistics(given.numpy()[known], own.numpy()[known], clean[known])
        stats["label_quality"].update({k: scored[k] for k in ("flipped", "corrected", "harmed", "detection_precision",
                                                             "detection_recall", "detection_f1")})
        stats["true_labels_scored"] = int(known.sum())
        stats["true_labels_listed"] = len(exp.dataset.true_labels.indices)
    if fitted is not None and exp.external is None and exp.cfg.calibrated_refined_labels():
        # val logits on the pipeline's path (the one the rows came from), not the deployed fp32 path of val_top1
        temperature = fit_temperature(predict(fitted, data.val_images, exp.pipeline), data.val_labels)
        calibrated = temperature_scaled(own, temperature)
        stats["calibration_temperature"] = temperature
        stats["symmetric_noise_estimate"] = estimate_symmetric_noise(given, calibrated)
        stats["classwise_noise_estimate"] = classwise_summary(given, calibrated)
    return stats


def _log_summary(tag: str, s: dict, classes: list[str], previous: dict | None, classwise_prior: bool,
                 noisy: bool) -> None:
    """Log a finished generation: top-1, its refined labels, a collapse, and, for a run that asks about wrong
    labels (``noisy``: :func:`~labelrefinery.config.looks_for_wrong_labels`), the noise they suggest. The
    class-by-class noise estimate is logged when ``--noise-prior classwise`` uses it or a confusion reaches 10%
    (below that, on clean labels, it mostly reads classes the model finds alike: Shirt and Coat at 7%)."""
    num_classes = len(classes)
    log(f"[{tag}] val {s['val_top1']:.2f}%  test {s['test_top1']:.2f}%  ({s['epochs_run']} "
        f"epoch{'s' if s['epochs_run'] != 1 else ''}, "
        f"best {s['best_epoch']}, {s['train_time_s']:.0f} s; refined labels agree with the given labels on "
        f"{s['refined_label_agreement']:.1f}%, entropy {s['refined_label_entropy']:.3f} nats)")
    evidence = s.get("noise_evidence") if noisy else None
    if evidence and evidence["source"] == "trusted":
        pairs = [f"{classes[c]} given as {classes[y]} ({100 * v:.0f}%)" for c, y, v in evidence["largest"][:3] if v]
        log(f"[{tag}] the {evidence['images']} verified labels (--trusted) find {100 * evidence['rate']:.1f}% of their "
            f"given labels wrong (95% interval {100 * evidence['low']:.1f}-{100 * evidence['high']:.1f}%)"
            + (f"; most often true {', '.join(pairs)}" if pairs else ""))
    elif evidence:
        gap = s["refined_label_agreement"] - s["val_top1"]
        log(f"[{tag}] R1 disputes {100 * evidence['rate']:.1f}% of the held-out given labels (95% interval "
            f"{100 * evidence['low']:.1f}-{100 * evidence['high']:.1f}%; its own errors included); validation is as "
            "noisy as training, so it cannot tell a better model from one that learned the wrong labels: give "
            "--trusted FILE (a few hundred verified labels) to choose by labels known to be right")
        if gap > MEMORISED_GAP_POINTS:
            log(f"[{tag}] warning: R1 agrees with {s['refined_label_agreement']:.1f}% of its training labels but only "
                f"{s['val_top1']:.1f}% of held-out ones: it fitted its labels, wrong ones included, so no estimate "
                "from its training predictions can be trusted (they read too low); use --trusted, fewer --epochs, "
                "or --cross-fit 4 for out-of-sample refined labels")
    if noisy and s.get("symmetric_noise_estimate") is not None:
        log(f"[{tag}] its refined labels, calibrated on validation (temperature {s['calibration_temperature']:.2f}), "
            f"suggest about {100 * s['symmetric_noise_estimate']:.0f}% of the given labels are wrong (symmetric-noise "
            "estimate; --noise-prior auto uses it)")
    classwise = s.get("classwise_noise_estimate")
    if noisy and classwise and classwise["largest"] and (classwise_prior or classwise["largest"][0][2] >= 0.1):
        pairs = [f"{classes[c]} given as {classes[y]} ({100 * v:.0f}%)" for c, y, v in classwise["largest"][:3]]
        log(f"[{tag}] class by class they suggest {100 * classwise['rate']:.0f}% are wrong; most often true class "
            f"{', '.join(pairs)}" + ("" if evidence and evidence["source"] == "trusted" else
                                     " (--noise-prior classwise uses these)" if classwise_prior else
                                     " (what --noise-prior classwise would use)"))
    q = s.get("label_quality") or {}
    if q.get("corrected") is not None:
        f1 = "n/a" if q["detection_f1"] is None else f"{q['detection_f1']:.3f}"
        n, listed = s.get("true_labels_scored"), s.get("true_labels_listed")
        against = "injected noise" if not n else f"against the {n} --true-labels images that train" + (
            f" (of {listed} listed; the others are validation images)" if listed and listed > n else "")
        log(f"[{tag}] {against}: refined labels correct {100 * q['corrected']:.1f}% of the flipped labels, "
            f"dispute {100 * (q['harmed'] or 0):.1f}% of the clean ones; as a detector of flipped labels F1 {f1}")
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
    if not saved["refinery_only"] and exp.recipe.gt_weight > 0:
        raise RunDirError(f"{rd.labels_path(seed, generation)} was written by an older version that stored the "
                          "--gt-weight mix; continue it with that version or start a new --name")
    log(f"[seed {seed} R{generation}] finished earlier: val {summary['val_top1']:.2f}%  "
        f"test {summary['test_top1']:.2f}%")
    return summary, torch.from_numpy(saved["labels"])
