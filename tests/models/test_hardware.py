"""hardware: auto device, precision and backend; cores and per-backend defaults."""

from __future__ import annotations

import pytest
import torch

import geounet.models.hardware as hardware
from geounet.models.hardware import resolve_precision


def test_auto_precision_on_a_cpu_is_never_bf16(monkeypatch):
    # measured: bf16 on torch lost to fp32 on ONNX Runtime with AVX-512 BF16 (EPYC) and with AMX (Xeon)
    for flags in ({"avx2", "fma"}, {"avx2", "avx512f", "avx512_bf16"}, {"avx2", "amx_bf16", "amx_tile"}):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: set(flags))
        assert resolve_precision("cpu") == "fp32"
        assert resolve_precision("cpu", "bf16") == "bf16"  # asked for: kept
    monkeypatch.setattr(hardware, "cpu_flags", set)  # no /proc/cpuinfo: no VNNI known, fp32
    assert resolve_precision("cpu", "auto", int8_ok=True) == "fp32"


def test_auto_precision_on_a_gpu_predicts_in_fp16_and_trains_in_bf16(monkeypatch):
    # measured on an H200 (benchmarks/gpu.py): fp16 kept fp32's class on more pixels than bf16, as fast
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("cuda") == "fp16" and resolve_precision("cuda:1") == "fp16"
    assert resolve_precision("cuda", training=True) == "bf16"
    assert resolve_precision("cuda", "bf16") == "bf16"  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("cuda", training=True) == "fp16"


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
