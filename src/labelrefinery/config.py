"""Typed run configuration: four sections composed into :class:`RunConfig`, presets, resume rules.

A run is defined by the model, the chain's length (generations x seeds) and
four sections, each a dataclass checked on construction:

- :class:`DataConfig`: the dataset and its protocol (validation share, subsets, augmentation);
- :class:`TrainConfig`: how one generation is fitted (epochs, batch size, optimizer, schedule);
- :class:`RefineConfig`: how refined labels are made (offline/online, temperature, form, ground-truth weight);
- :class:`ExecConfig`: how it executes (device, precision, threads), never what a result means.

Every leaf field has a unique name, which is also its command-line flag
(``batch_size`` -> ``--batch-size``) and its key in the flat form
(:meth:`RunConfig.flat`). The resolved configuration is saved as
``config.yaml`` with one mapping per section and lists as YAML lists;
:meth:`RunConfig.from_dict` also reads the flat layout with comma strings that
older run directories hold. This module imports nothing from the package but
its errors.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError

AUGMENTS = ("none", "static", "online", "crop")
LABEL_MODES = ("offline", "online")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("plateau", "onecycle", "cosine", "steps")
IN_MEMORY_CHOICES = ("auto", "yes", "no")
LABEL_STORAGES = ("auto", "float32", "float16")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def flag_name(name: str) -> str:
    """The command-line flag of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _need(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{flag_name(name)} must be {rule}, got {value!r}")


# Upper bounds of numeric settings: far beyond any sensible run, low enough to catch a typo.
MAX_CHAIN = 1000  # generations, seeds
MAX_EPOCHS = 100_000
MAX_BATCH = 1_000_000  # images per step (also at most the training images, checked with the data)
MAX_IMAGE_PX = 4096
MAX_STATIC_COPIES = 100
MAX_LR = 10.0
MAX_TEMPERATURE = 100.0
MAX_THREADS = 1024
MAX_WORKERS = 256


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_seeds(text: str) -> int | list[int]:
    """``--seeds``: ``N`` (seeds 0..N-1) or ``a,b,c`` (those seeds; ``a,`` is the one seed a).

    Raises:
        ConfigError: anything else.
    """
    parts = text.split(",")
    if len(parts) == 2 and parts[1] == "":
        parts = parts[:1]
    try:
        values = [int(x) for x in parts]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} must be a count N (seeds 0..N-1) or a list like 3,7,11") from None
    return values[0] if len(values) == 1 and "," not in text else values


def merged_seeds(saved: int | list[int], new: int | list[int]) -> int | list[int]:
    """What a continued run records: every seed either setting names (a count when that is 0..N-1)."""
    def values(s):
        return list(s) if isinstance(s, list) else list(range(s))

    union = values(saved) + [x for x in values(new) if x not in values(saved)]
    return len(union) if union == list(range(len(union))) else union


def parse_normalization(text: str) -> str | tuple[tuple[float, ...], tuple[float, ...]]:
    """``auto`` | ``imagenet`` | ``dataset`` as given, or ``M,M,M/S,S,S`` as ``(means, stds)`` (1 or 3 floats each).

    Raises:
        ConfigError: anything else, or a std that is not positive.
    """
    if text in ("auto", "imagenet", "dataset"):
        return text
    fix = "auto, imagenet, dataset or M,M,M/S,S,S (means and stds in [0, 1] pixel units, 1 or 3 of each)"
    try:
        mean_text, std_text = text.split("/")
        mean = tuple(float(x) for x in mean_text.split(","))
        std = tuple(float(x) for x in std_text.split(","))
    except ValueError:
        raise ConfigError(f"--refinery-normalization {text!r} is not {fix}") from None
    if len(mean) != len(std) or len(mean) not in (1, 3) or not all(math.isfinite(v) for v in mean + std) \
            or min(std) <= 0 or not all(0 <= m <= 1 for m in mean):
        raise ConfigError(f"--refinery-normalization {text!r} is not {fix}, with every mean in [0, 1] and every "
                          "std > 0")
    return mean, std


def _only_with(given: bool, name: str, applies: bool, needs: str) -> None:
    if given and not applies:
        raise ConfigError(f"{flag_name(name)} applies only with {needs}; leave it out or add {needs}")


def _check_finite_floats(obj: Any) -> None:
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{flag_name(f.name)} must be a finite number, got {v}")


