"""int8: a model's quantized ONNX file, found by the model's sha256, run by --precision int8, chosen by auto."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio

from geounet.compute.grid import TileGrid
from geounet.engine.settings import PredictSettings
from geounet.errors import GeounetError, ModelError
from geounet.models import hardware
from geounet.models import onnx as onnxrt
from geounet.models.card import normalise, read_card
from geounet.models.hardware import resolve_backend, resolve_precision
from geounet.models.quantize import (
    Int8Record,
    find_int8,
    int8_paths,
    quantize_model,
    require_int8,
    write_int8,
)
from tests.helpers import error_lines, invoke, make_tiny_model, write_scene


def _image(seed: int, size: int) -> np.ndarray:
    """An RGB uint8 image with structure (blocks of colour and noise), not flat noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (3, size // 16, size // 16)).repeat(16, 1).repeat(16, 2)
    return np.clip(coarse + rng.normal(0, 20, (3, size, size)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    """A tiny random model with an int8 version beside it, calibrated on 6 synthetic tiles."""
    folder = tmp_path_factory.mktemp("int8")
    model = make_tiny_model(folder / "tiny.safetensors")
    card = read_card(model)
    onnxrt.load_onnx(model, 1)  # the fp32 export, cached
    tiles = [normalise(_image(seed, card.tile_size), card) for seed in range(6)]
    int8_onnx, _ = int8_paths(model)
    calibration = quantize_model(onnxrt.exported_path(model), int8_onnx, tiles)
    write_int8(model, int8_onnx, calibration)
    return model


def test_int8_model_is_quantized_and_close_to_fp32(quantized):
    record = Int8Record.read(int8_paths(quantized)[1])
    assert record.calibration["tiles"] == 6 and record.calibration["format"] == "QDQ"
    graph = onnx.load(str(int8_paths(quantized)[0])).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights  # the convolutions' weights are stored as int8

    card = read_card(quantized)
    x = normalise(_image(99, 128), card)[None]  # not a calibration tile
    fp32 = onnxrt.load_onnx(quantized, 1)(x)
    int8 = onnxrt.load_onnx(quantized, 1, "int8")(x)
    assert int8.shape == fp32.shape
    spread = float(fp32[:, 1].std())
    assert spread > 0.01  # the random model's probabilities vary, so closeness means something
    diff = np.abs(int8 - fp32)
    assert float(diff.mean()) < 0.2 * spread, (float(diff.mean()), spread)
    assert not np.array_equal(int8, fp32)  # it really ran another network


def test_predict_int8_end_to_end_gives_fp32_probabilities(quantized, tmp_path):
    scene = write_scene(tmp_path / "scene.tif", _image(7, 320))
    runs = {}
    for precision in ("fp32", "int8"):
        result = invoke(
            "predict", scene, "--out", tmp_path / precision, "--model", quantized, "--no-vector",
            "--precision", precision, "--device", "cpu",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        out = tmp_path / precision / "scene"
        settings = json.loads((out / "run.json").read_text())["settings"]
        assert settings["precision"] == precision and settings["backend"] == "onnx"
        with rasterio.open(out / "scores.tif") as ds:
            runs[precision] = ds.read().astype(np.float32) / 254
    assert runs["fp32"][1].std() > 0.01
    diff = np.abs(runs["int8"] - runs["fp32"])
    assert float(diff.mean()) < 0.2 * float(runs["fp32"][1].std())


def test_int8_of_another_model_version_is_refused(quantized, tmp_path):
    model = tmp_path / "tiny.safetensors"
    for path in (quantized, *int8_paths(quantized)):
        shutil.copy(path, tmp_path / path.name)
    assert find_int8(model) is not None
    make_tiny_model(model, resolution_m=0.3)  # retrained: a new sha256
    assert find_int8(model) is None
    with pytest.raises(ModelError, match="another version of this model"):
        require_int8(model)
    result = invoke("predict", write_scene(tmp_path / "s.tif", _image(1, 96)), "--out", tmp_path / "o",
                    "--model", model, "--precision", "int8", "--no-vector")  # fmt: skip
    assert result.exit_code != 0
    [line] = error_lines(result)
    assert "no int8 version" in line and "another version" in line


def test_damaged_int8_file_is_refused(quantized, tmp_path):
    model = tmp_path / "tiny.safetensors"
    for path in (quantized, *int8_paths(quantized)):
        shutil.copy(path, tmp_path / path.name)
    int8_paths(model)[0].write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="does not match its record"):
        require_int8(model)


def test_no_int8_version_is_one_line(tiny_model, tmp_path):
    scene = write_scene(tmp_path / "s.tif", _image(1, 96))
    result = invoke("predict", scene, "--out", tmp_path / "o", "--model", tiny_model, "--precision", "int8")
    assert result.exit_code != 0
    [line] = error_lines(result)
    assert line == f"error: {tiny_model}: no int8 version (make one with geounet quantize MODEL SCENE...)"


def test_int8_runs_on_onnx_runtime_on_the_cpu_only():
    assert resolve_backend("cpu", "int8", "auto") == "onnx"
    assert resolve_backend("cpu", "int8", "onnx") == "onnx"
    with pytest.raises(ValueError, match="ONNX Runtime only"):
        resolve_backend("cpu", "int8", "torch")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("cuda", "int8", "auto")


def _record(changes: dict[str, float], cpu_fp32: float = 2.0, cpu_int8: float = 1.0) -> Int8Record:
    fp32 = {k: 0.7 for k in changes}
    return Int8Record(
        "m.safetensors", "a" * 64, "b" * 64, "1.0", {},
        {
            "evaluate": {"fp32_iou": fp32, "int8_iou": {k: 0.7 + c for k, c in changes.items()}},
            "speed": {"cpu_fp32_s": cpu_fp32, "cpu_int8_s": cpu_int8},
        },
    )  # fmt: skip


def test_auto_ok_needs_every_iou_within_001_and_a_speed_up():
    assert _record({"background": -0.002, "building": -0.009}).auto_ok()
    assert not _record({"background": 0.0, "building": -0.011}).auto_ok()
    assert not _record({"building": 0.02}).auto_ok()  # a change either way
    assert not _record({"building": 0.0}, cpu_fp32=1.0, cpu_int8=1.1).auto_ok()  # slower
    assert not Int8Record("m", "a", "b", "1", {}, {}).auto_ok()  # not measured


@pytest.mark.parametrize(
    ("flags", "int8_ok", "expected"),
    [
        ({"avx2", "avx512_vnni"}, True, "int8"),
        ({"avx2", "avx_vnni"}, True, "int8"),
        ({"avx2", "avx512f"}, True, "fp32"),  # no VNNI
        ({"avx2", "avx512_vnni"}, False, "fp32"),  # the record does not allow it
        ({"avx512_vnni", "amx_bf16", "amx_int8"}, True, "int8"),  # AMX: int8 measured faster than bf16
        ({"avx512_vnni", "amx_bf16"}, False, "fp32"),
    ],
)
def test_auto_precision_on_the_cpu(monkeypatch, flags, int8_ok, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: set(flags))
    assert resolve_precision("cpu", "auto", int8_ok) == expected
    assert resolve_precision("cpu", "fp32", int8_ok) == "fp32"


def _with_record(quantized: Path, tmp_path: Path, changes: dict[str, float]) -> Path:
    tmp_path.mkdir()
    model = tmp_path / "tiny.safetensors"
    for path in (quantized, *int8_paths(quantized)):
        shutil.copy(path, tmp_path / path.name)
    record = Int8Record.read(int8_paths(model)[1])
    record.measured = _record(changes).measured
    int8_paths(model)[1].write_text(record.to_json())
    return model


def test_auto_settles_on_int8_from_the_record_and_the_cpu(quantized, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    good = _with_record(quantized, tmp_path / "good", {"background": 0.0, "building": -0.004})
    bad = _with_record(quantized, tmp_path / "bad", {"background": 0.0, "building": -0.03})
    card = read_card(good)
    s = PredictSettings(device="cpu").resolved(card, good)
    assert (s.precision, s.backend) == ("int8", "onnx")
    assert PredictSettings(device="cpu").resolved(card, bad).precision == "fp32"
    assert PredictSettings(device="cpu").resolved(card).precision == "fp32"  # no model file: no int8
    assert PredictSettings(device="cpu", backend="torch").resolved(card, good).precision == "fp32"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2"})
    assert PredictSettings(device="cpu").resolved(card, good).precision == "fp32"
    with pytest.raises(GeounetError, match="ONNX Runtime only"):
        PredictSettings(device="cpu", precision="int8", backend="torch").resolved(card, good)


def test_quantize_command_calibrates_on_the_scenes_tiles_and_records_them(tmp_path):
    model = make_tiny_model(tmp_path / "m.safetensors")
    scene = write_scene(tmp_path / "train.tif", _image(3, 320))  # 0.15 m, the model's: no resampling
    result = invoke("quantize", model, scene, "--max-tiles", 4, "--speed-rounds", 1)
    assert result.exit_code == 0, result.output
    onnx_path, record = require_int8(model)
    tiles = TileGrid(320, 320, 128, 32, 1).n_tiles  # the tiny model's 128/32 tiles, as predict lays them
    assert tiles > 4 and record.calibration["tiles"] == 4 and record.calibration["tiles_available"] == tiles
    assert record.calibration["data"] == "train.tif" and record.measured["speed"]["tiles"] == 4
    assert not record.auto_ok()  # no accuracy measured: auto keeps fp32
    assert "auto precision takes int8 on VNNI CPUs: no" in result.output
