"""The ONNX Runtime backend: exported network equals torch's, the export cache, backend choice."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from geounet.errors import ModelError
from geounet.models import hardware
from geounet.models import onnx as onnxrt
from geounet.models.hardware import resolve_backend
from geounet.models.registry import cached_model
from tests.helpers import make_tiny_model


def _torch_probabilities(model: Path, x: np.ndarray) -> np.ndarray:
    net, _ = cached_model(model, "cpu")  # batch norms folded, channels_last: the torch backend
    with torch.inference_mode():
        return torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()


def test_onnx_network_gives_torch_probabilities_at_any_batch_and_tile_shape(tiny_model):
    net = onnxrt.load_onnx(tiny_model, threads=1)
    rng = np.random.default_rng(0)
    for shape in [(3, 3, 128, 128), (1, 3, 96, 160)]:  # batch, height and width are dynamic
        x = rng.normal(size=shape).astype(np.float32)
        probs = net(x)
        assert probs.shape == (shape[0], 2) + shape[2:] and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # the softmax is in the graph
        np.testing.assert_allclose(probs, _torch_probabilities(tiny_model, x), atol=1e-5)


def test_export_is_cached_by_the_model_files_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOUNET_CACHE_DIR", str(tmp_path / "cache"))
    model = make_tiny_model(tmp_path / "m.safetensors")
    onnxrt.load_onnx(model, 1)
    cached = onnxrt.exported_path(model)
    assert cached.is_file() and cached.parent == tmp_path / "cache" / "onnx"
    assert not list(cached.parent.glob(".*tmp*"))  # no temporary file left

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnxrt, "export_onnx", no_export)
    onnxrt.load_onnx(model, 1)  # from the cache
    make_tiny_model(model, resolution_m=0.3)  # the model file changes: a new hash, a new export
    assert onnxrt.exported_path(model) != cached
    with pytest.raises(AssertionError, match="exported again"):
        onnxrt.load_onnx(model, 1)


def test_a_damaged_cache_file_is_exported_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GEOUNET_CACHE_DIR", str(tmp_path / "cache"))
    model = make_tiny_model(tmp_path / "m.safetensors")
    cached = onnxrt.exported_path(model)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not an onnx file")
    with caplog.at_level(logging.WARNING, logger="geounet"):
        net = onnxrt.load_onnx(model, 1)
    assert "unreadable" in caplog.text
    x = np.zeros((1, 3, 64, 64), np.float32)
    np.testing.assert_allclose(net(x), _torch_probabilities(model, x), atol=1e-5)
    assert cached.stat().st_size > 1000


def test_an_unwritable_cache_exports_to_a_temporary_file(tmp_path, monkeypatch, caplog):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("GEOUNET_CACHE_DIR", str(tmp_path / "a_file" / "cache"))  # mkdir fails: NotADirectoryError
    model = make_tiny_model(tmp_path / "m.safetensors")
    with caplog.at_level(logging.WARNING, logger="geounet"):
        net = onnxrt.load_onnx(model, 1)
    assert "cannot write the ONNX cache" in caplog.text
    assert not Path(net.source).exists()  # the temporary export is gone once the session has it
    x = np.ones((2, 3, 64, 64), np.float32)
    np.testing.assert_allclose(net(x), _torch_probabilities(model, x), atol=1e-5)


def test_a_bad_model_file_fails_before_any_export(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04junk")
    with pytest.raises(ModelError, match="bad.safetensors"):
        onnxrt.load_onnx(bad, 1)


def test_backend_choice(monkeypatch):
    assert resolve_backend("cpu", "fp32") == "onnx"
    assert resolve_backend("cpu", "bf16") == "torch"  # autocast: torch
    assert resolve_backend("cuda", "bf16") == "torch"
    assert resolve_backend("cuda:1", "fp32") == "torch"
    assert resolve_backend("cpu", "fp32", "torch") == "torch"
    with pytest.raises(ValueError, match="fp32 on the CPU only"):
        resolve_backend("cuda", "fp32", "onnx")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend("cpu", "fp32", "tensorrt")
    monkeypatch.setattr(hardware, "onnxruntime_available", lambda: False)
    assert resolve_backend("cpu", "fp32") == "torch"  # onnxruntime not installed: torch, silently
    with pytest.raises(ValueError, match="needs onnxruntime"):
        resolve_backend("cpu", "fp32", "onnx")
