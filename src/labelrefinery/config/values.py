"""Settings' values: the allowed choices and ranges, and the parsers of flags given as text."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from typing import Any

from ..errors import ConfigError


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
        ConfigError: an item that is not an integer (an empty item included: ``"1,,2"``).
    """
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        stripped = str(text).replace(" ", "")
        items = stripped.split(",") if stripped else []  # "1,,2" and "2," are refused, not read as 1,2 and 2
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


NOISE_KINDS = ("symmetric", "pairflip", "swap", "idn")


def parse_label_noise(spec: str) -> tuple[str, float]:
    """Parse ``symmetric:P``, ``pairflip:P``, ``swap:P`` or ``idn:P`` into (kind, P) with P in [0, 1) (the bound 1 - 1/K needs K:
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
        raise ConfigError(f"--label-noise must be symmetric:P, pairflip:P, swap:P or idn:P with 0 <= P < 1 - 1/K, "
                          f"got {spec!r}")
    return kind, p


ESTIMATED_NOISE_PRIORS = ("auto", "classwise", "evidence", "verified")


@dataclass(frozen=True)
class NoisePrior:
    """``--noise-prior`` parsed: what the refinery is told about wrong labels.

    Attributes:
        model: ``none`` (refined labels used as they are), ``symmetric`` (a share ``rate`` of the given labels is
            believed wrong, uniformly), ``auto`` (that share estimated from R1's refined labels), ``classwise``
            (a class-by-class noise matrix estimated from them), ``verified`` (refined labels corrected by a map
            fitted on ``--trusted`` verified labels: :mod:`labelrefinery.noise.correct`) or ``evidence`` (``verified``
            with verified labels, else ``auto`` or ``classwise`` as R1's estimates favour).
        rate: with ``symmetric``, the share in (0, 1); else None. The bound 1 - 1/K needs K and is checked with
            the data (:func:`labelrefinery.noise.max_noise_rate`).
    """

    model: str
    rate: float | None = None

    @property
    def estimated(self) -> bool:
        """True for ``auto``, ``classwise``, ``evidence`` and ``verified``: the run's own evidence decides the noise
        model."""
        return self.model in ESTIMATED_NOISE_PRIORS


def parse_noise_prior(text: str) -> NoisePrior:
    """Parse ``--noise-prior``: a share P in [0, 1) of given labels believed wrong (0: none), or ``auto`` /
    ``classwise`` (estimated from generation 1's refined labels, as one symmetric rate or class by class) /
    ``verified`` (corrected on ``--trusted`` labels) / ``evidence`` (the one of these the evidence favours).

    Raises:
        ConfigError: anything else.
    """
    if str(text) in ESTIMATED_NOISE_PRIORS:
        return NoisePrior(str(text))
    try:
        p = float(text)
    except ValueError:
        p = -1.0
    if not 0.0 <= p < 1.0:
        raise ConfigError("--noise-prior must be auto, classwise, evidence, verified or a share P with "
                          f"0 <= P < 1 - 1/K (e.g. 0.2), got {text!r}")
    return NoisePrior("none") if p == 0.0 else NoisePrior("symmetric", p + 0.0)


def check_device_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is auto, cpu, cuda, cuda:N or mps (availability is checked
    later)."""
    ok = name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())
    if not ok:
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


