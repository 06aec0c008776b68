"""Device, precision and threads: resolved once at the start of a run."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import check_device_name
from .dist import cores_per_process, process_info
from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``. Under torchrun ``cuda`` is
    this process's GPU, ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: a name other than auto, cpu, cuda, cuda:N, mps; or CUDA (MPS) asked for and none available.
    """
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None and process_info().world_size > 1:
        dev = torch.device("cuda", process_info().local_rank)  # under torchrun: one GPU per process
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA but torch sees no CUDA device; use --device cpu")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: this PyTorch has no usable MPS (Apple GPU) device; use --device cpu")
    return dev


SIMD_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")  # what decides the kernels


def cpu_features() -> list[str]:
    """The CPU's SIMD features among :data:`SIMD_FEATURES` (from ``/proc/cpuinfo``; [] where it cannot be read)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in SIMD_FEATURES if f in flags]


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def precision_reason(name: str, device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """One line saying which precision a run uses and why, e.g. ``fp32: this CPU has no AVX512-BF16/AMX``."""
    chosen = precision_name(amp_dtype)
    if name != "auto":
        return f"{chosen}: --precision {name}"
    if device.type == "cuda":
        return f"{chosen}: CUDA device {'with' if amp_dtype is not None else 'without'} bf16"
    feats = cpu_features()
    have = " ".join(feats) if feats else "unknown"
    if amp_dtype is None:
        return f"{chosen}: this CPU has no AVX512-BF16/AMX (features: {have})"
    return f"{chosen}: this CPU has native bf16 matrix instructions (features: {have})"


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``name`` on ``device``: None means plain fp32.

    ``auto`` picks bf16 on CPUs with AVX512-BF16/AMX and on CUDA devices that
    support bf16, fp32 otherwise.

    Raises:
        ConfigError: unknown name.
    """
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if cpu_supports_bf16() else None
    raise ConfigError(f"--precision must be auto, fp32, bf16 or fp16, got {name!r}")


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """``"fp32"``, ``"bfloat16"`` or ``"float16"``: how run.json and the start line name a precision."""
    return "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", "")


def set_threads(threads: int) -> int:
    """Set torch's CPU threads (0 = every core this process may use, shared out among the processes torchrun
    started on this machine); returns the number set."""
    torch.set_num_threads(threads or cores_per_process())
    return torch.get_num_threads()
