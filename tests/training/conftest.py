"""Fixtures of the training tests: a tiny synthetic scene with roofs, its training config, file writers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from shapely.geometry import Polygon, box, mapping


@dataclass
class RoofScene:
    """A 128 x 128 px RGB scene at 0.5 m/px (64 m square) in UTM 36N with bright "roofs", and their outlines.

    ``squares`` are the roofs as ``(x0, y0, x1, y1)`` metres from the scene's top-left corner
    ``origin`` (CRS metres); the 4 leftmost pixel columns are outside the scene's mask.
    """

    image: Path
    labels: Path
    crs: str = "EPSG:32636"
    origin: tuple[float, float] = (450000.0, 40064.0)
    squares: tuple[tuple[int, int, int, int], ...] = (
        (8, 8, 24, 24),
        (40, 8, 56, 20),
        (8, 40, 20, 60),
        (36, 36, 56, 56),
    )

    def box(self, x0: float, y0: float, x1: float, y1: float) -> Polygon:
        """A rectangle given in metres from the top-left corner (y down), in the scene's CRS."""
        return box(self.origin[0] + x0, self.origin[1] - y1, self.origin[0] + x1, self.origin[1] - y0)


@pytest.fixture()
def write_geojson() -> Callable[..., Path]:
    """``write(path, geoms, props=None, crs_epsg=32636) -> path``: a GeoJSON file (``crs_epsg=None``: no crs member)."""

    def write(path: Path, geoms: list, props: list[dict] | None = None, crs_epsg: int | None = 32636) -> Path:
        features = [
            {"type": "Feature", "properties": (props or [{}] * len(geoms))[i], "geometry": mapping(g)}
            for i, g in enumerate(geoms)
        ]
        doc: dict = {"type": "FeatureCollection", "features": features}
        if crs_epsg:
            doc["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{crs_epsg}"}}
        path.write_text(json.dumps(doc))
        return path

    return write


@pytest.fixture()
def roof_scene(tmp_path: Path, write_geojson) -> RoofScene:
    scene = RoofScene(tmp_path / "scene.tif", tmp_path / "roofs.geojson")
    rng = np.random.default_rng(1)
    img = rng.integers(40, 90, size=(3, 128, 128), dtype=np.uint8)
    for x0, y0, x1, y1 in scene.squares:
        img[0, int(y0 * 2) : int(y1 * 2), int(x0 * 2) : int(x1 * 2)] = 220
    mask = np.full((128, 128), 255, np.uint8)
    mask[:, :4] = 0  # outside the footprint: must be ignored
    profile = dict(
        driver="GTiff",
        width=128,
        height=128,
        count=3,
        dtype="uint8",
        crs=scene.crs,
        transform=Affine(0.5, 0, scene.origin[0], 0, -0.5, scene.origin[1]),
    )
    with rasterio.open(scene.image, "w", **profile) as ds:
        ds.write(img)
        ds.write_mask(mask)
    write_geojson(scene.labels, [scene.box(*s) for s in scene.squares], [{"kind": "roof"}] * len(scene.squares))
    return scene


@pytest.fixture()
def train_raw(roof_scene: RoofScene, tmp_path: Path) -> dict:
    """A training config (as parsed YAML) for the roof scene: top 75 % to train, the rest to validate.

    A tiny network and schedule (one epoch of two steps); the model goes to ``tmp_path / "m.safetensors"``.
    """
    image, labels = str(roof_scene.image), str(roof_scene.labels)
    return {
        "name": "tiny",
        "output": str(tmp_path / "m.safetensors"),
        "classes": [
            {"name": "background", "kind": "background", "color": [0, 0, 0]},
            {"name": "building", "kind": "building", "color": [230, 60, 60]},
        ],
        "data": {
            "train": [{"image": image, "labels": labels, "window": [0, 0, 1, 0.75]}],
            "val": [{"image": image, "labels": labels, "window": [0, 0.75, 1, 1]}],
            "resolution_m": 1.0,
        },
        "labels": {"class_field": "kind", "value_map": {"roof": "building"}},
        "model": {
            "encoder": "resnet18",
            "encoder_depth": 3,
            "decoder_channels": [16, 8, 8],
            "tile_size": 64,
            "overlap": 16,
        },
        "train": {
            "epochs": 1,
            "steps_per_epoch": 2,
            "batch_size": 2,
            "chip_size": 32,
            "warmup_steps": 1,
            "lr": 0.01,
            "threads": 2,
            "ema_decay": 0.5,
        },
        "augment": {"saturation": 0.3, "hue": 0.05, "grayscale": 0.2},
        "card": {"licence": "test data", "data": "synthetic"},
    }


@pytest.fixture()
def write_config(tmp_path: Path) -> Callable[[dict], Path]:
    """``write(raw) -> path``: ``raw`` as YAML in ``tmp_path / "train.yaml"`` (overwritten by each call)."""

    def write(raw: dict) -> Path:
        path = tmp_path / "train.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write
