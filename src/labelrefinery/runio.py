"""Files of a run: atomic writes, checkpoints (safetensors), refined labels (.npz), metrics (JSON lines).

Every file is written to a temporary name in the same directory and renamed
into place, so a crash never leaves a half-written file under the real name.
Checkpoints are safetensors files: loading them never unpickles objects.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

CHECKPOINT_FORMAT = "labelrefinery-checkpoint/1"

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the mode any new file would get
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line to ``path`` (rewriting the file atomically, so a crash never leaves a partial line)."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, old + (json.dumps(record) + "\n").encode("utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    """All records of a JSON-lines file ([] if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: torch.nn.Module, classes: list[str], spec: dict, extra: dict | None = None) -> None:
    """Save weights as safetensors with the class names and the model spec in the metadata.

    Args:
        path: ``.safetensors`` file.
        model: its ``state_dict()`` is saved (tensors made contiguous, shared storage copied).
        classes: the K class names, in label order.
        spec: :class:`labelrefinery.models.ModelSpec` as a dict.
        extra: more JSON-serialisable metadata (e.g. generation, seed, accuracy).
    """
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "classes": json.dumps(classes), "model": json.dumps(spec),
            "extra": json.dumps(extra or {})}
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None, dict | None, dict]:
    """Load a checkpoint without unpickling anything.

    Accepts this tool's safetensors checkpoints and plain state dicts (a
    ``.safetensors`` file, or a ``.pt``/``.pth`` file loaded with
    ``weights_only=True``). A ``module.`` prefix left by DataParallel / DDP, and
    ``_orig_mod.`` left by torch.compile, are stripped.

    Returns:
        ``(state_dict, classes or None, model spec dict or None, extra dict)``.

    Raises:
        ValueError: the file cannot be read as a checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist; give the path of a model.safetensors or .pt file")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a file; give the path of a model.safetensors or .pt file")
    classes = spec = None
    extra: dict = {}
    try:
        if path.suffix == ".safetensors":
            raw = path.read_bytes()
            state = st_load(raw)
            header_len = int.from_bytes(raw[:8], "little")
            meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {}) or {}
            if "classes" in meta:
                classes = json.loads(meta["classes"])
            if "model" in meta:
                spec = json.loads(meta["model"])
            extra = json.loads(meta.get("extra", "{}"))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
                    break
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"cannot read checkpoint {path} as safetensors or as a weights-only torch file "
            f"({type(e).__name__}: {first[:120]}); give a model.safetensors of this tool or a plain state dict"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors")
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, classes, spec, extra


def model_from_state(state: dict[str, torch.Tensor], spec, device: torch.device, source: str) -> torch.nn.Module:
    """Build the model ``spec`` names and load ``state`` into it: all weights or none.

    Args:
        state: a state dict (see :func:`load_checkpoint`).
        spec: the :class:`labelrefinery.models.ModelSpec` to build.
        device: where to put the model (channels_last).
        source: the file the weights came from, for error messages.

    Raises:
        ValueError: missing or unexpected weights (the first few of each are named), or mismatched shapes.
    """
    from .models import build_model

    model = build_model(spec)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{source} does not fit model {spec.name!r}: {str(e).splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source} does not fit model {spec.name!r}: missing {result.missing_keys[:3]} "
            f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:3]} ({len(result.unexpected_keys)})"
        )
    return model.to(device).to(memory_format=torch.channels_last)


def load_model(path: Path, device: torch.device, spec=None) -> tuple[torch.nn.Module, list[str] | None]:
    """Rebuild a saved generation: ``(model on device in channels_last, stored class names or None)``.

    Args:
        path: a checkpoint :func:`load_checkpoint` reads.
        device: where to put the model.
        spec: the :class:`labelrefinery.models.ModelSpec` to build; default: the one stored in the file.

    Raises:
        ValueError: unreadable file, no spec stored and none given, or weights that do not fit (strict load).
    """
    from .models import ModelSpec

    state, classes, stored, _ = load_checkpoint(path)
    if spec is None:
        if stored is None:
            raise ValueError(f"{path} does not store its model spec; it was not written by labelrefinery")
        spec = ModelSpec(**stored)
    return model_from_state(state, spec, device, str(path)), classes


# --------------------------------------------------------------------------- refined labels


def save_labels(path: Path, labels: torch.Tensor, indices: torch.Tensor, views: torch.Tensor, classes: list[str]) -> None:
    """Save refined labels as ``.npz``.

    Args:
        labels: ``(M, K) float32`` probability rows.
        indices: ``(M,) int64`` index of each row's image in the dataset's training split.
        views: ``(M,) int64`` 0 for the image itself, c >= 1 for its c-th stored augmented copy.
        classes: the K class names.
    """
    buf = io.BytesIO()
    np.savez(buf, labels=labels.float().numpy(), indices=indices.numpy().astype(np.int64),
             views=views.numpy().astype(np.int64), classes=np.array(classes))
    atomic_write_bytes(path, buf.getvalue())


def load_labels(path: Path) -> dict[str, np.ndarray]:
    """Read a refined-labels ``.npz`` (keys ``labels``, ``indices``, ``views``, ``classes``)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
