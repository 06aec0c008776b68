"""The whole configuration of a run (:class:`RunConfig`), its leaf fields, and what may change on resume."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields

from typing import Any, Iterator

from ..errors import ConfigError
from .values import MAX_CHAIN, _f, _need, _only_with, parse_label_form
from .sections import DataConfig, ExecConfig, RefineConfig, TrainConfig


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
        folder = self.data.dataset.startswith(("folder:", "csv:"))
        _only_with(self.execution.workers != 0, "workers", folder, "--dataset folder:PATH or csv:FILE")
        _only_with(self.execution.cache_dir is not None, "cache_dir", folder, "--dataset folder:PATH or csv:FILE")
        if self.refinement.prior.model != "none" and self.training.label_smoothing > 0:
            what = ("corrects the refined labels on the verified labels" if self.refinement.prior.model == "verified"
                    else "makes soft targets from the given labels already")
            raise ConfigError(f"--noise-prior {self.refinement.noise_prior} {what}; leave out --label-smoothing "
                              f"{self.training.label_smoothing:g}")
        if self.refinement.prior.model == "verified" and self.data.trusted is None:
            raise ConfigError("--noise-prior verified corrects refined labels on verified labels; add --trusted FILE "
                              "(or --trusted N with --label-noise), or use --noise-prior evidence")
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

    def looks_for_wrong_labels(self) -> bool:
        """Whether the run asks about wrong labels (:func:`looks_for_wrong_labels` of its settings)."""
        return looks_for_wrong_labels(self.flat())

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


def looks_for_wrong_labels(flat: dict[str, Any]) -> bool:
    """Whether a run's settings (``flat``, by field name) ask about wrong labels: injected noise, verified labels,
    a noise model or ``--label-issues`` (``--preset noisy``). Only such runs state noise estimates in words: on a
    plain run, an estimate from a briefly trained R1 reads its own errors as wrong labels."""
    return bool(flat.get("label_noise") or flat.get("trusted") or flat.get("true_labels")
                or flat.get("label_issues") or str(flat.get("noise_prior", "0")) not in ("0", "0.0"))


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


PATH_SETTINGS = ("data_dir", "refinery_checkpoint", "cache_dir", "classes", "true_labels")  # and folder:PATH's PATH


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
    if isinstance(out.get("trusted"), str) and out["trusted"] and not out["trusted"].isdigit():  # FILE, not N
        out["trusted"] = absolute(out["trusted"])
    dataset = out.get("dataset")
    for prefix in ("folder:", "csv:"):
        if isinstance(dataset, str) and dataset.startswith(prefix) and len(dataset) > len(prefix):
            out["dataset"] = prefix + absolute(dataset[len(prefix):])
    return out


def config_difference(saved: RunConfig, new: RunConfig) -> str | None:
    """The first field (other than :data:`RESUMABLE_CHANGES`) whose value differs, as ``'name: old -> new'``
    (paths compared as absolute paths: see :func:`absolute_paths`)."""
    old_values, new_values = absolute_paths(saved.flat()), absolute_paths(new.flat())
    for name in leaf_names():
        if name not in RESUMABLE_CHANGES and old_values[name] != new_values[name]:
            return f"{name}: {old_values[name]!r} -> {new_values[name]!r}"
    return None