def parse_int_list(text: str | list | tuple, name: str) -> list[int]:
    """``"140,170"`` or ``[140, 170]`` -> ``[140, 170]``; ``""`` -> ``[]``.

    Raises:
        ConfigError: an item that is not an integer.
    """
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in str(text).replace(" ", "").split(",") if t]
    try:
        return [int(t) for t in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{flag_name(name)} must be comma-separated integers like 2,3, got {text!r}") from None


def parse_label_form(form: str) -> tuple[str, int]:
    """Parse ``soft``, ``hard`` or ``topk:K`` into (kind, k); k = 0 unless topk.

    Raises:
        ConfigError: any other string, or K < 1.
    """
    if form in ("soft", "hard"):
        return form, 0
    if isinstance(form, str) and form.startswith("topk:"):
        try:
            k = int(form[5:])
        except ValueError:
            k = 0
        if k >= 1:
            return "topk", k
    raise ConfigError(f"--label-form must be soft, hard or topk:K with K >= 1, got {form!r}")


NOISE_KINDS = ("symmetric", "pairflip")


def parse_label_noise(spec: str) -> tuple[str, float]:
    """Parse ``symmetric:P`` or ``pairflip:P`` into (kind, P) with P in [0, 1) (the bound 1 - 1/K needs K:
    see :func:`labelrefinery.noise.inject_label_noise`).

    Raises:
        ConfigError: any other string.
    """
    kind, _, rate = str(spec).partition(":")
    try:
        p = float(rate)
    except ValueError:
        p = -1.0
    if kind not in NOISE_KINDS or not 0.0 <= p < 1.0:
        raise ConfigError(f"--label-noise must be symmetric:P or pairflip:P with 0 <= P < 1 - 1/K, got {spec!r}")
    return kind, p


ESTIMATED_NOISE_PRIORS = ("auto", "classwise")


def parse_noise_prior(text: str) -> float | None:
    """Parse ``--noise-prior``: a share P in [0, 1) of given labels believed wrong, or ``auto`` / ``classwise``
    (None: estimated from generation 1's refined labels, as one symmetric rate or class by class). The bound
    1 - 1/K needs K and is checked with the data.

    Raises:
        ConfigError: anything else.
    """
    if str(text) in ESTIMATED_NOISE_PRIORS:
        return None
    try:
        p = float(text)
    except ValueError:
        p = -1.0
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"--noise-prior must be auto, classwise or a share P with 0 <= P < 1 - 1/K (e.g. 0.2), "
                          f"got {text!r}")
    return p


