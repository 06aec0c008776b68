"""Presets, ``--config`` files, and resolving them with the flags given into a :class:`RunConfig`."""

from __future__ import annotations

import typing

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .run import RunConfig, SECTIONS, leaf_fields, leaf_names
from .values import parse_noise_prior


PRESETS: dict[str, dict[str, Any]] = {
    # CPU default: full Fashion-MNIST, small fast convnet, 3 generations, 1 seed, short schedule. Model, epochs,
    # batch and progressive resizing chosen by accuracy per second on an fp32 AVX2 path (BENCHMARKS.md,
    # benchmarks/quick_frontier.py). Students fit 0.3 one-hot given label + 0.7 refined labels (the setting
    # validation chose for short schedules, "A recipe that pays"): later generations no longer drift below R1.
    "quick": dict(
        model="convnet", generations=3, seeds=1, augment="none", epochs=4, batch_size=128,
        optimizer="adam", lr=3e-3, weight_decay=5e-4, lr_schedule="onecycle", early_stop_patience_epochs=0,
        train_scale_start=0.72, gt_weight=0.3,
    ),
    # Refinement that pays, from the evidence (BENCHMARKS.md, "A recipe that pays"; chosen on validation on a
    # 12,000-image Fashion-MNIST subset): patient generations (each trained long enough to fit its targets,
    # students on R1's full schedule), offline soft labels at T = 1, fair controls and the ensemble reported.
    "refine": dict(
        model="convnet", generations=3, seeds=3, augment="none", labels="offline", epochs=16, batch_size=128,
        optimizer="adam", lr=3e-3, weight_decay=5e-4, lr_schedule="onecycle", early_stop_patience_epochs=0,
        temperature=1.0, label_form="soft", gt_weight=0.0, controls=True,
    ),
    # "My labels may be wrong": the refinery with the noise model chosen from the evidence (counted on --trusted
    # verified labels when given), every generation trained with mixup (alpha 1: of the published noise-robust
    # methods measured, the one that gained most on annotator-like noise, and with verified labels it lifts the
    # refinery from +3.7 to +9.2 points), 3 generations of the noisy-label benchmarks' 8-epoch convnet recipe, 3
    # seeds, the controls (plain training without mixup among them) trained beside it; BENCHMARKS.md, "Annotator-like
    # noise".
    "noisy": dict(
        model="convnet", generations=3, seeds=3, augment="none", labels="offline", epochs=8, batch_size=128,
        optimizer="adam", lr=3e-3, weight_decay=5e-4, lr_schedule="onecycle", early_stop_patience_epochs=0,
        temperature=1.0, label_form="soft", gt_weight=0.0, noise_prior="evidence", controls=True, label_issues=True,
        mixup=1.0,
    ),
    # The blog post "Label Refinery: A Softer Approach": Keras ResNet50, Adam 1e-3, batch 250, plateau, early stop,
    # 5 seeds, static augmentation.
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
    """Preset values, then ``overrides`` (the flags given, by leaf name), on top of the dataclass defaults. A
    ``noise_prior`` given (not off) without a ``gt_weight`` drops the preset's ground-truth weight: both anchor the
    targets to the given labels, and the flag given wins.

    Raises:
        ConfigError: unknown preset, unknown field, or a value a section rejects.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **overrides}
    prior = overrides.get("noise_prior")
    if prior is not None and "gt_weight" not in overrides:
        try:
            anchored = parse_noise_prior(str(prior)).model != "none"
        except ConfigError:
            anchored = False  # the section names the bad value
        if anchored:
            values["gt_weight"] = 0.0
    return RunConfig.from_flat(values)
