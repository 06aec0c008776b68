import pytest
import torch

from labelrefinery import device
from labelrefinery.device import resolve_precision
from labelrefinery.errors import ConfigError

CPU = torch.device("cpu")


def test_cpu_features_are_known_simd_flags():
    feats = device.cpu_features()
    assert set(feats) <= set(device.SIMD_FEATURES)
    assert device.cpu_supports_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(feats))


def test_precision_reason_names_the_deciding_features(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_features", lambda: ["avx2", "fma"])
    assert device.resolve_precision("auto", cpu) is None
    assert device.precision_reason("auto", cpu, None) == "fp32: this CPU has no AVX512-BF16/AMX (features: avx2 fma)"
    monkeypatch.setattr(device, "cpu_features", lambda: ["avx2", "avx512_bf16"])
    assert device.resolve_precision("auto", cpu) == torch.bfloat16
    assert device.precision_reason("auto", cpu, torch.bfloat16).startswith("bfloat16: this CPU has native bf16")
    assert device.precision_reason("fp32", cpu, None) == "fp32: --precision fp32"


def test_precision_resolution():
    assert resolve_precision("fp32", CPU) is None
    assert resolve_precision("bf16", CPU) == torch.bfloat16
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp8", CPU)
