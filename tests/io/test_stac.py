"""stac: item.json for an output folder (footprint in lon/lat, projection, assets with roles)."""

from __future__ import annotations

import json

import numpy as np
import pystac
import rasterio

from geounet.io.run_record import InputRecord, ModelRecord, RunRecord
from geounet.io.stac import finish_scene_folder
from geounet.models.card import ClassInfo, ModelCard
from tests.helpers import write_scene


def _card() -> ModelCard:
    return ModelCard(
        name="t",
        classes=[ClassInfo("background", (0, 0, 0), "background"), ClassInfo("building", (230, 60, 60), "building")],
        bands=[1, 2, 3],
        band_names=["red", "green", "blue"],
        mean=[0.5] * 3,
        std=[0.25] * 3,
        scale=255.0,
        input_dtypes=["uint8"],
        resolution_m=0.15,
        tile_size=128,
        overlap=32,
    )


def test_item_lists_outputs_with_roles_and_georeference(tmp_path):
    scene = write_scene(
        tmp_path / "scene.tif",
        np.full((3, 64, 96), 90, np.uint8),
        crs="EPSG:32633",
        res=0.5,
        origin=(500000.0, 5800000.0),
    )
    folder = tmp_path / ".scene.partial-1"
    folder.mkdir()
    with rasterio.open(scene) as src:
        prof = dict(driver="GTiff", width=96, height=64, count=1, dtype="uint8", crs=src.crs, transform=src.transform)
    with rasterio.open(folder / "classes.tif", "w", **prof) as dst:
        dst.write(np.ones((64, 96), np.uint8), 1)
    (folder / "scores.tif").write_bytes(b"x")
    (folder / "features.gpkg").write_bytes(b"x")
    record = RunRecord(
        geounet_version="0",
        created_utc="2025-01-02T03:04:05+00:00",
        input=InputRecord(str(scene), 1, "cd", "EPSG:32633", [0.5, 0, 500000, 0, -0.5, 5800000], 96, 64, 0.5),
        model=ModelRecord("m", "t", "ab", ["background", "building"], 0.15),
        settings={},
        working_grid={},
        tiles={},
        vector=None,
        timings={},
    )
    finish_scene_folder(folder, "scene", scene, _card(), record)

    assert set(record.outputs) == {"quicklook.png", "item.json"}
    raw = json.loads((folder / "item.json").read_text())
    item = pystac.Item.from_dict(raw)
    assert item.id == "scene"
    roles = {k: (a.href, a.roles) for k, a in item.assets.items()}
    assert roles == {
        "scores": ("./scores.tif", ["data"]),
        "classes": ("./classes.tif", ["data"]),
        "features": ("./features.gpkg", ["data"]),
        "quicklook": ("./quicklook.png", ["overview"]),
        "run": ("./run.json", ["metadata"]),
    }
    # UTM 33N, E 500000 is the zone's central meridian (15 E); N 5.8e6 is about 52.3 N
    lon0, lat0, lon1, lat1 = item.bbox
    assert 14.99 < lon0 < 15.0 < lon1 < 15.01 and 52.3 < lat0 < lat1 < 52.4
    assert raw["properties"]["proj:code"] == "EPSG:32633"
    assert raw["properties"]["proj:shape"] == [64, 96]
    assert raw["properties"]["geounet:datetime_source"] == "processing"
    assert raw["properties"]["geounet:model_sha256"] == "ab" and raw["properties"]["gsd"] == 0.5
    assert [c["name"] for c in raw["assets"]["classes"]["classification:classes"]] == ["background", "building"]
    assert not list(folder.glob(".item.json*"))
