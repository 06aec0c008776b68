"""Model files: this tool's safetensors checkpoints and foreign state dicts, loaded without unpickling.

A checkpoint written here is a safetensors file whose metadata holds the
format tag, the K class names, the :class:`~labelrefinery.models.ModelSpec`
and free-form extras (seed, generation, validation top-1). Foreign files are
read as plain state dicts: ``.safetensors``, or ``.pt``/``.pth`` through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .console import log
from .data import Dataset
from .errors import CheckpointError
from .fileio import atomic_write_bytes, sha256_bytes
from .models import ModelSpec, build_model

CHECKPOINT_FORMAT = "labelrefinery-checkpoint/1"


def preprocessing_record(dataset: Dataset, augment: str) -> dict:
    """What a checkpoint stores (under ``extra["preprocessing"]``) so its model can be used outside the tool.

    Returns:
        ``{"mean": [C floats], "std": [C floats]`` (normalisation, in [0, 1] pixel units), ``"channels": C``,
        ``"stored_size": S`` (images are resized, shorter side, and centre-cropped to S x S pixels, as the
        dataset stores them), ``"augment": name`` (the training augmentation, whose
        :func:`labelrefinery.augment.eval_view` is applied at evaluation, e.g. the centre 224/256 for
        ``crop``)``}``.
    """
    c, h, _ = dataset.image_shape
    return {"mean": [float(m) for m in dataset.mean], "std": [float(s) for s in dataset.std], "channels": c,
            "stored_size": h, "augment": augment}


def save_checkpoint(path: Path, model: torch.nn.Module, classes: list[str], spec: dict, extra: dict | None = None) -> str:
    """Save weights as safetensors with the class names and the model spec in the metadata; returns its SHA-256.

    Args:
        path: ``.safetensors`` file, written atomically.
        model: its ``state_dict()`` is saved (tensors made contiguous, shared storage copied).
        classes: the K class names, in label order.
        spec: :class:`labelrefinery.models.ModelSpec` as a dict.
        extra: more JSON-serialisable metadata (e.g. generation, seed, accuracy).
    """
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "classes": json.dumps(classes), "model": json.dumps(spec),
            "extra": json.dumps(extra or {})}
    data = st_save(tensors, metadata=meta)
    meta["data_sha256"] = sha256_bytes(_data_section(data))  # the file vouches for its own weights
    data = st_save(tensors, metadata=meta)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def _data_section(raw: bytes) -> bytes:
    """The tensor bytes of a safetensors file: everything after its 8-byte length and JSON header."""
    return raw[8 + int.from_bytes(raw[:8], "little"):]


def _read_safetensors(path: Path) -> tuple[dict, list[str] | None, dict | None, dict]:
    raw = path.read_bytes()
    state = st_load(raw)
    header_len = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {}) or {}
    if "data_sha256" in meta and meta["data_sha256"] != sha256_bytes(_data_section(raw)):
        raise CheckpointError(f"{path} is damaged or was edited (its weights do not match the sha256 it carries); "
                              "use the file the run wrote, or retrain that generation")
    fmt = meta.get("format")
    if fmt is not None and fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {fmt!r}, this labelrefinery reads {CHECKPOINT_FORMAT!r}; "
                              "use the labelrefinery version that wrote it")
    classes = json.loads(meta["classes"]) if "classes" in meta else None
    spec = json.loads(meta["model"]) if "model" in meta else None
    return state, classes, spec, json.loads(meta.get("extra", "{}"))


def _stored_classes(obj) -> list[str] | None:
    """The class names a ``.pt`` checkpoint dict stores beside its weights (``classes`` or ``class_names``)."""
    if isinstance(obj, dict):
        for key in ("classes", "class_names"):
            value = obj.get(key)
            if isinstance(value, (list, tuple)) and value and all(isinstance(c, str) for c in value):
                return list(value)
    return None


# Objects that training scripts keep beside the weights and that carry no code: read as inert stand-ins (their
# content is dropped), so such files still load with weights_only=True. torchvision's reference scripts store
# their argparse arguments; Lightning its hyper-parameters as an AttributeDict.
INERT_GLOBALS = ("argparse.Namespace", "pathlib.PosixPath", "pathlib.WindowsPath")
PLAIN_DICTS = ("lightning.fabric.utilities.data.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
               "pytorch_lightning.utilities.parsing.AttributeDict")  # dict subclasses: read as plain dicts
LIGHTNING_KEYS = ("pytorch-lightning_version", "lightning_version", "global_step")


class _Inert(dict):
    """Stands in for an :data:`INERT_GLOBALS` object while unpickling: takes any arguments and state, runs nothing."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``, with :data:`INERT_GLOBALS` allowed as inert stand-ins and
    :data:`PLAIN_DICTS` as plain dicts."""
    allowed = [(_Inert, name) for name in INERT_GLOBALS] + [(dict, name) for name in PLAIN_DICTS]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None, dict | None, dict]:
    """Load a checkpoint without unpickling anything.

    Accepts this tool's safetensors checkpoints and plain state dicts (a
    ``.safetensors`` file, or a ``.pt``/``.pth`` file loaded with
    ``weights_only=True``, whose state dict may sit under ``state_dict``,
    ``model`` or ``model_state_dict``, and whose class names may sit under
    ``classes`` or ``class_names``): torchvision reference-script checkpoints
    (``{"model", "optimizer", "args", ...}``) and Lightning checkpoints
    (``{"state_dict": {"model.<name>": ...}, ...}``, whose common first prefix is
    stripped) included; their non-tensor entries are read as inert stand-ins
    (:data:`INERT_GLOBALS`), never run. A ``module.`` prefix left by
    DataParallel / DDP, and ``_orig_mod.`` left by torch.compile, are stripped.

    Returns:
        ``(state_dict, classes or None, model spec dict or None, extra dict)``.

    Raises:
        CheckpointError: missing file, a file that cannot be read as a checkpoint (pickled objects
            included), or NaN / infinite weights.
    """
    path = Path(path)
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise CheckpointError(f"checkpoint {path} {what}; give the path of a model.safetensors or .pt file")
    classes = spec = None
    extra: dict = {}
    try:
        if path.suffix == ".safetensors":
            state, classes, spec, extra = _read_safetensors(path)
        else:
            state = _torch_load(path)
            classes = _stored_classes(state)
            lightning = isinstance(state, dict) and (any(k in state for k in LIGHTNING_KEYS) or "state_dict" in state)
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
                    break
            if lightning and state and isinstance(state, dict):  # LightningModule attribute: "model.conv1.weight"
                first = {str(k).split(".", 1)[0] for k in state}
                if len(first) == 1 and all("." in str(k) for k in state):
                    state = {str(k).split(".", 1)[1]: v for k, v in state.items()}
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch's message carries terminal colour codes
        culprit = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand [^\n.]+)", text)
        first = culprit.group(1) if culprit else (text.strip().splitlines()[0] if text.strip() else "")
        raise CheckpointError(
            f"{path} holds pickled Python objects that weights-only loading refuses to run ({first[:100]}); "
            "save the model's state_dict() (tensors only) or a .safetensors file and give that"
        ) from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"cannot read checkpoint {path} as safetensors or as a weights-only torch file "
            f"({type(e).__name__}: {first[:120]}); give a model.safetensors of this tool or a plain state dict"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} holds NaN or infinite weights ({bad}); it is damaged or its "
                              "training diverged: give another checkpoint")
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, classes, spec, extra


def model_from_state(state: dict[str, torch.Tensor], spec: ModelSpec, device: torch.device,
                     source: str) -> torch.nn.Module:
    """Build the model ``spec`` names and load ``state`` into it: all weights or none.

    Args:
        state: a state dict (see :func:`load_checkpoint`).
        spec: the model to build.
        device: where to put the model (channels_last).
        source: the file the weights came from, for error messages.

    Raises:
        CheckpointError: missing or unexpected weights (the first few of each are named), or mismatched shapes.
    """
    model = build_model(spec)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{source} does not fit model {spec.name!r}: {str(e).splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source} does not fit model {spec.name!r}: missing {result.missing_keys[:3]} "
            f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:3]} ({len(result.unexpected_keys)})"
        )
    return model.to(device).to(memory_format=torch.channels_last).eval()


def spec_from_dict(spec: dict, source: str) -> ModelSpec:
    """The :class:`ModelSpec` a checkpoint's metadata stores.

    Raises:
        CheckpointError: keys missing or unknown.
    """
    try:
        return ModelSpec(**spec)
    except TypeError:
        raise CheckpointError(f"{source} stores a model spec this labelrefinery cannot read ({sorted(spec)}); "
                              "use the version that wrote it") from None


def load_model(path: Path, device: torch.device, spec: ModelSpec | None = None) -> tuple[torch.nn.Module, list[str] | None]:
    """Rebuild a saved generation: ``(model in eval mode on device in channels_last, stored class names or None)``.

    Args:
        path: a checkpoint :func:`load_checkpoint` reads.
        device: where to put the model.
        spec: the model to build; default: the one stored in the file.

    Raises:
        CheckpointError: unreadable file, no spec stored and none given, or weights that do not fit (strict load).
    """
    state, classes, stored, _ = load_checkpoint(path)
    if spec is None:
        if stored is None:
            raise CheckpointError(f"{path} does not store its model spec; it was not written by labelrefinery")
        spec = spec_from_dict(stored, str(path))
    return model_from_state(state, spec, device, str(path)), classes


def check_classes(source: str, classes: list[str], dataset: Dataset) -> None:
    """Raise :class:`CheckpointError` showing the first difference when ``classes`` are not ``dataset``'s."""
    if classes == dataset.classes:
        return
    i = next((i for i, (a, b) in enumerate(zip(classes, dataset.classes)) if a != b),
             min(len(classes), len(dataset.classes)))
    have = repr(classes[i]) if i < len(classes) else "(none)"
    want = repr(dataset.classes[i]) if i < len(dataset.classes) else "(none)"
    raise CheckpointError(
        f"{source} was trained on other classes: class {i} is {have} there but {want} in "
        f"{dataset.name} ({len(classes)} vs {len(dataset.classes)} classes); use a model trained on this dataset"
    )


