"""Areas of interest (``--aoi``, ``--bbox``): only the tiles meeting the area are read and run, nodata outside it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.features import geometry_mask
from scipy import ndimage

import geounet.engine.tiles as tiles_module
from geounet.engine.predict import predict_batch
from geounet.engine.settings import PredictSettings
from geounet.io.aoi import area_of_interest, to_pixels
from tests.helpers import DEMO_SCENE, error_lines, invoke

FAST = {"tile_size": 96, "overlap": 32, "chunk_pixels": 64, "workers": 1, "quiet": True}
# the demo scene spans lon 32.58957..32.59008, lat 0.34830..0.34881 (EPSG:3857); this covers its north-west part
AREA = shapely.Polygon([(32.58950, 0.34890), (32.58985, 0.34890), (32.58975, 0.34855), (32.58950, 0.34858)])
BBOX = (32.58950, 0.34850, 32.58985, 0.34890)


def run(out: Path, model: Path, **kw):
    [rep] = predict_batch([DEMO_SCENE], out, model, PredictSettings(**(FAST | kw)))
    assert rep.ok, rep.error
    return rep, Path(rep.out_dir)


def read(path: Path, band: int | None = None) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read() if band is None else ds.read(band)


def inside(area_4326) -> np.ndarray:
    """The scene's pixels whose centre is inside the area (an independent rasterization)."""
    with rasterio.open(DEMO_SCENE) as src:
        geom = gpd.GeoSeries([shapely.segmentize(area_4326, 1e-6)], crs="EPSG:4326").to_crs(src.crs)
        return ~geometry_mask(geom, out_shape=src.shape, transform=src.transform)


def features(folder: Path) -> np.ndarray:
    """Every feature's geometry, all layers of features.gpkg."""
    path = folder / "features.gpkg"
    layers = [name for name, kind in pyogrio.list_layers(path) if kind is not None]
    assert layers
    return np.concatenate([np.asarray(gpd.read_file(path, layer=n).geometry.values, dtype=object) for n in layers])


@pytest.fixture(scope="module")
def full(tiny_model, tmp_path_factory):
    """The whole demo scene, per grid kind (resampled to the model, or on the scene's own grid)."""
    out = tmp_path_factory.mktemp("full")
    return {
        "resampled": run(out / "r", tiny_model)[1],
        "scene": run(out / "s", tiny_model, resample_tolerance=10.0, tile_size=128)[1],
    }


@pytest.mark.parametrize("grid", ["resampled", "scene"])
def test_aoi_file_in_another_crs_runs_only_its_tiles(grid, full, tiny_model, tmp_path, monkeypatch):
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[AREA], crs="EPSG:4326").to_file(aoi)
    reads: list = []
    real = tiles_module.read_box

    def spy(ds, bands, box, shape):
        reads.append(box)
        return real(ds, bands, box, shape)

    monkeypatch.setattr(tiles_module, "read_box", spy)
    kw = {"resample_tolerance": 10.0, "tile_size": 128} if grid == "scene" else {}
    rep, out = run(tmp_path / "out", tiny_model, aoi=str(aoi), **kw)
    record = json.loads((out / "run.json").read_text())
    whole = json.loads((full[grid] / "run.json").read_text())
    assert record["settings"]["aoi"] == str(aoi)
    t = record["tiles"]
    assert 0 < t["run"] < whole["tiles"]["run"] and t["skipped_aoi"] > 0
    assert t["chunks_run"] < t["chunks"] and len(reads) == t["chunks_run"]
    # every window read meets the area (in scene pixels, widened by the resampling's reach)
    with rasterio.open(DEMO_SCENE) as src:
        area_px = to_pixels(area_of_interest(str(aoi)).in_crs(src.crs.to_wkt()), src.transform)
        scale = src.width / record["working_grid"]["width"]
    for box in reads:
        window = shapely.box(box.col0 * scale, box.row0 * scale, box.col1 * scale, box.row1 * scale)
        assert window.intersects(area_px.buffer(4)), box
    # nodata outside the area; the whole scene's classes inside it (same tiles, same grid)
    classes, reference = read(out / "classes.tif", 1), read(full[grid] / "classes.tif", 1)
    mask = inside(AREA)
    assert (classes[~ndimage.binary_dilation(mask, iterations=1)] == 255).all()
    assert (read(out / "scores.tif")[:, ~ndimage.binary_dilation(mask, iterations=1)] == 255).all()
    core = ndimage.binary_erosion(mask, iterations=2)
    np.testing.assert_array_equal(classes[core], reference[core])
    assert (classes[core] != 255).any()
    # every feature lies within the area
    with rasterio.open(DEMO_SCENE) as src:
        area = gpd.GeoSeries([AREA], crs="EPSG:4326").to_crs(src.crs).iloc[0]
    polys = features(out)
    assert len(polys) and shapely.area(polys).sum() < shapely.area(features(full[grid])).sum()
    assert shapely.within(polys, area.buffer(1e-6)).all()