def check_device_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is auto, cpu, cuda, cuda:N or mps (availability is checked
    later)."""
    ok = name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())
    if not ok:
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


@dataclass
class DataConfig:
    """The dataset and its protocol."""

    dataset: str = _f("fashion-mnist", "dataset name: fashion-mnist, mnist, digits, synthetic, cifar10, cifar100, "
                      "svhn, folder:PATH")
    data_dir: str | None = _f(None, "directory holding (or receiving) the dataset files; converted datasets are "
                              "cached in its labelrefinery-cache/ (none given: in ~/.cache/labelrefinery)")
    val_fraction: float = _f(0.15, "share of the training set held out for validation, stratified by class")
    train_size: int | None = _f(None, "use only this many training images (stratified, before the validation split)")
    test_size: int | None = _f(None, "evaluate on only this many test images (the first ones)")
    image_size: int | None = _f(None, "folder: datasets: resize (shorter side) and centre-crop every image to this "
                                "many pixels per side (none given: 256)")
    svhn_extra: bool = _f(False, "svhn: add the 531,131-image extra split to training")
    augment: str = _f("none", "training augmentation: none | static (2 stored copies, the write-up) | "
                      "online (fresh every epoch) | crop (random resized crop + flip)", choices=AUGMENTS)
    static_copies: int = _f(2, "augment=static: augmented copies of every training image stored next to it")
    skip_bad_images: bool = _f(False, "folder: datasets: leave out image files that cannot be decoded (found by "
                               "one decoding pass, remembered in the cache directory; their number is logged and "
                               "recorded in run.json); without it such a file stops the run, named by path")
    label_noise: str | None = _f(None, "inject label noise into the training split before validation is drawn: "
                                 "symmetric:P (each label, with probability P, becomes a uniformly drawn other "
                                 "class) | pairflip:P (class k becomes k+1 mod K); the same for every seed; "
                                 "test labels are never touched")

    def __post_init__(self) -> None:
        _check_finite_floats(self)
        _need(isinstance(self.dataset, str) and bool(self.dataset), "dataset", self.dataset, "a dataset name")
        _need(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "in (0, 1)")
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            _need(v is None or v >= 20, name, v, ">= 20 images")
        _need(self.image_size is None or 4 <= self.image_size <= MAX_IMAGE_PX, "image_size", self.image_size,
              f"in [4, {MAX_IMAGE_PX}] pixels")
        _need(self.augment in AUGMENTS, "augment", self.augment, f"one of {', '.join(AUGMENTS)}")
        _need(1 <= self.static_copies <= MAX_STATIC_COPIES, "static_copies", self.static_copies,
              f"in [1, {MAX_STATIC_COPIES}]")
        _only_with(self.svhn_extra, "svhn_extra", self.dataset == "svhn", "--dataset svhn")
        _only_with(self.image_size is not None, "image_size", self.dataset.startswith("folder:"),
                   "--dataset folder:PATH")
        _only_with(self.static_copies != 2, "static_copies", self.augment == "static", "--augment static")
        _only_with(self.skip_bad_images, "skip_bad_images", self.dataset.startswith("folder:"),
                   "--dataset folder:PATH")
        if self.label_noise is not None:  # one spelling per setting: symmetric:0.30 is symmetric:0.3
            kind, p = parse_label_noise(self.label_noise)
            self.label_noise = f"{kind}:{p:g}"


@dataclass
class TrainConfig:
    """How one generation is fitted: what :func:`labelrefinery.engine.fit` reads."""

    epochs: int = _f(100, "maximum epochs per generation")
    batch_size: int = _f(250, "images per optimizer step, over all processes: under torchrun each of W processes "
                         "takes batch_size / W of every batch, so results mean the same at any W")
    optimizer: str = _f("adam", "adam | sgd (momentum 0.9, nesterov)", choices=OPTIMIZERS)
    lr: float = _f(1e-3, "learning rate (the peak for onecycle)")
    weight_decay: float = _f(0.0, "L2 weight decay coefficient")
    lr_schedule: str = _f("plateau", "plateau (on validation accuracy) | onecycle | cosine | steps", choices=LR_SCHEDULES)
    lr_steps: list[int] = _f([], "lr_schedule=steps: comma-separated epochs (0-based) at which lr is multiplied "
                             "by plateau_factor, e.g. 140,170")
    plateau_factor: float = _f(0.1, "lr multiplier on a plateau (and at each step for lr_schedule=steps)")
    plateau_patience_epochs: int = _f(10, "epochs without validation improvement before lr is reduced")
    min_lr: float = _f(1e-5, "lower bound of the learning rate under lr_schedule=plateau")
    early_stop_patience_epochs: int = _f(20, "stop after this many epochs without validation improvement (0 = never)")
    early_stop_min_delta: float = _f(0.0, "validation accuracy gain, in percentage points, that counts as improvement "
                                     "(the write-up's Keras setting was 10)")
    restore_best: bool = _f(True, "end each generation with its best-validation weights")
    label_smoothing: float = _f(0.0, "epsilon: every generation's targets become (1 - epsilon) * targets + "
                                "epsilon / K (Szegedy et al. 2016, section 7)")
    train_scale_start: float = _f(1.0, "progressive resizing: the first half of the epochs (epochs // 2) train on "
                                  "images resized to a side that grows linearly from this fraction of the full "
                                  "side; the rest at full size (0.72 with 4 epochs: 20, 24, 28, 28 px on 28-px "
                                  "images). Validation, refined labels, BatchNorm recalibration and test always "
                                  "see the full size. 1 = full size every epoch")
    recalibrate_bn: bool = _f(True, "recompute BatchNorm statistics after every epoch and generation, over every "
                              "(N // 4096)-th training image (keeps short runs calibrated, so refined labels do "
                              "not collapse)")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        _check_finite_floats(self)
        self.lr_steps = parse_int_list(self.lr_steps, "lr_steps")
        _need(1 <= self.epochs <= MAX_EPOCHS, "epochs", self.epochs, f"in [1, {MAX_EPOCHS}]")
        _need(2 <= self.batch_size <= MAX_BATCH, "batch_size", self.batch_size,
              f"in [2, {MAX_BATCH}] (BatchNorm cannot train on one image)")
        _need(self.lr <= MAX_LR, "lr", self.lr, f"a finite number in (0, {MAX_LR}]")
        _need(self.weight_decay <= 1, "weight_decay", self.weight_decay, "a finite number in [0, 1]")
        _need(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        _need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule, f"one of {', '.join(LR_SCHEDULES)}")
        _need(0 <= self.early_stop_min_delta <= 100, "early_stop_min_delta", self.early_stop_min_delta,
              "in [0, 100] percentage points")
        _need(0.0 <= self.label_smoothing < 1.0, "label_smoothing", self.label_smoothing, "in [0, 1)")
        _need(0.0 < self.plateau_factor < 1.0, "plateau_factor", self.plateau_factor, "in (0, 1)")
        for name in ("plateau_patience_epochs", "early_stop_patience_epochs"):
            _need(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        _need(self.min_lr >= 0 and (self.lr_schedule != "plateau" or self.min_lr < self.lr), "min_lr", self.min_lr,
              f"in [0, --lr {self.lr})")
        _only_with(self.min_lr != 1e-5, "min_lr", self.lr_schedule == "plateau", "--lr-schedule plateau")
        _only_with(bool(self.lr_steps), "lr_steps", self.lr_schedule == "steps", "--lr-schedule steps")
        _need(all(0 <= e < self.epochs for e in self.lr_steps), "lr_steps", ",".join(map(str, self.lr_steps)),
              f"epochs in [0, --epochs {self.epochs})")
        _need(0 < self.train_scale_start <= 1, "train_scale_start", self.train_scale_start,
              "a fraction of the image side in (0, 1] (1 = no progressive resizing)")


@dataclass
class RefineConfig:
    """How refined labels are made and used."""

    labels: str = _f("offline", "offline: refined labels made once per generation on fixed views; "
                     "online: the refinery labels every augmented batch the student sees", choices=LABEL_MODES)
    temperature: float = _f(1.0, "softmax temperature T of refined labels; the soft loss is scaled by T^2")
    label_form: str = _f("soft", "refined label form: soft | hard | topk:K")
    gt_weight: float = _f(0.0, "alpha: targets = alpha * one-hot ground truth + (1 - alpha) * refined labels")
    noise_prior: str = _f("0", "P | auto | classwise: the share of given labels believed wrong (symmetric "
                          "noise: a wrong label is any other class alike); the next generation then fits "
                          "P(true class | refined labels, given label) by Bayes' rule, with R1's labels first mapped "
                          "back through the noise (needs calibrated soft labels: --labels offline, --label-form "
                          "soft, --temperature 1, no top-k --label-storage, no --label-smoothing); auto: P estimated "
                          "from R1's refined labels (R1's summary.json: symmetric_noise_estimate); classwise: a "
                          "wrong label's class depends on the true one (e.g. a 3 often given as 5), the K x K noise "
                          "matrix estimated from R1's refined labels (summary.json: classwise_noise_estimate); "
                          "0 = off")
    refinery_checkpoint: str | None = _f(None, "a trained model that makes generation 1's labels instead of the "
                                         "ground truth (a model.safetensors of this tool, or a torchvision/timm "
                                         "state dict with --refinery-model)")
    refinery_model: str | None = _f(None, "model name of --refinery-checkpoint when the file does not store it")
    refinery_normalization: str = _f(
        "auto", "how --refinery-checkpoint's input is normalised: auto (what its checkpoint stores; a plain state "
        "dict: imagenet) | imagenet (mean 0.485,0.456,0.406, std 0.229,0.224,0.225; their means for 1 channel) | "
        "dataset (this dataset's own statistics) | M,M,M/S,S,S (in [0, 1] pixel units)")
    adversarial_jitter: float = _f(0.0, "P: probability per training image of replacing it by its adversarial "
                                   "jitter (needs --labels online)")
    jitter_eps: float = _f(1 / 255, "E: adversarial jitter step, in [0, 1] pixel units")
    ensemble: list[int] = _f([], "comma-separated generations whose averaged softmax is also evaluated (the "
                             "ensemble of all generations always is), e.g. 2,3")
    controls: bool = _f(False, "also train, per seed, two controls from R1's initialisation: label-smoothing "
                        "(R1's recipe with --label-smoothing 0.1) and equal-compute (R1's recipe for generations x "
                        "epochs); the table reports them beside the generations")
    label_storage: str = _f("auto", "how labels.npz stores each generation's refined labels: float32 | float16 | "
                            "topk:J (the J largest probabilities, float16, with their class indices; rows "
                            "renormalised when read) | auto (float32 up to 2^26 images x classes, else float16)")
    cross_fit: int = _f(0, "K >= 2: out-of-sample refined labels: the training split is cut into K stratified "
                        "folds and each fold's labels come from a model trained on the other K-1 folds (K more "
                        "models per generation, about K times its in-sample cost in all); 0 = in-sample labels from "
                        "the generation's own model")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"--temperature must be a finite number > 0, got {self.temperature}")
        _check_finite_floats(self)
        self.ensemble = parse_int_list(self.ensemble, "ensemble")
        _need(self.labels in LABEL_MODES, "labels", self.labels, f"one of {', '.join(LABEL_MODES)}")
        parse_label_form(self.label_form)
        _need(self.temperature <= MAX_TEMPERATURE, "temperature", self.temperature,
              f"a finite number in (0, {MAX_TEMPERATURE}]")
        _need(0.0 <= self.gt_weight <= 1.0, "gt_weight", self.gt_weight, "in [0, 1]")
        _need(0.0 <= self.adversarial_jitter <= 1.0, "adversarial_jitter", self.adversarial_jitter,
              "a probability in [0, 1]")
        if self.adversarial_jitter > 0 and self.labels != "online":
            raise ConfigError("--adversarial-jitter needs --labels online (the refinery labels each jittered crop)")
        _need(0 < self.jitter_eps <= 1, "jitter_eps", self.jitter_eps, "in (0, 1] (pixel units)")
        _only_with(self.jitter_eps != 1 / 255, "jitter_eps", self.adversarial_jitter > 0, "--adversarial-jitter P > 0")
        parse_normalization(self.refinery_normalization)
        _only_with(self.refinery_normalization != "auto", "refinery_normalization",
                   self.refinery_checkpoint is not None, "--refinery-checkpoint")
        _only_with(self.refinery_model is not None, "refinery_model", self.refinery_checkpoint is not None,
                   "--refinery-checkpoint")
        _need(self.cross_fit == 0 or 2 <= self.cross_fit <= MAX_CHAIN, "cross_fit", self.cross_fit,
              f"0 or in [2, {MAX_CHAIN}] folds")
        if self.cross_fit and self.labels != "offline":
            raise ConfigError("--cross-fit needs --labels offline: with online labels the next generation is "
                              "labelled per batch by the generation's own model, not by its fold models")
        kind, j = (self.label_storage.split(":", 1) + [""])[:2] if isinstance(self.label_storage, str) else ("", "")
        _need(self.label_storage in LABEL_STORAGES or (kind == "topk" and j.isdigit() and int(j) >= 1),
              "label_storage", self.label_storage, f"one of {', '.join(LABEL_STORAGES)} or topk:J with J >= 1")
        _need(len(set(self.ensemble)) == len(self.ensemble), "ensemble", ",".join(map(str, self.ensemble)),
              "distinct generations")
        self._check_noise_prior()

    def _check_noise_prior(self) -> None:
        prior = parse_noise_prior(self.noise_prior)
        self.noise_prior = str(self.noise_prior) if prior is None else format(prior + 0.0, ".15g")  # -0 is 0
        if prior == 0.0:
            return
        flag = f"--noise-prior {self.noise_prior}"
        for name, value, needed in (("labels", self.labels, "offline"), ("label_form", self.label_form, "soft"),
                                    ("temperature", format(self.temperature, "g"), "1")):
            if value != needed:  # the posterior and the noise estimate read calibrated soft rows of every image
                raise ConfigError(f"{flag} needs {flag_name(name)} {needed} (calibrated soft refined labels, made "
                                  f"once per image), got {flag_name(name)} {value}")
        if self.label_storage.startswith("topk:"):
            raise ConfigError(f"{flag} needs every class's refined probability, which --label-storage "
                              f"{self.label_storage} drops; use --label-storage auto, float32 or float16")
        if self.gt_weight > 0:
            raise ConfigError(f"{flag} and --gt-weight {self.gt_weight:g} both anchor the targets to the given "
                              "labels; use one of them")
        if prior is None and self.refinery_checkpoint is not None:
            raise ConfigError(f"{flag} estimates the noise from an R1 trained on the given labels; with "
                              "--refinery-checkpoint there is none: give the share you believe, e.g. "
                              "--noise-prior 0.2")
        if prior is None and self.cross_fit:
            raise ConfigError(f"{flag} estimates the noise from R1's labels, but with --cross-fit {self.cross_fit} "
                              "they come from weaker fold models and read too noisy; give the share you believe, e.g. "
                              "--noise-prior 0.2")


@dataclass
class ExecConfig:
    """How a run executes: never changes what a finished result means."""

    precision: str = _f("auto", "auto (bf16 on CPUs with AVX512-BF16/AMX and on CUDA with bf16, else fp32) | fp32 | "
                        "bf16 | fp16", choices=PRECISIONS)
    device: str = _f("auto", "auto (cuda if present, else cpu) | cpu | cuda | cuda:N | mps (Apple GPUs)")
    threads: int = _f(0, "CPU threads for torch (0 = all cores)")
    compile: bool = _f(False, "torch.compile the model (pays off only for long runs)")
    progress: bool = _f(True, "show a progress bar per epoch")
    data_in_memory: str = _f("auto", "folder: datasets: yes (decode every image once, cache it as uint8 and hold "
                             "it in memory) | no (stream: decode each batch from the files in --workers processes) "
                             "| auto (in memory when the decoded images take at most half of the available RAM "
                             "and of a CUDA device's free memory; the choice is printed at the start)",
                             choices=IN_MEMORY_CHOICES)
    workers: int = _f(0, "processes decoding image files (streamed folder: datasets, and the conversion of one "
                      "held in memory); 0 = one per CPU core, at most 8")
    cache_dir: str | None = _f(None, "where folder: datasets are cached as uint8 (none given: --data-dir's "
                               "labelrefinery-cache/, else ~/.cache/labelrefinery); never inside the image tree")
    sync_bn: bool = _f(False, "under torchrun on CUDA: BatchNorm statistics over the global batch while training "
                       "(torch.nn.SyncBatchNorm; for small per-GPU batches)")
    tensorboard: bool = _f(False, "also write per-epoch and per-generation scalars to RUN_DIR/tb/ (watch with "
                           "tensorboard --logdir RUN_DIR/tb; needs pip install tensorboard)")

    def __post_init__(self) -> None:
        _need(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        check_device_name(self.device)
        if not 0 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"--threads must be in [0, {MAX_THREADS}] (0 = all cores), got {self.threads}")
        _need(self.data_in_memory in IN_MEMORY_CHOICES, "data_in_memory", self.data_in_memory,
              f"one of {', '.join(IN_MEMORY_CHOICES)}")
        _need(0 <= self.workers <= MAX_WORKERS, "workers", self.workers, f"in [0, {MAX_WORKERS}] (0 = one per core)")


SECTIONS = {"data": DataConfig, "training": TrainConfig, "refinement": RefineConfig, "execution": ExecConfig}


@dataclass
class RunConfig:
    """Everything that defines a refinery run: model, chain length and the four sections."""

    model: str = _f("convnet", "model name from the registry (see `refinery models`), timm:NAME, or your own "
                    "module.path:factory (called as factory(num_classes=K, in_channels=C, image_size=S))")
    generations: int = _f(3, "number of models in the chain, counting R1 (>= 1)")
    seeds: int | list[int] = _f(1, "N: repeat the whole chain for seeds 0..N-1 (N >= 1); or an explicit list of "
                                "seeds, e.g. 3,7,11")
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    refinement: RefineConfig = field(default_factory=RefineConfig)
    execution: ExecConfig = field(default_factory=ExecConfig)

    def __post_init__(self) -> None:
        _need(isinstance(self.model, str) and bool(self.model), "model", self.model, "a model name")
        _need(self.generations >= 1, "generations", self.generations, ">= 1")
        _need(self.generations <= MAX_CHAIN, "generations", self.generations, f"<= {MAX_CHAIN}")
        seeds = self.seeds
        if isinstance(seeds, list):
            ok = 1 <= len(seeds) <= MAX_CHAIN and len(set(seeds)) == len(seeds) and all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31 for x in seeds)
            _need(ok, "seeds", ",".join(map(str, seeds)), f"1 to {MAX_CHAIN} distinct seeds >= 0")
        else:
            _need(isinstance(seeds, int) and not isinstance(seeds, bool) and 1 <= seeds <= MAX_CHAIN, "seeds",
                  seeds, f"a count in 1..{MAX_CHAIN} or a list of seeds")
        folder = self.data.dataset.startswith("folder:")
        _only_with(self.execution.workers != 0, "workers", folder, "--dataset folder:PATH")
        _only_with(self.execution.cache_dir is not None, "cache_dir", folder, "--dataset folder:PATH")
        if self.refinement.noise_prior != "0" and self.training.label_smoothing > 0:
            raise ConfigError(f"--noise-prior {self.refinement.noise_prior} makes soft targets from the given labels "
                              f"already; leave out --label-smoothing {self.training.label_smoothing:g}")
        gens = self.refinement.ensemble
        if gens and (len(gens) < 2 or any(not 1 <= g <= self.generations for g in gens)):
            raise ConfigError(f"--ensemble needs two or more generations in 1..{self.generations}, got "
                              f"{','.join(map(str, gens))!r}")

    def calibrated_refined_labels(self) -> bool:
        """Whether stored refined labels are calibrated probabilities of every class, one row per image: soft
        form at T = 1, not top-k storage, no label smoothing, not cross-fitted (what the noise estimate reads)."""
        ref = self.refinement
        return (parse_label_form(ref.label_form)[0] == "soft" and ref.temperature == 1
                and not ref.label_storage.startswith("topk:") and self.training.label_smoothing == 0
                and not ref.cross_fit)

    def seed_values(self) -> list[int]:
        """The seeds the run trains, in order: ``0..N-1`` for a count N, else the list given."""
        return list(self.seeds) if isinstance(self.seeds, list) else list(range(self.seeds))

    # ------------------------------------------------------------------ flat and nested forms

    def flat(self) -> dict[str, Any]:
        """Every leaf field by name: ``{"model": ..., "dataset": ..., "batch_size": ..., ...}``."""
        out = {name: getattr(self, name) for name in ("model", "generations", "seeds")}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (the ``config.yaml`` layout): top-level fields, then one mapping per section."""
        return dataclasses.asdict(self)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from leaf fields by name; missing ones take their defaults.

        Raises:
            ConfigError: an unknown name, or a value a section rejects.
        """
        unknown = sorted(set(values) - set(leaf_names()))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; see refinery run --help")
        parts = {}
        for section, kind in SECTIONS.items():
            parts[section] = kind(**{f.name: values[f.name] for f in fields(kind) if f.name in values})
        top = {k: values[k] for k in ("model", "generations", "seeds") if k in values}
        return cls(**top, **parts)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "RunConfig":
        """Read a saved ``config.yaml``: nested sections, or the flat layout of older run directories.

        Raises:
            ConfigError: unknown keys or bad values.
        """
        values: dict[str, Any] = {}
        for key, value in (saved or {}).items():
            if key in SECTIONS and isinstance(value, dict):
                values.update(value)
            else:
                values[key] = value
        return cls.from_flat(values)


def leaf_fields() -> Iterator[tuple[dataclasses.Field, Any]]:
    """Every leaf field with its resolved type hint, top-level fields first, then section by section."""
    hints = typing.get_type_hints(RunConfig)
    for f in fields(RunConfig):
        if f.name not in SECTIONS:
            yield f, hints[f.name]
    for kind in SECTIONS.values():
        hints = typing.get_type_hints(kind)
        for f in fields(kind):
            yield f, hints[f.name]


def leaf_names() -> list[str]:
    """Names of every leaf field (the flags of ``refinery run``)."""
    return [f.name for f, _ in leaf_fields()]


# Fields that may differ when a run directory is continued: they extend the
# run or change only how it executes, not what any finished generation means.
RESUMABLE_CHANGES = {"generations", "seeds", "ensemble", "controls", *(f.name for f in fields(ExecConfig))}


PATH_SETTINGS = ("data_dir", "refinery_checkpoint", "cache_dir")  # and the PATH of dataset folder:PATH


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every path setting made absolute (``~`` expanded, relative to the working directory), so
    ``runs/x`` and ``/home/me/runs/x`` are the same setting; other values unchanged."""
    import os

    def absolute(p: str) -> str:
        return os.path.abspath(os.path.expanduser(p))

    out = dict(values)
    for key in PATH_SETTINGS:
        if isinstance(out.get(key), str) and out[key]:
            out[key] = absolute(out[key])
    dataset = out.get("dataset")
    if isinstance(dataset, str) and dataset.startswith("folder:") and len(dataset) > len("folder:"):
        out["dataset"] = "folder:" + absolute(dataset[len("folder:"):])
    return out


