"""The ``web/`` folder of predict and damage runs: written inside the run, self-contained, facts from run.json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely

from geounet.compute.change import GRADE_COLOURS
from geounet.web.folder import hex_colour
from geounet.web.page import STATIC_FILES
from tests.helpers import DEMO_SCENE, invoke, make_tiny_model


def page_config(web: Path) -> dict:
    """The map's settings written into ``index.html``."""
    m = re.search(r"window\.GEOUNET_MAP = (\{.*?\});</script>", (web / "index.html").read_text(), re.S)
    assert m, "no GEOUNET_MAP in index.html"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_predict_writes_a_self_contained_map_timed_in_run_json(predicted):
    web = predicted / "web"
    run = json.loads((predicted / "run.json").read_text())
    assert run["settings"]["web"] is True and run["timings"]["web_s"] > 0
    assert run["outputs"]["web/index.html"]["bytes"] > 0 and not list(predicted.parent.glob(".*partial*"))
    for name in STATIC_FILES:  # the map library and its licences travel with the map
        assert (web / "static" / name).stat().st_size > 0, name
    assert "BSD" in (web / "static" / "LICENSE.pmtiles.txt").read_text()
    # nothing the page loads is elsewhere: every src/href is a relative path in the folder
    html = (web / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not re.match(r"[a-z]+:", ref) and (web / ref).is_file(), ref
    assert "http" not in (web / "static" / "app.js").read_text()

    cfg = page_config(web)
    assert cfg["title"] == "kampala_demo"  # the output folder's name, not its staging folder's
    facts = dict(cfg["facts"])
    assert facts["scene"] == "kampala_demo.tif" and facts["model"].startswith(run["model"]["name"])
    buildings = gpd.read_file(predicted / "features.gpkg", layer="buildings")
    assert facts["features"] == f"building {len(buildings)}"
    assert [(item["label"], item["count"]) for item in cfg["legend"]] == [("building", len(buildings))]
    [vec] = cfg["vectors"]
    assert (web / vec["file"]).is_file() and vec["colors"]["building"] == "#e63c3c"
    ids = {r["id"] for r in cfg["rasters"]}
    assert ids == {"scene", "classes"}
    for r in cfg["rasters"]:
        z = r["maxzoom"]
        assert list((web / "tiles" / r["id"] / str(z)).rglob("*.*")), r["id"]
    # the map's bounds hold the features' (degrees)
    w, s, e, n = cfg["bounds"]
    fw, fs, fe, fn = buildings.to_crs(4326).total_bounds
    eps = 1e-5  # about a metre: regularised outlines may pass the raster edge by a few centimetres
    assert w <= fw + eps and s <= fs + eps and fe <= e + eps and fn <= n + eps


def test_damage_map_colours_buildings_by_grade_with_the_terms(damaged):
    pair, out = damaged
    web = out / "web"
    cfg = page_config(web)
    run = json.loads((out / "run.json").read_text())
    assert run["timings"]["web_s"] > 0 and "web/index.html" in run["outputs"]
    assert cfg["title"] == f"damage: {out.name}"
    [vec] = cfg["vectors"]
    assert vec["color_by"] == "damage" and vec["colors"]["destroyed"] == hex_colour(GRADE_COLOURS["destroyed"])
    assert {"damage", "damage_score", "presence_drop", "confidence", "change_term"} <= set(vec["fields"])
    assert vec["damage_driver"]["prob_weight"] == pair.settings().prob_weight
    per_grade = run["buildings"]["per_grade"]
    assert {item["label"]: item["count"] for item in cfg["legend"] if item["count"]} == {
        k: v for k, v in per_grade.items() if v
    }
    tiles = pyogrio.read_dataframe(web / vec["file"], layer="buildings")
    graded = gpd.read_file(out / "damage.gpkg", layer="buildings")
    assert dict(zip(tiles["footprint_id"], tiles["damage"])) == dict(zip(graded["footprint_id"], graded["damage"]))
    assert {r["id"]: r["visible"] for r in cfg["rasters"]} == {"pre": False, "post": True}


def test_damage_without_web_leaves_no_stale_map(damaged, tmp_path):
    pair, out = damaged
    again = tmp_path / "out"
    shutil.copytree(out, again)  # a folder with a previous run's map
    result = invoke(
        "damage",
        "--pre",
        pair.folder / "pre.tif",
        "--post",
        pair.folder / "post.tif",
        "--footprints",
        pair.folder / "footprints.gpkg",
        "--model",
        pair.model,
        "--device",
        "cpu",
        "--no-web",
        "--out",
        again,
    )
    assert result.exit_code == 0, result.stderr
    assert not (again / "web").exists()
    assert "web/index.html" not in json.loads((again / "run.json").read_text())["outputs"]


def test_damage_config_web_key_is_checked():
    from geounet.damage.settings import DamageSettings

    settings, problems = DamageSettings.check({"web": False})
    assert settings is not None and settings.web is False and not problems
    assert DamageSettings().web is True  # on unless said
    settings, problems = DamageSettings.check({"web": "yes"})
    assert settings is None and len(problems) == 1 and problems[0].startswith("damage.web: ")


def test_landcover_and_centre_lines_are_coloured_by_the_right_field(tmp_path):
    """Landcover layers hold the class index in ``class`` and its name in ``class_name``; centre lines have neither."""
    from geounet.io.run_record import RunRecord
    from geounet.web.folder import write_scene_web
    from tests.helpers import make_card, write_scene

    card = make_card(("forest", "landcover", (20, 120, 40)), ("road", "road", (250, 200, 30)))
    values = np.zeros((1, 200, 200), np.uint8)
    values[0, :100] = 1
    values[0, 150:160] = 2
    folder = tmp_path / "out"
    folder.mkdir()
    classes = write_scene(folder / "classes.tif", values, res=1.0, nodata=255)
    scene = write_scene(tmp_path / "scene.tif", np.full((1, 200, 200), 90, np.uint8), res=1.0)
    x0, y0 = 500000.0, 5800000.0
    gpd.GeoDataFrame(
        {"class": [1], "class_name": ["forest"], "area_m2": [20000.0], "score": [0.9]},
        geometry=[shapely.box(x0, y0 - 100, x0 + 200, y0)],
        crs="EPSG:32633",
    ).to_file(folder / "features.gpkg", layer="landcover")
    gpd.GeoDataFrame(
        {"length_m": [200.0]}, geometry=[shapely.LineString([(x0, y0 - 155), (x0 + 200, y0 - 155)])], crs="EPSG:32633"
    ).to_file(folder / "features.gpkg", layer="road_centerlines")
    record = {
        "created_utc": "2026-01-01T00:00:00+00:00",
        "input": {"path": str(scene), "width": 200, "height": 200, "ground_resolution_m": 1.0, "crs": "EPSG:32633"},
        "model": {"path": "/models/test.safetensors", "name": "test"},
    }
    assert classes.is_file() and RunRecord  # the record's layout is RunRecord.to_dict()'s (the fields used here)
    summary = write_scene_web(folder, scene, card, record, title="out")
    cfg = page_config(folder / "web")
    by_layer = {v["layer"]: v for v in cfg["vectors"]}
    assert by_layer["landcover"]["color_by"] == "class_name" and by_layer["landcover"]["colors"]["forest"] == "#147828"
    assert by_layer["road_centerlines"]["color_by"] is None
    assert by_layer["road_centerlines"]["fallback_color"] == "#fac81e"  # the road class's colour
    assert dict(cfg["facts"])["features"] == "forest 1"
    assert summary.features == 2


@pytest.mark.parametrize("fmt", ["fgb", "parquet"])
def test_predict_maps_the_one_file_per_layer_formats(tmp_path, fmt):
    from geounet.engine.predict import predict_batch
    from geounet.engine.settings import PredictSettings
    from tests.helpers import DEFAULT_MODEL, DEMO_SCENE

    settings = PredictSettings(web=True, vector_format=fmt, device="cpu", backend="torch", quiet=True)
    [report] = predict_batch([DEMO_SCENE], tmp_path, DEFAULT_MODEL, settings)
    assert report.ok, report.error
    folder = tmp_path / "kampala_demo"
    [vec] = page_config(folder / "web")["vectors"]
    path = folder / f"features.buildings.{fmt}"
    n = len(gpd.read_parquet(path) if fmt == "parquet" else gpd.read_file(path))
    assert (vec["file"], vec["color_by"], vec["label"]) == ("buildings.pmtiles", "class", f"buildings ({n})")
    tiled = pyogrio.read_dataframe(folder / "web" / vec["file"], layer="buildings")  # a feature once per tile it is on
    assert len(set(zip(tiled["area_m2"], tiled["score"]))) == n  # two roofs may share an area, not also a score


def test_predict_web_flag_and_run_config_web_key(tmp_path):
    """``geounet predict --web`` and ``web: true`` in a pipeline config write the map; turning it on reruns."""
    from typer.testing import CliRunner

    from geounet.cli.main import app

    model = make_tiny_model(tmp_path / "tiny.safetensors")
    res = CliRunner().invoke(
        app, ["predict", str(DEMO_SCENE), "--model", str(model), "--out", str(tmp_path / "p"), "--web", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "kampala_demo" / "web" / "index.html").is_file()
    assets = json.loads((tmp_path / "p" / "kampala_demo" / "item.json").read_text())["assets"]
    assert assets["web"]["href"] == "./web/index.html" and assets["web"]["type"] == "text/html"
    cfg = tmp_path / "p.yaml"
    base = {"model": str(model), "inputs": [str(DEMO_SCENE)], "out": str(tmp_path / "r"), "vector": False}
    counts = []
    for web in (False, True, True):
        cfg.write_text(json.dumps(base | {"web": web}))
        res = CliRunner().invoke(app, ["run", str(cfg), "--quiet"])
        assert res.exit_code == 0, res.output
        summary = json.loads(sorted((tmp_path / "r" / "_runs").glob("*.json"))[-1].read_text())
        counts.append({k: v for k, v in summary["counts"].items() if v})
        assert (tmp_path / "r" / "kampala_demo" / "web" / "index.html").is_file() == web
    assert counts == [{"done": 1}, {"done": 1}, {"skipped_up_to_date": 1}]