class Renormalized(torch.nn.Module):
    """``model`` fed input normalised with other statistics than the run's.

    ``forward(x)``: ``x`` ``(N, C, H, W)`` normalised with ``(from_mean, from_std)``; the model sees
    ``(x * from_std + from_mean - to_mean) / to_std``, i.e. the same [0, 1] image normalised its own way.
    Statistics are C floats in [0, 1] pixel units.
    """

    def __init__(self, model: torch.nn.Module, from_mean, from_std, to_mean, to_std):
        super().__init__()
        self.model = model

        def column(v):
            return torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)

        # x * scale + shift == (x * from_std + from_mean - to_mean) / to_std
        self.register_buffer("scale", column(from_std) / column(to_std))
        self.register_buffer("shift", (column(from_mean) - column(to_mean)) / column(to_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale.to(x.dtype) + self.shift.to(x.dtype))


class TeacherView(torch.nn.Module):
    """``model`` fed the view of each image it was trained on, whatever side the run's images have.

    ``forward(x)``: ``x`` ``(N, C, S, S)`` float, normalised; returns the model's ``(N, K)`` logits. A full stored
    view (S equal to the checkpoint's stored size) of a model
    trained with random crops gets its evaluation centre crop (:class:`~labelrefinery.augment.CenterCropView`);
    then an input whose side is not the model's own input side is resized to it (bilinear, antialiased; on
    normalised values, which resizing leaves normalised). Per-crop inputs of the model's own side pass unchanged.
    """

    def __init__(self, model: torch.nn.Module, stored_size: int, augment: str):
        super().__init__()
        from .augment import eval_view, input_size

        self.model, self.stored_size = model, int(stored_size)
        self.view = eval_view(augment)
        self.side = input_size(augment, self.stored_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.view is not None and x.shape[-1] == self.stored_size:
            x = self.view(x)
        if x.shape[-1] != self.side or x.shape[-2] != self.side:
            x = torch.nn.functional.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True,
                                                align_corners=False)
        return self.model(x)


def refinery_statistics(setting: str, stored: dict | None, dataset: Dataset,
                        written_here: bool = False) -> tuple[list[float], list[float], str]:
    """The mean and std (C floats, [0, 1] pixel units) an external refinery was trained with, and how they were
    chosen, for ``--refinery-normalization`` ``setting`` (see :func:`labelrefinery.config.parse_normalization`).

    ``auto``: the ``stored`` preprocessing of a checkpoint; a checkpoint of this tool from before it stored
    one (``written_here``) was trained with its dataset's own statistics; a plain state dict, ImageNet's.

    Raises:
        CheckpointError: statistics with a channel count other than the dataset's.
    """
    from .config import IMAGENET_MEAN, IMAGENET_STD, parse_normalization

    c = dataset.image_shape[0]
    parsed = parse_normalization(setting)
    if parsed == "auto":
        if stored is not None:
            return list(stored["mean"]), list(stored["std"]), "the preprocessing its checkpoint stores"
        parsed = "dataset" if written_here else "imagenet"
    if parsed == "dataset":
        return list(dataset.mean), list(dataset.std), f"{dataset.name}'s own statistics"
    if parsed == "imagenet":
        mean, std, how = IMAGENET_MEAN, IMAGENET_STD, "ImageNet statistics (torchvision's)"
    else:
        (mean, std), how = parsed, f"--refinery-normalization {setting}"
    if len(mean) == 3 and c == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    if len(mean) != c:
        raise CheckpointError(f"--refinery-normalization {setting} gives {len(mean)} channel(s); {dataset.name} "
                              f"has {c}: give {c} means and {c} stds")
    return list(mean), list(std), how


def load_refinery(path: str | Path, model_name: str | None, dataset: Dataset, image_size: int,
                  device: torch.device, normalization: str = "auto") -> torch.nn.Module:
    """Load a user-given refinery (``--refinery-checkpoint``) for ``dataset``.

    Accepts this tool's ``model.safetensors`` (which stores its model spec and
    class names) or a plain torchvision/timm state dict (``.safetensors``,
    ``.pt``, ``.pth``, loaded with ``weights_only=True``) together with
    ``model_name``.

    The model is fed each batch normalised as it was trained (``normalization``, see
    :func:`refinery_statistics`): wrapped in :class:`Renormalized` when that differs from the dataset's own
    statistics, which the run normalises with. A line says which statistics were chosen. A checkpoint of this
    tool that stores another image size or an evaluation crop is also wrapped in :class:`TeacherView`, so it
    sees its own view at its own size (said in a line).

    Args:
        image_size: side in pixels of the images the refinery will see.
        normalization: ``--refinery-normalization``.

    Raises:
        CheckpointError: unreadable file; no model name known; stored class names
            that differ from the dataset's (the message shows the first
            difference); missing or unexpected weights (never a partial load).
    """
    state, classes, spec, extra = load_checkpoint(Path(path))
    if classes is not None:
        check_classes(f"refinery {path}", classes, dataset)
    c = dataset.image_shape[0]
    if spec is None or model_name is not None:
        if model_name is None:
            raise CheckpointError(f"{path} does not say which model it holds; add --refinery-model NAME")
        spec_obj = ModelSpec(model_name, dataset.train.num_classes, c, image_size)
    else:
        spec_obj = spec_from_dict(spec, f"refinery {path}")
    if spec_obj.num_classes != dataset.train.num_classes or spec_obj.in_channels != c:
        raise CheckpointError(f"refinery {path} has {spec_obj.num_classes} classes and {spec_obj.in_channels} input "
                              f"channels; {dataset.name} needs {dataset.train.num_classes} and {c}")
    model = model_from_state(state, spec_obj, device, f"refinery {path} (check --refinery-model)")
    if classes is None:
        log(f"note: {path} stores no class names; assuming they are {dataset.name}'s, in order")
    stored = extra.get("preprocessing")
    mean, std, how = refinery_statistics(normalization, stored, dataset, spec is not None)
    log(f"refinery {path}: input normalised with {how} (mean {', '.join(f'{m:.3f}' for m in mean)}, std "
        f"{', '.join(f'{v:.3f}' for v in std)}); set --refinery-normalization if it was trained otherwise")
    if stored is not None and "stored_size" in stored:  # this tool's checkpoint: its own image size and view
        from .augment import input_size

        augment = str(stored.get("augment", "none"))
        if input_size(augment, int(stored["stored_size"])) != image_size:
            model = TeacherView(model, int(stored["stored_size"]), augment).to(device).eval()
            log(f"refinery {path}: trained on {stored['stored_size']} px images (augment={augment}); its input is "
                f"brought to its own view and size, {model.side} px, from this run's {image_size} px")
    if torch.allclose(torch.tensor(mean), torch.tensor(dataset.mean, dtype=torch.float32), atol=1e-6) and \
            torch.allclose(torch.tensor(std), torch.tensor(dataset.std, dtype=torch.float32), atol=1e-6):
        return model
    return Renormalized(model, dataset.mean, dataset.std, mean, std).to(device).eval()