def test_bbox_on_the_command_line(full, tiny_model, tmp_path):
    res = invoke(
        "predict", DEMO_SCENE, "--out", tmp_path / "out", "--model", tiny_model, "-q",
        "--tile-size", 96, "--overlap", 32, "--bbox", ",".join(map(str, BBOX)), "--bbox-crs", "EPSG:4326",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "out" / "kampala_demo"
    record = json.loads((out / "run.json").read_text())
    assert record["settings"]["bbox"] == list(BBOX) and record["tiles"]["skipped_aoi"] > 0
    mask = inside(shapely.box(*BBOX))
    classes = read(out / "classes.tif", 1)
    assert (classes[~ndimage.binary_dilation(mask, iterations=1)] == 255).all()
    assert (classes[ndimage.binary_erosion(mask, iterations=2)] != 255).any()
    with rasterio.open(DEMO_SCENE) as src:
        area = gpd.GeoSeries([shapely.box(*BBOX)], crs="EPSG:4326").to_crs(src.crs).iloc[0]
    assert shapely.within(features(out), area.buffer(1e-6)).all()


def test_an_area_missing_the_scene_gives_all_nodata_and_one_warning(tiny_model, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="geounet"):
        rep, out = run(tmp_path / "out", tiny_model, bbox=(10.0, 10.0, 10.001, 10.001))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "area of interest does not meet the scene" in warnings[0]
    assert rep.tiles["run"] == 0 and rep.tiles["skipped_aoi"] == rep.tiles["total"]
    assert (read(out / "classes.tif") == 255).all() and (read(out / "scores.tif") == 255).all()
    assert len(features(out)) == 0


def test_an_aoi_file_without_polygons_is_one_error_and_nothing_written(tiny_model, tmp_path):
    points = tmp_path / "points.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.Point(32.5898, 0.3486)], crs="EPSG:4326").to_file(points)
    res = invoke("predict", DEMO_SCENE, "--out", tmp_path / "out", "--model", tiny_model, "--aoi", points)
    assert res.exit_code == 2
    assert error_lines(res) == [f"error: {points}: no polygon in it"]
    assert not (tmp_path / "out").exists()


def test_aoi_and_bbox_together_or_a_bad_bbox_are_refused(tiny_model, tmp_path):
    res = invoke("predict", DEMO_SCENE, "--out", tmp_path / "out", "--model", tiny_model, "--bbox", "1,2,3")
    assert res.exit_code == 2 and len(error_lines(res)) == 1 and "--bbox" in error_lines(res)[0]
    res = invoke("predict", DEMO_SCENE, "--out", tmp_path / "out", "--model", tiny_model, "--bbox", "3,0,1,1")
    assert res.exit_code == 2 and "minx < maxx" in error_lines(res)[0]
    assert not (tmp_path / "out").exists()
