"""Typed run configuration, presets, and the rules for resuming a run.

A :class:`RunConfig` is built from a preset (``quick``, ``blog``, ``paper``)
and any flags given on the command line, which override the preset. Its
resolved copy is saved as ``config.yaml`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

AUGMENTS = ("none", "static", "online", "crop")
LABEL_MODES = ("offline", "online")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("plateau", "onecycle", "cosine", "steps")


def check_device_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is auto, cpu, cuda or cuda:N."""
    ok = name in ("auto", "cpu", "cuda")
    if name.startswith("cuda:"):
        ok = name[5:].isdigit()
    if not ok:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunConfig:
    """Everything that defines a refinery run. Units are in the field help."""

    # What to run
    dataset: str = _f("fashion-mnist", "dataset name: fashion-mnist, mnist, digits, synthetic, cifar10, cifar100, svhn, folder:PATH")
    data_dir: str | None = _f(None, "directory holding (or receiving) the dataset files")
    model: str = _f("convnet", "model name from the registry (see `refinery models`), or timm:NAME")
    generations: int = _f(3, "number of models in the chain, counting R1 (>= 1)")
    seeds: int = _f(1, "repeat the whole chain for seeds 0..N-1 (>= 1)")
    augment: str = _f("none", "training augmentation: none | static (2 stored copies, the write-up) | "
                      "online (fresh every epoch) | crop (random resized crop + flip)", choices=AUGMENTS)
    labels: str = _f("offline", "offline: refined labels made once per generation on fixed views; "
                     "online: the refinery labels every augmented batch the student sees", choices=LABEL_MODES)
    # Data protocol
    val_fraction: float = _f(0.15, "share of the training set held out for validation, stratified by class")
    train_size: int | None = _f(None, "use only this many training images (stratified, before the validation split)")
    test_size: int | None = _f(None, "evaluate on only this many test images (the first ones)")
    image_size: int | None = _f(None, "resize folder datasets to this many pixels per side (default 224 for folder:)")
    svhn_extra: bool = _f(False, "svhn: add the 531,131-image extra split to training")
    static_copies: int = _f(2, "augment=static: augmented copies of every training image stored next to it")
    # Optimisation
    epochs: int = _f(100, "maximum epochs per generation")
    batch_size: int = _f(250, "images per optimizer step (per process)")
    optimizer: str = _f("adam", "adam | sgd (momentum 0.9, nesterov)", choices=OPTIMIZERS)
    lr: float = _f(1e-3, "learning rate (the peak for onecycle)")
    weight_decay: float = _f(0.0, "L2 weight decay coefficient")
    lr_schedule: str = _f("plateau", "plateau (on validation accuracy) | onecycle | cosine | steps", choices=LR_SCHEDULES)
    lr_steps: str = _f("", "lr_schedule=steps: comma-separated epochs at which lr is multiplied by plateau_factor")
    plateau_factor: float = _f(0.1, "lr multiplier on a plateau (and at each step for lr_schedule=steps)")
    plateau_patience_epochs: int = _f(10, "epochs without validation improvement before lr is reduced")
    min_lr: float = _f(1e-5, "lower bound of the learning rate under lr_schedule=plateau")
    early_stop_patience_epochs: int = _f(20, "stop after this many epochs without validation improvement (0 = never)")
    early_stop_min_delta: float = _f(0.0, "validation accuracy gain, in percentage points, that counts as improvement "
                                     "(the write-up's Keras setting was 10)")
    restore_best: bool = _f(True, "end each generation with its best-validation weights")
    recalibrate_bn: bool = _f(True, "recompute BatchNorm statistics over the training images after each generation "
                              "(keeps short runs calibrated, so refined labels do not collapse)")
    # Refinement
    temperature: float = _f(1.0, "softmax temperature T of refined labels; the soft loss is scaled by T^2")
    label_form: str = _f("soft", "refined label form: soft | hard | topk:K")
    gt_weight: float = _f(0.0, "alpha: targets = alpha * one-hot ground truth + (1 - alpha) * refined labels")
    refinery_checkpoint: str | None = _f(None, "a trained model that makes generation 1's labels instead of the "
                                         "ground truth (a model.safetensors of this tool, or a torchvision/timm "
                                         "state dict with --refinery-model)")
    refinery_model: str | None = _f(None, "model name of --refinery-checkpoint when the file does not store it")
    adversarial_jitter: float = _f(0.0, "P: probability per training image of replacing it by its adversarial "
                                   "jitter (needs --labels online)")
    jitter_eps: float = _f(1 / 255, "E: adversarial jitter step, in [0, 1] pixel units")
    ensemble: str = _f("", "comma-separated generations whose averaged softmax is also evaluated, e.g. 2,3")
    # Execution
    precision: str = _f("auto", "auto (bf16 on CPUs with AVX512-BF16/AMX and on CUDA with bf16, else fp32) | fp32 | bf16 | fp16",
                        choices=PRECISIONS)
    device: str = _f("auto", "auto (cuda if present, else cpu) | cpu | cuda | cuda:N")
    threads: int = _f(0, "CPU threads for torch (0 = all cores)")
    compile: bool = _f(False, "torch.compile the model (pays off only for long runs)")
    progress: bool = _f(True, "show a progress bar per epoch")

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line message naming the bad value and the fix."""
        from .data import check_dataset_name
        from .models import check_model_name

        check_dataset_name(self.dataset)
        check_model_name(self.model)
        positive = ["generations", "seeds", "epochs", "batch_size"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name, choices in [("augment", AUGMENTS), ("labels", LABEL_MODES), ("precision", PRECISIONS),
                              ("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES)]:
            if getattr(self, name) not in choices:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"--temperature must be a finite number > 0, got {self.temperature}")
        if not (math.isfinite(self.early_stop_min_delta) and self.early_stop_min_delta >= 0):
            raise ValueError(f"--early-stop-min-delta must be >= 0 points, got {self.early_stop_min_delta}")
        if not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(f"--plateau-factor must be in (0, 1), got {self.plateau_factor}")
        for name in ("plateau_patience_epochs", "early_stop_patience_epochs", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.min_lr < 0:
            raise ValueError(f"--min-lr must be >= 0, got {self.min_lr}")
        if not 0.0 <= self.gt_weight <= 1.0:
            raise ValueError(f"--gt-weight must be in [0, 1], got {self.gt_weight}")
        if self.static_copies < 1:
            raise ValueError(f"--static-copies must be >= 1, got {self.static_copies}")
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            if v is not None and v < 20:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 20 images, got {v}")
        from .targets import parse_label_form

        parse_label_form(self.label_form)
        if not 0.0 <= self.adversarial_jitter <= 1.0:
            raise ValueError(f"--adversarial-jitter must be a probability in [0, 1], got {self.adversarial_jitter}")
        if self.adversarial_jitter > 0 and self.labels != "online":
            raise ValueError("--adversarial-jitter needs --labels online (the refinery labels each jittered crop)")
        if self.jitter_eps <= 0:
            raise ValueError(f"--jitter-eps must be > 0 (in [0, 1] pixel units), got {self.jitter_eps}")
        if self.refinery_model is not None:
            check_model_name(self.refinery_model)
        self.ensemble_generations()
        self.lr_step_epochs()
        check_device_name(self.device)

    def ensemble_generations(self) -> list[int]:
        """The generations named by ``ensemble`` (1-based), or [] when empty."""
        if not self.ensemble:
            return []
        try:
            gens = [int(g) for g in self.ensemble.split(",")]
        except ValueError:
            raise ValueError(f"--ensemble must be comma-separated generation numbers like 2,3, got {self.ensemble!r}") from None
        bad = [g for g in gens if not 1 <= g <= self.generations]
        if bad or len(gens) < 2:
            raise ValueError(
                f"--ensemble needs two or more generations in 1..{self.generations}, got {self.ensemble!r}"
            )
        return gens

    def lr_step_epochs(self) -> list[int]:
        """Epochs (0-based) at which lr_schedule=steps multiplies the lr by ``plateau_factor``."""
        if not self.lr_steps:
            return []
        try:
            return [int(e) for e in self.lr_steps.split(",")]
        except ValueError:
            raise ValueError(f"--lr-steps must be comma-separated epochs like 140,170, got {self.lr_steps!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields that may differ when a run directory is continued: they extend the
# run or change only how it executes, not what any finished generation means.
RESUMABLE_CHANGES = {"generations", "seeds", "device", "threads", "progress", "compile", "ensemble"}


def config_difference(saved: dict[str, Any], new: RunConfig) -> str | None:
    """The first field (other than :data:`RESUMABLE_CHANGES`) whose value differs, as 'name: old -> new'."""
    for f in fields(RunConfig):
        if f.name in RESUMABLE_CHANGES:
            continue
        old = saved.get(f.name, f.default)
        if old != getattr(new, f.name):
            return f"{f.name}: {old!r} -> {getattr(new, f.name)!r}"
    return None


PRESETS: dict[str, dict[str, Any]] = {
    # CPU default: full Fashion-MNIST, small fast convnet, 3 generations, 1 seed, short schedule.
    "quick": dict(
        model="convnet", generations=3, seeds=1, augment="none", epochs=4, batch_size=256,
        optimizer="adam", lr=3e-3, weight_decay=5e-4, lr_schedule="onecycle", early_stop_patience_epochs=0,
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
        batch_size=256, optimizer="sgd", lr=0.01, weight_decay=5e-4, lr_schedule="steps", lr_steps="140,170",
        plateau_factor=0.1, early_stop_patience_epochs=0,
    ),
}


def resolve_config(preset: str, overrides: dict[str, Any]) -> RunConfig:
    """Preset values, then ``overrides`` (the flags given), on top of the dataclass defaults.

    Raises:
        ValueError: unknown preset, unknown field, or a value :meth:`RunConfig.validate` rejects.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; see refinery run --help")
    cfg = RunConfig(**{**PRESETS[preset], **overrides})
    cfg.validate()
    return cfg