def config_difference(saved: RunConfig, new: RunConfig) -> str | None:
    """The first field (other than :data:`RESUMABLE_CHANGES`) whose value differs, as ``'name: old -> new'``
    (paths compared as absolute paths: see :func:`absolute_paths`)."""
    old_values, new_values = absolute_paths(saved.flat()), absolute_paths(new.flat())
    for name in leaf_names():
        if name not in RESUMABLE_CHANGES and old_values[name] != new_values[name]:
            return f"{name}: {old_values[name]!r} -> {new_values[name]!r}"
    return None


PRESETS: dict[str, dict[str, Any]] = {
    # CPU default: full Fashion-MNIST, small fast convnet, 3 generations, 1 seed, short schedule. Model, epochs,
    # batch and progressive resizing chosen by accuracy per second on an fp32 AVX2 path (BENCHMARKS.md,
    # benchmarks/quick_frontier.py).
    "quick": dict(
        model="convnet", generations=3, seeds=1, augment="none", epochs=4, batch_size=128,
        optimizer="adam", lr=3e-3, weight_decay=5e-4, lr_schedule="onecycle", early_stop_patience_epochs=0,
        train_scale_start=0.72,
    ),
    # Refinement that pays, from the evidence (BENCHMARKS.md, "A recipe that pays"; chosen on validation on a
    # 12,000-image Fashion-MNIST subset): patient generations (each trained long enough to fit its targets,
    # students on R1's full schedule), offline soft labels at T = 1, fair controls and the ensemble reported.
    "refine": dict(
        model="convnet", generations=3, seeds=3, augment="none", labels="offline", epochs=16, batch_size=128,
        optimizer="adam", lr=3e-3, weight_decay=5e-4, lr_schedule="onecycle", early_stop_patience_epochs=0,
        temperature=1.0, label_form="soft", gt_weight=0.0, controls=True,
    ),
    # The write-up (shared/seed): Keras ResNet50, Adam 1e-3, batch 250, plateau, early stop, 5 seeds, static aug.
    "blog": dict(
        model="resnet50", generations=3, seeds=5, augment="static", epochs=100, batch_size=250,
        optimizer="adam", lr=1e-3, weight_decay=0.0, lr_schedule="plateau", plateau_factor=0.1,
        plateau_patience_epochs=10, min_lr=1e-5, early_stop_patience_epochs=20, early_stop_min_delta=0.0,
    ),
    # The paper's code: per-crop refined labels, random resized crops, SGD with lr steps.
    "paper": dict(
        model="alexnet_bn", generations=5, seeds=1, augment="crop", labels="online", epochs=200,
        batch_size=256, optimizer="sgd", lr=0.01, weight_decay=5e-4, lr_schedule="steps", lr_steps=[140, 170],
        plateau_factor=0.1, early_stop_patience_epochs=0,
    ),
}


