"""``--vector-format``: the GeoPackage's layers as FlatGeobuf files, listed in run.json and item.json."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from affine import Affine

from geounet.batch.state import requested_settings, up_to_date
from geounet.compute.postprocess import ClassRules
from geounet.engine.executors import ThreadedExecutor
from geounet.engine.predict import predict_batch
from geounet.engine.settings import PredictSettings
from geounet.engine.vector_stage import vectorize_scene
from geounet.models.card import read_card
from tests.engine.test_vector_stage import write_classes
from tests.helpers import DEMO_SCENE, error_lines, invoke, make_card

RAW = {"building": ClassRules(), "road": ClassRules(spur_m=5.0), "landcover": ClassRules()}


def assert_same_layer(gpkg: Path, fgb: Path, layer: str) -> None:
    """Same rows, attributes (names, order, values), CRS and geometry (areas) in both files."""
    a = gpd.read_file(gpkg, layer=layer)
    b = gpd.read_file(fgb)
    assert len(a) == len(b), layer
    assert list(a.columns) == list(b.columns), layer
    assert a.crs == b.crs, layer
    key = [c for c in a.columns if c != "geometry"]
    a = a.sort_values(key, kind="stable").reset_index(drop=True)
    b = b.sort_values(key, kind="stable").reset_index(drop=True)
    for col in key:
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=f"{layer}.{col}")
    np.testing.assert_allclose(a.area.to_numpy(), b.area.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(a.length.to_numpy(), b.length.to_numpy(), rtol=1e-9)
    assert pyogrio.read_info(fgb)["geometry_type"] == pyogrio.read_info(gpkg, layer=layer)["geometry_type"]
    assert pyogrio.read_info(fgb)["capabilities"]["fast_spatial_filter"], "no spatial index"


def test_every_layer_and_its_centerlines_become_one_flatgeobuf_each(tmp_path):
    classes = np.zeros((400, 600), np.uint8)
    classes[50:90, 50:110] = 1  # building
    classes[200:214, 20:580] = 2  # road
    classes[300:400, 300:600] = 3  # forest
    path = write_classes(tmp_path / "classes.tif", classes, "EPSG:32615", Affine(0.5, 0, 400000, 0, -0.5, 4100000))
    c = make_card(
        ("building", "building", (230, 60, 60)), ("road", "road", (250, 200, 0)), ("forest", "landcover", (20, 120, 40))
    )
    (tmp_path / "g").mkdir()
    (tmp_path / "f").mkdir()
    executor = ThreadedExecutor(2)
    gpkg = tmp_path / "g" / "features.gpkg"
    ref = vectorize_scene(path, None, gpkg, c, executor, rules=RAW, block=128)
    info = vectorize_scene(path, None, tmp_path / "f" / "features.gpkg", c, executor, rules=RAW, block=128, fmt="fgb")
    layers = ("buildings", "roads", "landcover", "road_centerlines")
    assert ref["format"] == "gpkg" and ref["files"] == {"features.gpkg": ref["layers"]}
    assert info["format"] == "fgb" and info["layers"] == ref["layers"]
    assert info["files"] == {f"features.{n}.fgb": {n: ref["layers"][n]} for n in layers}
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == sorted(info["files"])  # no GeoPackage left
    for n in layers:
        assert_same_layer(gpkg, tmp_path / "f" / f"features.{n}.fgb", n)
        assert gpd.read_file(tmp_path / "f" / f"features.{n}.fgb").crs == "EPSG:32615"


def test_an_empty_layer_is_a_flatgeobuf_with_its_schema(tmp_path):
    path = write_classes(
        tmp_path / "classes.tif", np.zeros((64, 64), np.uint8), "EPSG:32615", Affine(0.5, 0, 4e5, 0, -0.5, 4.1e6)
    )
    c = make_card(("building", "building", (230, 60, 60)))
    info = vectorize_scene(path, None, tmp_path / "features.gpkg", c, ThreadedExecutor(1), fmt="fgb")
    assert info["files"] == {"features.buildings.fgb": {"buildings": 0}}
    empty = gpd.read_file(tmp_path / "features.buildings.fgb")
    assert len(empty) == 0 and list(empty.columns) == ["class", "score", "area_m2", "perimeter_m", "geometry"]


@pytest.fixture(scope="module")
def demo_runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The demo scene predicted with the tiny model, once per vector format: format -> scene folder."""
    out = {}
    for fmt in ("gpkg", "fgb"):
        root = tmp_path_factory.mktemp(fmt)
        [rep] = predict_batch([DEMO_SCENE], root, tiny_model, PredictSettings(quiet=True, vector_format=fmt))
        assert rep.ok, rep.error
        out[fmt] = root / DEMO_SCENE.stem
    return out


