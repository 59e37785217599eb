"""The CLI: `geounet info`, and every bad input gets one line naming the file, a non-zero exit, nothing left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from tests.helpers import DEMO_SCENE, error_lines, invoke, write_scene

runner = CliRunner()


def assert_nothing_left(out: Path, allowed: set[str] = frozenset()):
    if out.exists():
        left = {p.name for p in out.iterdir() if not p.name.endswith(".lock")} - set(allowed)  # scene locks stay
        assert not left, f"left behind: {left}"


def _truncated(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    full = write_scene(tmp_path / "full.tif", rng.integers(0, 255, (3, 400, 400), dtype=np.uint8))
    data = full.read_bytes()
    cut = tmp_path / "truncated.tif"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def _no_crs(tmp_path: Path) -> Path:
    with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", width=20, height=20, count=3, dtype="uint8") as d:
        d.write(np.zeros((3, 20, 20), np.uint8))
    return tmp_path / "nocrs.tif"


LOCAL_CS = 'LOCAL_CS["Engineering",LOCAL_DATUM["site",32767],UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
_RGB = np.full((3, 64, 64), 100, np.uint8)


BAD_SCENES = {
    # the tiny model works at 0.15 m: a 100 m scene would be a 667x finer working grid (days of tiles)
    "coarse": (
        lambda tmp: write_scene(tmp / "coarse.tif", _RGB, crs="EPSG:32615", res=100.0, origin=(367000.0, 4104000.0)),
        "times finer",
    ),
    "coarse degrees": (
        lambda tmp: write_scene(tmp / "coarsedeg.tif", _RGB, crs="EPSG:4326", res=0.001, origin=(10.0, 50.0)),
        "more than the limit of 8 (max_upsample)",
    ),
    "polar": (  # 89.9999 N in degrees: pixels ~1e-5 m wide and 1 m tall
        lambda tmp: write_scene(tmp / "polar.tif", _RGB, crs="EPSG:4326", res=1e-5, origin=(0.0, 89.9999)),
        "far from square",
    ),
    "local crs": (
        lambda tmp: write_scene(tmp / "site.tif", _RGB, crs=rasterio.crs.CRS.from_wkt(LOCAL_CS), origin=(10.0, 20.0)),
        "cannot be related to longitude and latitude",
    ),
    "far out of its UTM zone": (
        lambda tmp: write_scene(tmp / "farzone.tif", _RGB, crs="EPSG:32615", origin=(-3.0e7, 4104511.0)),
        "outside the valid area of its CRS (EPSG:32615)",
    ),
    "missing": (lambda tmp: tmp / "nope.tif", "file not found"),
    "not a raster": (
        lambda tmp: (tmp / "notes.tif").write_text("hello") and tmp / "notes.tif",
        "not a readable raster",
    ),
    "truncated": (_truncated, "truncated or corrupt"),
    "no crs": (_no_crs, "no CRS"),
    "band count": (
        lambda tmp: write_scene(tmp / "pan.tif", np.zeros((1, 20, 20), np.uint8)),
        r"has 1 band(s) but model",
    ),
    "dtype": (  # complex values have no 8-bit scale (integers and floats are scaled: test_rescale...)
        lambda tmp: write_scene(tmp / "c64.tif", np.zeros((3, 20, 20), np.complex64)),
        "band 1 is complex64 but model",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SCENES))
def test_bad_scene_gives_one_line_error_and_leaves_nothing(case, tiny_model, tmp_path):
    make, message = BAD_SCENES[case]
    scene = make(tmp_path)
    out = tmp_path / "out"
    result = invoke("predict", scene, "--out", out, "--model", tiny_model, "--quiet")
    assert result.exit_code == 1, result.output
    [line] = error_lines(result)
    assert str(scene) in line and message in line, line
    assert_nothing_left(out)


def test_rescale_scales_an_11_bit_scene_to_8_bits_for_an_8_bit_model(tiny_model, tmp_path):
    """The same classes as the scene scaled to 8 bits beforehand; said in the log and run.json; --rescale none refuses."""
    import json

    from geounet.io.radiometry import scene_byte_scale

    rng = np.random.default_rng(5)
    dn = (rng.random((3, 200, 200)) * 1800 + 120).astype(np.uint16)  # 11-bit values, a 0.15 m scene
    dn[:, :20, :20] = 0  # nodata
    scene = write_scene(tmp_path / "eleven_bit.tif", dn, nodata=0)
    with rasterio.open(scene) as src:
        scale = scene_byte_scale(src, [1, 2, 3])
        eight = np.where(dn > 0, scale.apply(src.read()), 0).astype(np.uint8)
    assert 100 < scale.low[0] < scale.high[0] < 1920
    scaled_first = write_scene(tmp_path / "eight_bit.tif", eight, nodata=0)
    out = tmp_path / "out"
    result = invoke("predict", scene, scaled_first, "--out", out, "--model", tiny_model, "--no-vector")
    assert result.exit_code == 0, result.output
    assert "uint16 bands scaled to 8 bits" in result.stderr
    with rasterio.open(out / "eleven_bit" / "classes.tif") as a, rasterio.open(out / "eight_bit" / "classes.tif") as b:
        assert np.array_equal(a.read(), b.read())
    recorded = json.loads((out / "eleven_bit" / "run.json").read_text())["settings"]
    assert recorded["rescale"] == "auto" and recorded["byte_scale"]["low"] == list(scale.low)
    assert "byte_scale" not in json.loads((out / "eight_bit" / "run.json").read_text())["settings"]
    refused = invoke("predict", scene, "--out", tmp_path / "none", "--model", tiny_model, "--rescale", "none")
    assert refused.exit_code == 1
    [line] = error_lines(refused)
    assert line == f"error: {scene}: band 1 is uint16 but model 'tiny-test' expects uint8 input"


def test_one_bad_scene_does_not_sink_the_batch(tiny_model, tmp_path):
    out = tmp_path / "out"
    result = invoke("predict", tmp_path / "missing.tif", DEMO_SCENE, "--out", out, "--model", tiny_model, "--quiet")
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1 and "1 scene(s) done, 1 failed" in result.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == ["kampala_demo"]


def test_scenes_without_usable_ground_geometry_do_not_stop_a_predict_batch(tiny_model, tmp_path):
    bad = [BAD_SCENES[k][0](tmp_path) for k in ("local crs", "far out of its UTM zone", "coarse")]
    out = tmp_path / "out"
    result = invoke("predict", *bad, DEMO_SCENE, "--out", out, "--model", tiny_model, "--quiet")
    assert result.exit_code == 1
    assert [line.split(": ")[1] for line in error_lines(result)] == [str(p) for p in bad]
    assert "Traceback" not in result.stderr and "1 scene(s) done, 3 failed" in result.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == ["kampala_demo"]


def test_work_budget_is_configurable(tiny_model, tmp_path):
    scene = write_scene(tmp_path / "coarse.tif", _RGB, res=0.45)  # about 3x coarser than the 0.15 m model
    out = tmp_path / "out"
    refused = invoke("predict", scene, "--out", out, "--model", tiny_model, "--quiet", "--max-upsample", "2")
    assert refused.exit_code == 1 and "3 times finer (192x192 px), more than the limit of 2" in refused.stderr
    pixels = invoke("predict", scene, "--out", out, "--model", tiny_model, "--quiet", "--max-working-pixels", "30000")
    assert pixels.exit_code == 1 and "192x192 px, more than the limit of 3e+04 pixels" in pixels.stderr
    assert invoke("predict", scene, "--out", out, "--model", tiny_model, "--quiet").exit_code == 0


def test_scene_smaller_than_the_field_of_view_is_a_warning(tiny_model, tmp_path):
    scene = write_scene(tmp_path / "small.tif", np.full((3, 30, 40), 90, np.uint8))
    result = invoke("predict", scene, "--out", tmp_path / "out", "--model", tiny_model, "--quiet")
    assert result.exit_code == 0, result.output
    assert "only 40x30 px at the model's 0.15 m/px" in result.stderr


def test_raster_without_transform_is_refused(tiny_model, tmp_path):
    scene = tmp_path / "notransform.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=20, height=20, count=3, dtype="uint8", crs="EPSG:32633") as d:
        d.write(np.zeros((3, 20, 20), np.uint8))
    result = invoke("predict", scene, "--out", tmp_path / "out", "--model", tiny_model, "--quiet")
    assert result.exit_code == 1
    [line] = error_lines(result)
    assert str(scene) in line and "no geotransform" in line


def test_all_nodata_scene_is_not_an_error(tiny_model, tmp_path):
    scene = write_scene(tmp_path / "void.tif", np.zeros((3, 64, 64), np.uint8), res=0.15, nodata=0)
    result = invoke("predict", scene, "--out", tmp_path / "out", "--model", tiny_model, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"geounet: {scene}: every pixel is nodata" in result.stderr  # said, even with --quiet
    with rasterio.open(tmp_path / "out/void/classes.tif") as c:
        assert (c.read() == 255).all()


def test_output_folder_that_cannot_be_written(tiny_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("predict", DEMO_SCENE, "--out", blocker / "out", "--model", tiny_model, "--quiet")
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert str(blocker / "out") in line and "cannot write output folder" in line


@pytest.mark.parametrize("kind", ["pickle", "text", "missing"])
def test_invalid_model_file(kind, tmp_path):
    model = tmp_path / "model.safetensors"
    if kind == "pickle":
        torch.save({"w": torch.zeros(2)}, model)
    elif kind == "text":
        model.write_text("{}")
    out = tmp_path / "out"
    result = invoke("predict", DEMO_SCENE, "--out", out, "--model", model, "--quiet")
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert str(model) in line and ("not a valid geounet model" in line or "not found" in line)
    assert_nothing_left(out)


def test_bad_settings_are_refused(tiny_model, tmp_path):
    result = invoke("predict", DEMO_SCENE, "--out", tmp_path, "--model", tiny_model, "--tile-size", "100", "--quiet")
    assert result.exit_code != 0 and "multiple of 32" in result.stderr


def test_interrupted_run_leaves_no_finished_looking_output(tiny_model, tmp_path):
    """A run killed mid-scene leaves only a hidden .partial folder, never OUT/<stem>/."""
    out = tmp_path / "out"
    code = (
        "import os, signal, geounet.engine.predict as p\n"
        "def boom(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "p.write_cog = boom\n"
        "from geounet.cli.main import app\n"
        f"app(['predict', {str(DEMO_SCENE)!r}, '--out', {str(out)!r}, '--model', {str(tiny_model)!r}, '--quiet'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -9
    assert not (out / "kampala_demo").exists()
    assert all(p.name.startswith(".") for p in out.iterdir())


@pytest.mark.parametrize(
    "option, value, valid",
    [
        ("--precision", "int4", "auto, fp32, bf16, fp16, int8"),
        ("--device", "gpu", "auto, cpu, cuda or cuda:N"),
        ("--backend", "tensorrt", "auto, torch, onnx"),
        ("--tta", "d8", "none, flip, flips, d4"),
    ],
)
def test_an_unknown_choice_is_refused_listing_the_valid_ones(option, value, valid, tiny_model, tmp_path):
    result = invoke("predict", DEMO_SCENE, "--out", tmp_path / "out", "--model", tiny_model, option, value, "-q")
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert line.startswith(f"error: {option}: ") and valid in line and repr(value) in line


def test_quiet_run_prints_nothing_in_a_real_process(tmp_path):
    """`geounet predict --quiet` with the default model, as cron runs it: nothing on stderr or stdout
    (pytest hides the warnings of in-process runs; a real process shows every one)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "geounet.cli.main",
            "predict",
            str(DEMO_SCENE),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""