def config_file_values(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML file for ``--config``: leaf names (``batch_size: 128``, or ``batch-size``), or the
    sections of a run's ``config.yaml`` (so a finished run's file reproduces it).

    Raises:
        ConfigError: a file that cannot be read, is not a YAML mapping, or names an unknown setting.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror or e}; give a YAML file of settings") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path} is not UTF-8 text (byte {e.start}); give a YAML file of settings, saved "
                          "as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path} is not valid YAML ({str(e).splitlines()[0]}); fix or replace it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must be a mapping of settings (name: value), got {type(data).__name__}")
    values: dict[str, Any] = {}
    items = [(k, v) for key, value in data.items()
             for k, v in (value.items() if key in SECTIONS and isinstance(value, dict) else [(key, value)])]
    for key, value in items:
        name = str(key).replace("-", "_")
        if name in values:
            raise ConfigError(f"--config {path} sets {name} twice; keep one")
        values[name] = value
    unknown = sorted(set(values) - set(leaf_names()))
    if unknown:
        raise ConfigError(f"--config {path} names unknown setting(s) {', '.join(unknown)}; see refinery run --help")
    hints = {f.name: hint for f, hint in leaf_fields()}
    choices = {f.name: f.metadata.get("choices", ()) for f, _ in leaf_fields()}
    for name, value in values.items():
        if isinstance(value, bool) and {"yes", "no"} <= set(choices[name]):  # YAML reads a bare yes/no as a bool
            values[name] = value = "yes" if value else "no"
        if hints[name] is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[name] = value = str(value)  # YAML reads noise_prior: 0.2 as a number; a text setting takes it
        if _accepts(hints[name], float) and isinstance(value, str):
            try:  # YAML 1.1 reads an exponent without a dot (lr: 3e-3) as text
                values[name] = value = float(value)
            except ValueError:
                pass
        problem = _type_problem(value, hints[name])
        if problem:
            raise ConfigError(f"--config {path}: {name} must be {problem}, got {value!r}")
    return {name: float(v) if _accepts(hints[name], float) and isinstance(v, int) else v for name, v in values.items()}


def _accepts(hint: Any, kind: type) -> bool:
    return hint is kind or kind in typing.get_args(hint)


def _type_problem(value: Any, hint: Any) -> str | None:
    """What ``value`` should be for a field typed ``hint`` (None when it fits): YAML gives ints, floats,
    bools, strings and lists, and a bool is not a number, nor ``"no"`` a bool."""
    if value is None:
        return None if _accepts(hint, type(None)) else "set (not empty)"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    options = []
    if _accepts(hint, int):
        options.append("an integer")
        if is_int:
            return None
    if _accepts(hint, float):
        options.append("a number")
        if is_int or isinstance(value, float):
            return None
    if _accepts(hint, str):
        options.append("a string")
        if isinstance(value, str):
            return None
    if any(typing.get_origin(a) is list for a in (hint, *typing.get_args(hint))):
        options.append("a list of integers")
        if isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            return None
    return " or ".join(options) or "of another type"


def resolve_config(preset: str, overrides: dict[str, Any]) -> RunConfig:
    """Preset values, then ``overrides`` (the flags given, by leaf name), on top of the dataclass defaults.

    Raises:
        ConfigError: unknown preset, unknown field, or a value a section rejects.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    return RunConfig.from_flat({**PRESETS[preset], **overrides})
