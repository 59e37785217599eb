"""hardware: auto device, precision and backend; cores and per-backend defaults."""

from __future__ import annotations

import pytest
import torch

import geounet.models.hardware as hardware
from geounet.models.hardware import resolve_precision


def test_auto_precision_is_fp32_on_cpus_without_amx(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma"})
    assert resolve_precision("cpu") == "fp32"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert resolve_precision("cpu") == "fp32"  # bf16 would mean torch; fp32 runs on ONNX Runtime, faster
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert resolve_precision("cpu") == "bf16"
    assert resolve_precision("cpu", "fp32") == "fp32"
    monkeypatch.setattr(hardware, "cpu_flags", set)  # no /proc/cpuinfo: torch's answer
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert resolve_precision("cpu") == "fp32"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_BF16")
    assert resolve_precision("cpu") == "fp32"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_AMX")
    assert resolve_precision("cpu") == "bf16"


def test_cpu_flags_agree_with_torch_on_this_machine():
    flags = hardware.cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo on this system")
    cap = torch.backends.cpu.get_cpu_capability().upper()
    if cap.startswith("AVX2"):
        assert "avx2" in flags
    if cap.startswith("AVX512"):
        assert "avx512f" in flags


def test_auto_device_is_the_cpu_without_importing_torch_when_no_gpu_device_exists(monkeypatch):
    monkeypatch.setattr(hardware, "may_have_cuda", lambda: False)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # any torch import would now fail
    assert hardware.resolve_device("auto") == "cpu"
    assert hardware.resolve_device("cpu") == "cpu"