def test_a_decision_weight_moves_the_classes_and_polygons_not_the_scores(tiny_model, tmp_path):
    """``--decision-weight building=3``: building where its probability exceeds 0.25; recorded in run.json."""
    import json

    runs = {}
    for name, extra in (("plain", []), ("weighted", ["--decision-weight", "building=3"])):
        out = tmp_path / name
        result = invoke("predict", DEMO_SCENE, "--out", out, "--model", tiny_model, "--precision", "fp32", "-q", *extra)
        assert result.exit_code == 0, result.output
        folder = out / DEMO_SCENE.stem
        with rasterio.open(folder / "scores.tif") as s, rasterio.open(folder / "classes.tif") as c:
            runs[name] = (s.read(), c.read(1), json.loads((folder / "run.json").read_text())["settings"])
    (scores, plain, settings), (weighted_scores, weighted, weighted_settings) = runs["plain"], runs["weighted"]
    np.testing.assert_array_equal(weighted_scores, scores)
    data = plain != 255
    assert (weighted[data] == 1).sum() > (plain[data] == 1).sum()
    # the scores hold p * 254 rounded: away from the 0.25 edge the classes are exactly the threshold's
    building = scores[1].astype(np.float64) / 254.0
    clear = data & (np.abs(building - 0.25) > 0.01)
    np.testing.assert_array_equal(weighted[clear], (building[clear] > 0.25).astype(np.uint8))
    assert settings["decision_weights"] == {"background": 1.0, "building": 1.0}
    assert weighted_settings["decision_weights"] == {"background": 1.0, "building": 3.0}


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--decision-weight", "building", "--decision-weight expects CLASS=FACTOR (a number), got 'building'"),
        (
            "--decision-weight",
            "building=high",
            "--decision-weight expects CLASS=FACTOR (a number), got 'building=high'",
        ),
        ("--decision-weight", "roof=2", "--decision-weight: unknown class 'roof' (classes: background, building)"),
        ("--decision-weight", "building=0", "--decision-weight: the weight of 'building' must be a positive number"),
        ("--rule", "seed_m=1", "--rule: unknown key 'seed_m' (known: building, landcover, road)"),
        ("--rule", "building.seed_m=", "--rule expects KIND.FIELD=VALUE with a dotted KEY such as building.simplify"),
        (
            "--rule",
            "roof.seed_m=1",
            "--rule: unknown key 'roof' (known: building, landcover, road)",
        ),
        ("--rule", "building.seed=1", "--rule: building: unknown key 'seed' (did you mean 'seed_m'?)"),
        ("--rule", "building.simplify_m=-1", "--rule: building.simplify_m: expected a number >= 0, got -1.0"),
        ("--rule", "building.simplify_m=.inf", "--rule: building.simplify_m: expected a number >= 0, got inf"),
        (
            "--rule",
            "building.regularize=maybe",
            "--rule: building.regularize: expected true/false or null, got str 'maybe'",
        ),
    ],
)
def test_a_bad_decision_weight_or_rule_is_one_line_and_leaves_nothing(option, value, message, tiny_model, tmp_path):
    out = tmp_path / "out"
    result = invoke("predict", DEMO_SCENE, "--out", out, "--model", tiny_model, option, value, "-q")
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert line.startswith(f"error: {message}"), line
    assert_nothing_left(out)


