"""Fixtures of the batch tests: real-pixel scenes, a clean reference run, a config writer, output checks.

Scenes are real pixels: 256x256 crops of the Kampala demo scene (and of kampala_b when
../shared/data is there), run with the tiny random model (mechanics, not accuracy).
The scenes and the clean run are made once for the whole package of batch tests.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyogrio
import pytest
import rasterio
from rasterio.windows import Window

from geounet.batch.config import load_config
from geounet.batch.run import run_pipeline
from tests.helpers import DEMO_SCENE, SHARED

OUTPUTS = ("scores.tif", "classes.tif", "features.gpkg", "run.json", "item.json", "quicklook.png")


def _crop(src_path: Path, dst: Path, row: int, col: int, size: int = 256) -> Path:
    """A real-pixel crop (with its mask) of a scene."""
    with rasterio.open(src_path) as src:
        win = Window(col, row, size, size)
        data, mask = src.read(window=win), src.dataset_mask(window=win)
        prof = src.profile | {
            "width": size,
            "height": size,
            "transform": src.window_transform(win),
            "driver": "GTiff",
            "tiled": False,
        }
        prof.pop("blockxsize", None), prof.pop("blockysize", None)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(dst, "w", **prof) as out:
        out.write(data)
        out.write_mask(mask)
    return dst


def _write_config(path: Path, model: Path, inputs: list, out: Path, **extra: Any) -> Path:
    cfg = {
        "model": str(model),
        "inputs": [str(p) for p in inputs],
        "out": str(out),
        "tiling": {"batch_size": 8},
        "workers": 1,
        **extra,
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def _fingerprint(folder: Path) -> dict:
    """What must be equal between two runs: raster arrays, feature counts and areas (not timestamps)."""
    out = {}
    for name in ("scores.tif", "classes.tif"):
        with rasterio.open(folder / name) as ds:
            out[name] = (ds.read().tobytes(), ds.crs.to_string(), tuple(ds.transform))
    for layer, _ in pyogrio.list_layers(folder / "features.gpkg"):
        if layer == "layer_styles":
            continue
        df = pyogrio.read_dataframe(folder / "features.gpkg", layer=layer)
        out[layer] = (len(df), round(float(df.geometry.area.sum()), 6))
    return out


def _assert_complete(folder: Path) -> None:
    for name in OUTPUTS:
        assert (folder / name).is_file(), name
    _fingerprint(folder)  # every file opens and reads fully
    json.loads((folder / "item.json").read_text())


@pytest.fixture(scope="session")
def write_config() -> Callable[..., Path]:
    """``write(path, model, inputs, out, **extra) -> path``: a pipeline config (batch size 8, one worker)."""
    return _write_config


@pytest.fixture(scope="session")
def fingerprint() -> Callable[[Path], dict]:
    """``fingerprint(folder)``: what must be equal between two runs (raster arrays, feature counts and areas)."""
    return _fingerprint


@pytest.fixture(scope="session")
def assert_complete() -> Callable[[Path], None]:
    """``assert_complete(folder)``: every output of a scene is there and reads fully."""
    return _assert_complete


@pytest.fixture(scope="package")
def scenes(tmp_path_factory) -> dict[str, Path]:
    """Crops ``a``, ``b`` of the demo scene, ``c`` of kampala_b (with shared data), a truncated ``corrupt``."""
    d = tmp_path_factory.mktemp("scenes")
    out = {
        "a": _crop(DEMO_SCENE, d / "kampala_a256.tif", 0, 0),
        "b": _crop(DEMO_SCENE, d / "kampala_b256.tif", 400, 300),
    }
    kb = SHARED / "kampala" / "kampala_b.tif"
    if kb.exists():
        out["c"] = _crop(kb, d / "kampala_shared256.tif", 300, 300)
    bad = d / "corrupt.tif"
    bad.write_bytes(out["a"].read_bytes()[: out["a"].stat().st_size // 3])  # truncated GeoTIFF
    out["corrupt"] = bad
    return out


@pytest.fixture(scope="package")
def clean(scenes, tiny_model, tmp_path_factory) -> Path:
    """A clean, uninterrupted run over the good scenes: the reference outputs."""
    d = tmp_path_factory.mktemp("clean")
    cfg = _write_config(d / "p.yaml", tiny_model, [p for k, p in scenes.items() if k != "corrupt"], d / "out")
    summary = run_pipeline(load_config(cfg), quiet=True)
    assert summary.ok, summary.lines()
    return d / "out"


@pytest.fixture()
def damage_config(tmp_path: Path, default_model: Path) -> Path:
    """A ``task: damage`` config over copies of the demo scene (pre.tif, post.tif), output ``o``, on the CPU."""
    shutil.copy(DEMO_SCENE, tmp_path / "pre.tif")
    shutil.copy(DEMO_SCENE, tmp_path / "post.tif")
    cfg = tmp_path / "d.yaml"
    cfg.write_text(
        f"task: damage\nmodel: {default_model}\n"
        f"inputs: {{pre: pre.tif, post: [post.tif]}}\nout: o\ndevice: cpu\ndamage: {{halo: 32}}\n"
    )
    return cfg
