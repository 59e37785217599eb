"""The ``web/`` folder of predict and damage runs: written inside the run, self-contained, facts from run.json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import geopandas as gpd
import pyogrio

from geounet.compute.change import GRADE_COLOURS
from geounet.web.folder import hex_colour
from geounet.web.page import STATIC_FILES
from tests.helpers import invoke


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