def test_demo_scene_in_flatgeobuf_has_the_geopackages_features(demo_runs):
    gpkg, fgb = demo_runs["gpkg"] / "features.gpkg", demo_runs["fgb"] / "features.buildings.fgb"
    assert sorted(p.name for p in demo_runs["fgb"].iterdir()) == [
        "classes.tif",
        "features.buildings.fgb",
        "item.json",
        "quicklook.png",
        "run.json",
        "scores.tif",
    ]
    assert len(gpd.read_file(gpkg, layer="buildings")) > 0
    assert_same_layer(gpkg, fgb, "buildings")
    assert gpd.read_file(fgb).crs == gpd.read_file(gpkg, layer="buildings").crs
    run = json.loads((demo_runs["fgb"] / "run.json").read_text())
    assert run["settings"]["vector_format"] == "fgb" and run["vector"]["format"] == "fgb"
    n = run["vector"]["layers"]["buildings"]
    assert run["outputs"]["features.buildings.fgb"] == {"buildings": n} and "features.gpkg" not in run["outputs"]
    assert json.loads((demo_runs["gpkg"] / "run.json").read_text())["outputs"]["features.gpkg"] == {"buildings": n}


def test_item_json_lists_each_vector_file_with_its_media_type(demo_runs):
    fgb_assets = json.loads((demo_runs["fgb"] / "item.json").read_text())["assets"]
    assert fgb_assets["features_buildings"]["href"] == "./features.buildings.fgb"
    assert fgb_assets["features_buildings"]["type"] == "application/vnd.flatgeobuf"
    assert fgb_assets["features_buildings"]["roles"] == ["data"] and "features" not in fgb_assets
    gpkg_assets = json.loads((demo_runs["gpkg"] / "item.json").read_text())["assets"]
    assert gpkg_assets["features"]["type"] == "application/geopackage+sqlite3"
    assert not any(k.startswith("features_") for k in gpkg_assets)
    run = json.loads((demo_runs["fgb"] / "run.json").read_text())
    assert "features_buildings" in run["outputs"]["item.json"]["assets"]


def test_a_change_of_vector_format_makes_the_outputs_out_of_date(demo_runs, tiny_model):
    card = read_card(tiny_model)
    folder = demo_runs["fgb"]
    sha = json.loads((folder / "run.json").read_text())["model"]["sha256"]
    same = up_to_date(folder, DEMO_SCENE, sha, requested_settings(PredictSettings(vector_format="fgb"), card))
    assert same == (True, "")
    ok, why = up_to_date(folder, DEMO_SCENE, sha, requested_settings(PredictSettings(), card))
    assert not ok and why == "settings changed: vector_format 'fgb' -> 'gpkg'"
    (folder / "features.buildings.fgb").unlink()  # a listed layer file missing: incomplete
    ok, why = up_to_date(folder, DEMO_SCENE, sha, requested_settings(PredictSettings(vector_format="fgb"), card))
    assert not ok and "features.buildings.fgb" in why


def test_an_unknown_vector_format_is_refused_with_the_valid_ones(tiny_model, tmp_path):
    result = invoke("predict", DEMO_SCENE, "--out", tmp_path / "o", "--model", tiny_model, "--vector-format", "shp")
    assert result.exit_code != 0
    assert error_lines(result)[0] == "error: --vector-format: must be one of gpkg, fgb, parquet, got 'shp'"
    assert not (tmp_path / "o" / DEMO_SCENE.stem).exists()


def test_every_layer_becomes_one_geoparquet_file_each(tmp_path):
    """GeoParquet 1.1: same rows, attributes and CRS as the GeoPackage layer, a bbox covering column."""
    import pyarrow.parquet as pq

    classes = np.zeros((400, 600), np.uint8)
    classes[50:90, 50:110] = 1  # building
    classes[200:214, 20:580] = 2  # road
    path = write_classes(tmp_path / "classes.tif", classes, "EPSG:32615", Affine(0.5, 0, 400000, 0, -0.5, 4100000))
    c = make_card(("building", "building", (230, 60, 60)), ("road", "road", (250, 200, 0)))
    (tmp_path / "g").mkdir()
    (tmp_path / "p").mkdir()
    executor = ThreadedExecutor(2)
    gpkg = tmp_path / "g" / "features.gpkg"
    vectorize_scene(path, None, gpkg, c, executor, rules=RAW, block=128)
    info = vectorize_scene(
        path, None, tmp_path / "p" / "features.gpkg", c, executor, rules=RAW, block=128, fmt="parquet"
    )
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(info["files"])
    assert "features.buildings.parquet" in info["files"] and not (tmp_path / "p" / "features.gpkg").exists()
    for name, layers in info["files"].items():
        [(layer, rows)] = layers.items()
        a = gpd.read_file(gpkg, layer=layer)
        b = gpd.read_parquet(tmp_path / "p" / name).drop(columns="bbox", errors="ignore")
        assert len(b) == rows == len(a) and list(a.columns) == list(b.columns) and a.crs == b.crs, name
        np.testing.assert_allclose(np.sort(a.area.to_numpy()), np.sort(b.area.to_numpy()), rtol=1e-9)
        schema = pq.read_schema(tmp_path / "p" / name)
        assert "bbox" in schema.names  # the covering column, in the file
        geo = json.loads(schema.metadata[b"geo"])
        assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
        assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