def test_rules_change_the_polygons_of_this_run_and_are_recorded(default_model, tmp_path):
    """``--rule building.min_area_m2=20 --rule building.regularize=false``: smaller roofs dropped, outlines kept
    on the pixel edges; run.json records the overrides and the rules used."""
    import json

    import geopandas as gpd
    import shapely

    runs = {}
    rules = ["--rule", "building.min_area_m2=20", "--rule", "building.regularize=false"]
    for name, extra in (("plain", []), ("ruled", rules)):
        out = tmp_path / name
        result = invoke("predict", DEMO_SCENE, "--out", out, "--model", default_model, "-q", *extra)
        assert result.exit_code == 0, result.output
        folder = out / DEMO_SCENE.stem
        runs[name] = (
            gpd.read_file(folder / "features.gpkg", layer="buildings"),
            json.loads((folder / "run.json").read_text()),
        )
    (plain, plain_run), (ruled, ruled_run) = runs["plain"], runs["ruled"]
    assert len(ruled) < len(plain) and (ruled.area_m2 >= 20).all() and (plain.area_m2 < 20).any()
    assert ruled_run["settings"]["postprocess"] == {"building": {"min_area_m2": 20.0, "regularize": False}}
    assert ruled_run["vector"]["rules"]["building"]["regularize"] is False
    assert plain_run["vector"]["rules"]["building"]["regularize"] is True

    # unregularised outlines keep the simplified pixel staircase: fewer right-angle rectangles than regularised ones
    def rectangles(gdf):
        g = np.asarray(gdf.geometry.values)
        return int((shapely.area(g) / shapely.area(shapely.oriented_envelope(g)) > 0.999).sum())

    assert rectangles(ruled) < rectangles(plain[plain.area_m2 >= 20])
