"""stac: item.json for an output folder (footprint in lon/lat, projection, assets with roles)."""

from __future__ import annotations

import json

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.warp import transform_bounds, transform_geom

from geounet.io.run_record import InputRecord, ModelRecord, RunRecord
from geounet.io.stac import finish_scene_folder, footprint_and_bbox, write_scene_quicklook
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
    size = write_scene_quicklook(folder, scene, _card())
    assert size is not None
    record.outputs["quicklook.png"] = size
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


# UTM 60S (EPSG:32760): E 818386 / 820517, N 8118000 are about lon 179.99 / -179.99, lat -17.0
@pytest.mark.parametrize(
    "crs, bounds",
    [("EPSG:4326", (179.999, -17.0, 180.001, -16.999)), ("EPSG:32760", (818386.0, 8117950.0, 820517.0, 8118050.0))],
    ids=["lonlat", "utm60"],
)
def test_a_scene_across_the_antimeridian_is_cut_there(crs, bounds):
    from shapely.geometry import shape

    footprint, bbox = footprint_and_bbox(CRS.from_user_input(crs), bounds)
    assert footprint["type"] == "MultiPolygon" and len(footprint["coordinates"]) == 2
    lons = [x for poly in footprint["coordinates"] for ring in poly for x, _ in ring]
    assert min(lons) == -180.0 and max(lons) == 180.0
    west, south, east, north = bbox
    assert 179.98 < west < 180.0 and -180.0 < east < -179.98 and -17.01 < south < north < -16.99
    east_part, west_part = sorted(
        (shape({"type": "Polygon", "coordinates": c}) for c in footprint["coordinates"]), key=lambda p: p.bounds[0]
    )
    assert east_part.bounds[0] == -180.0 and west_part.bounds[2] == 180.0 and east_part.is_valid and west_part.is_valid


def test_a_scene_beyond_180_degrees_is_wrapped_and_a_usual_one_is_unchanged():
    footprint, bbox = footprint_and_bbox(CRS.from_epsg(4326), (180.5, 10.0, 181.0, 10.5))
    assert footprint["type"] == "Polygon" and bbox == pytest.approx([-179.5, 10.0, -179.0, 10.5])
    utm33 = CRS.from_epsg(32633)
    bounds = (500000.0, 5799968.0, 500048.0, 5800000.0)
    ring = [[500000.0, 5799968.0], [500048.0, 5799968.0], [500048.0, 5800000.0], [500000.0, 5800000.0]]
    before = transform_geom(utm33, "EPSG:4326", {"type": "Polygon", "coordinates": [ring + ring[:1]]}, precision=7)
    assert footprint_and_bbox(utm33, bounds) == (
        before,
        list(transform_bounds(utm33, "EPSG:4326", *bounds, densify_pts=21)),
    )
