"""The four sections of a run's configuration, each a dataclass checked on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from .values import (AUGMENTS, IN_MEMORY_CHOICES, LABEL_MODES, LABEL_STORAGES, LR_SCHEDULES, MAX_BATCH, MAX_CHAIN,
                     MAX_EPOCHS, MAX_IMAGE_PX, MAX_LR, MAX_STATIC_COPIES, MAX_TEMPERATURE, MAX_THREADS, MAX_WORKERS,
                     NoisePrior, OPTIMIZERS, PRECISIONS, _check_finite_floats, _f, _need, _only_with, check_device_name,
                     flag_name, parse_int_list, parse_label_form, parse_label_noise, parse_noise_prior,
                     parse_normalization)


@dataclass
class DataConfig:
    """The dataset and its protocol."""

    dataset: str = _f("fashion-mnist", "dataset name: fashion-mnist, mnist, digits, synthetic, cifar10, cifar100, "
                      "svhn, fashion-mnist-rows and mnist-rows (each image the centre of a row of three items: "
                      "label overlap), folder:PATH, csv:FILE (rows path,label[,split])")
    data_dir: str | None = _f(None, "directory holding (or receiving) the dataset files; converted datasets are "
                              "cached in its labelrefinery-cache/ (none given: in ~/.cache/labelrefinery)")
    val_fraction: float = _f(0.15, "share of the training set held out for validation, stratified by class")
    train_size: int | None = _f(None, "use only this many training images (stratified, before the validation split)")
    test_size: int | None = _f(None, "evaluate on only this many test images (the first ones)")
    classes: str | None = _f(None, "csv: datasets: a text file of class names, one per line: the classes and their "
                             "order (default: the labels' distinct values, sorted); a label not in it is refused")
    image_size: int | None = _f(None, "folder: datasets: resize (shorter side) and centre-crop every image to this "
                                "many pixels per side (none given: the images' own, the most common shorter side)")
    svhn_extra: bool = _f(False, "svhn: add the 531,131-image extra split to training")
    augment: str = _f("none", "training augmentation: none | static (2 stored copies, the write-up) | "
                      "online (fresh every epoch) | crop (random resized crop + flip)", choices=AUGMENTS)
    static_copies: int = _f(2, "augment=static: augmented copies of every training image stored next to it")
    skip_bad_images: bool = _f(False, "folder: datasets: leave out image files that cannot be decoded (found by "
                               "one decoding pass, remembered in the cache directory; their number is logged and "
                               "recorded in run.json); without it such a file stops the run, named by path")
    label_noise: str | None = _f(None, "inject label noise into the training split before validation is drawn: "
                                 "symmetric:P (each label, with probability P, becomes a uniformly drawn other "
                                 "class) | pairflip:P (class k becomes k+1 mod K) | swap:P (P < 0.5: classes "
                                 "paired by a linear classifier's confusions; each label, with probability P, "
                                 "becomes its class's partner) | idn:P (instance-dependent, as annotators err: "
                                 "the share P of images a linear classifier finds most ambiguous get the class it "
                                 "confuses them with; Chen et al. 2021); the same for every seed; test labels are "
                                 "never touched")
    trusted: str | None = _f(None, "verified labels that replace the validation split (the 'gold' set of Hendrycks "
                             "et al. 2018): FILE, a CSV of image,label rows (image: a file of the dataset or its "
                             "index), or N, that many training images whose true labels injected --label-noise "
                             "knows; they choose epochs and generations, give the noise estimate, and never train")
    true_labels: str | None = _f(None, "a CSV of image,label rows: verified labels of some training images, used only "
                                 "to score the refined labels (corrected, harmed, detection F1 on those images), as "
                                 "--label-noise does for all; they train with their given labels")

    def __post_init__(self) -> None:
        _check_finite_floats(self)
        _need(isinstance(self.dataset, str) and bool(self.dataset), "dataset", self.dataset, "a dataset name")
        if self.trusted is not None:
            self.trusted = str(self.trusted).strip()
            number = self.trusted.lstrip("+-").replace(".", "", 1).isdigit()
            _need(bool(self.trusted) and (not number or (self.trusted.isdigit() and int(self.trusted) > 0)),
                  "trusted", self.trusted, "a CSV file of image,label rows or a number of images (N >= 1)")
            if self.trusted.isdigit() and self.label_noise is None:
                raise ConfigError(f"--trusted {self.trusted} takes the true labels of that many images from injected "
                                  "--label-noise, which this run has none of; give --trusted FILE, a CSV of your own "
                                  "verified image,label rows")
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
        _only_with(self.image_size is not None, "image_size", self.dataset.startswith(("folder:", "csv:")),
                   "--dataset folder:PATH or csv:FILE")
        _only_with(self.static_copies != 2, "static_copies", self.augment == "static", "--augment static")
        _only_with(self.skip_bad_images, "skip_bad_images", self.dataset.startswith(("folder:", "csv:")),
                   "--dataset folder:PATH or csv:FILE")
        _only_with(self.classes is not None, "classes", self.dataset.startswith("csv:"), "--dataset csv:FILE")
        if self.true_labels is not None and self.label_noise is not None:
            raise ConfigError("--true-labels scores refined labels against verified ones, but --label-noise already "
                              "keeps every true label; leave one out")
        if self.label_noise is not None:  # one spelling per setting: symmetric:0.30 is symmetric:0.3
            kind, p = parse_label_noise(self.label_noise)
            self.label_noise = f"{kind}:{p:g}"


@dataclass
class TrainConfig:
    """How one generation is fitted: what :func:`labelrefinery.engine.fit` reads."""

    epochs: int = _f(100, "maximum epochs per generation (of R1 alone with --student-epochs)")
    student_epochs: int = _f(0, "maximum epochs of generations 2 and later (the students, which fit refined labels), "
                             "on their own schedule of that length; 0 = --epochs")
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
    mixup: float = _f(0.0, "alpha: every batch trains on pairs of its images mixed, lam * x_i + (1 - lam) * x_j, "
                      "against their targets mixed alike, lam ~ Beta(alpha, alpha) per batch (Zhang et al. 2018, "
                      "mixup); 1 = lam uniform in [0, 1]; 0 = off")
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
        _need(0 <= self.student_epochs <= MAX_EPOCHS, "student_epochs", self.student_epochs,
              f"in [1, {MAX_EPOCHS}], or 0 for --epochs")
        _only_with(self.student_epochs > 0, "student_epochs", self.lr_schedule != "steps",
                   "--lr-schedule onecycle, cosine or plateau (--lr-steps are epochs of --epochs)")
        _need(2 <= self.batch_size <= MAX_BATCH, "batch_size", self.batch_size,
              f"in [2, {MAX_BATCH}] (BatchNorm cannot train on one image)")
        _need(self.lr <= MAX_LR, "lr", self.lr, f"a finite number in (0, {MAX_LR}]")
        _need(self.weight_decay <= 1, "weight_decay", self.weight_decay, "a finite number in [0, 1]")
        _need(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        _need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule, f"one of {', '.join(LR_SCHEDULES)}")
        _need(0 <= self.early_stop_min_delta <= 100, "early_stop_min_delta", self.early_stop_min_delta,
              "in [0, 100] percentage points")
        _need(0.0 <= self.label_smoothing < 1.0, "label_smoothing", self.label_smoothing, "in [0, 1)")
        _need(0.0 <= self.mixup <= 100.0, "mixup", self.mixup, "in [0, 100] (alpha of Beta(alpha, alpha); 0 = off)")
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
    noise_prior: str = _f("0", "P | auto | classwise | verified | evidence: P, the share of given labels believed wrong (symmetric "
                          "noise: a wrong label is any other class alike); the next generation then fits "
                          "P(true class | refined labels, given label) by Bayes' rule, with R1's labels first mapped "
                          "back through the noise (needs calibrated soft labels: --labels offline, --label-form "
                          "soft, --temperature 1, no top-k --label-storage, no --label-smoothing); auto: P estimated "
                          "from R1's refined labels at the temperature that calibrates R1 on the validation images "
                          "(R1's summary.json: symmetric_noise_estimate, calibration_temperature); classwise: a "
                          "wrong label's class depends on the true one (e.g. a 3 often given as 5), the K x K noise "
                          "matrix estimated from R1's refined labels (summary.json: classwise_noise_estimate); "
                          "verified (needs --trusted): each generation's refined labels corrected by a map "
                          "fitted on the verified labels (for noise that depends on the image, which R1 learns); "
                          "evidence: verified with --trusted, else auto or classwise as R1's estimates favour; "
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
    controls: bool = _f(False, "also train, per seed, controls from R1's initialisation: label-smoothing (R1's "
                        "recipe with --label-smoothing 0.1), equal-compute (R1's recipe for the epochs of the whole "
                        "chain: epochs + (generations - 1) x student epochs) and, with --mixup, no-mixup; the table "
                        "reports them beside the generations")
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

    @property
    def prior(self) -> NoisePrior:
        """``noise_prior`` parsed (:func:`parse_noise_prior`): every reader uses this, never the string."""
        return parse_noise_prior(self.noise_prior)

    def _check_noise_prior(self) -> None:
        prior = parse_noise_prior(self.noise_prior)  # stored in its canonical text: "0", "0.2", "auto", ...
        self.noise_prior = prior.model if prior.estimated else format(prior.rate or 0.0, ".15g")
        if prior.model == "none":
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
        if prior.estimated and self.refinery_checkpoint is not None:
            raise ConfigError(f"{flag} estimates the noise from an R1 trained on the given labels; with "
                              "--refinery-checkpoint there is none: give the share you believe, e.g. "
                              "--noise-prior 0.2")
        if prior.estimated and self.cross_fit and prior.model != "verified":  # verified fits on verified labels
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
    label_issues: bool = _f(False, "at the end, write label_issues.csv into the run directory, as `refinery "
                            "label-issues RUN --all-seeds` does (the mean opinion of every seed's best generation "
                            "by validation; one seed: its own)")
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


