"""Damage runs on the synthetic pre/post pair: erased buildings are found, nothing else is; post in
another CRS; mosaics through the CLI; bad inputs give one line and leave nothing; run.json."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from typer.testing import CliRunner

from geounet.cli.main import app
from geounet.damage.run import run_damage
from geounet.errors import InputError
from geounet.io.run_record import DAMAGE_RECORD_VERSION
from geounet.schema import ConfigError
from tests.helpers import make_tiny_model, write_scene


def test_erased_buildings_are_destroyed_and_the_others_untouched(pair, tmp_path):
    out = tmp_path / "out"
    run = pair.run(out)
    assert sorted(p.name for p in out.iterdir()) == ["change.tif", "damage.gpkg", "quicklook.png", "run.json", "web"]
    assert (out / "web" / "index.html").is_file() and "web/index.html" in run["outputs"]  # the map: tests/web
    gdf = gpd.read_file(out / "damage.gpkg", layer="buildings").sort_values("footprint_id")
    assert gdf.crs == pair.crs
    for k, (g, s) in enumerate(zip(gdf["damage"], gdf["damage_score"])):
        if k in pair.erased:
            assert g in ("destroyed", "major-damage"), (k, g, s)
        else:
            assert g == "no-damage", (k, g, s)
    assert gdf["area_m2"].to_numpy() == pytest.approx(22 * 18 * pair.res * pair.res, rel=1e-3)
    assert ((gdf["damage_score"] >= 0) & (gdf["damage_score"] <= 1)).all()
    assert run["buildings"]["per_grade"]["no-damage"] == 6
    assert json.loads((out / "run.json").read_text())["buildings"]["total"] == 9
    with rasterio.open(out / "change.tif") as ds, rasterio.open(pair.folder / "pre.tif") as pre:
        assert (ds.crs, ds.transform, ds.shape) == (pre.crs, pre.transform, pre.shape)
        score = ds.read(1)
        r, c = pair.boxes[4]
        assert score[r + 5, c + 5] / 254 > 0.8 and score[pair.boxes[1][0] + 5, pair.boxes[1][1] + 5] == 0
    with rasterio.open(out / "quicklook.png") as q:
        assert q.width <= 1600 and q.count == 3


def test_run_json_is_the_damage_record(pair, tmp_path):
    """run.json: the record's keys in order, a record_version, the returned dict is what was written."""
    run = pair.run(tmp_path / "out", block=256)
    written = json.loads((tmp_path / "out" / "run.json").read_text())
    assert written == run
    assert list(written) == [
        "geounet_version",
        "created_utc",
        "task",
        "inputs",
        "model",
        "settings",
        "method",
        "footprints",
        "buildings",
        "timings",
        "outputs",
        "record_version",
    ]
    assert written["task"] == "damage" and written["record_version"] == DAMAGE_RECORD_VERSION
    assert written["inputs"]["pre"] == [
        {"path": str((pair.folder / "pre.tif").resolve()), "bytes": (pair.folder / "pre.tif").stat().st_size}
    ]
    assert written["method"]["overlap_window"] == {"col_off": 0, "row_off": 0, "width": 256, "height": 256}
    assert written["settings"]["device"] == "cpu" and written["settings"]["block"] == 256
    assert {"prepare_s", "blocks_s", "blocks_model_s", "buildings_s", "cog_s", "quicklook_s", "total_s"} <= set(
        written["timings"]
    )
    assert not list((tmp_path / "out").glob(".*"))  # no staging folder left


def test_post_warped_from_epsg4326_grades_like_the_original(pair, tmp_path):
    """Post given in EPSG:4326 (as on Joplin) is warped back onto the pre grid: a misregistration of
    even a pixel or two would raise the feature distance of the untouched roofs' edges."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(pair.folder / "post.tif") as src:
        tr, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        geo = np.zeros((3, h, w), np.uint8)
        reproject(
            src.read(),
            geo,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=tr,
            dst_crs="EPSG:4326",
            resampling=Resampling.cubic,
        )
    with rasterio.open(
        tmp_path / "post4326.tif",
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=3,
        dtype="uint8",
        crs="EPSG:4326",
        transform=tr,
        nodata=0,
    ) as dst:
        dst.write(geo)
    pair.run(tmp_path / "out", post=[tmp_path / "post4326.tif"], block=256)
    gdf = gpd.read_file(tmp_path / "out" / "damage.gpkg").sort_values("footprint_id")
    assert list(gdf["damage"]) == [pair.expected(k) for k in range(9)]
    untouched = gdf["feature_distance"].to_numpy()[[k for k in range(9) if k not in pair.erased]]
    assert untouched.max() < 0.05, untouched


def test_nodata_outside_overlap_and_invalid_footprints(pair, tmp_path):
    """Post partly nodata, a building outside the scenes, a bow-tie (repaired), a line and a null (skipped)."""
    _, _, post = pair.arrays()
    mask = np.ones((pair.size, pair.size), bool)
    r, c = pair.boxes[2]
    mask[: r + 40, c - 10 :] = False  # no post data over building 2 (untouched) and its corner
    pair.write(tmp_path / "post.tif", post, mask=mask)
    x, y = pair.origin
    far = shapely.box(x - 500, y - 20, x - 480, y)  # west of the scenes
    rb, cb = pair.boxes[1]
    (x0, y0), (x1, y1) = pair.transform @ (cb + 1, rb + 1), pair.transform @ (cb + 23, rb + 19)
    bowtie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])  # self-intersecting, over building 1
    assert not bowtie.is_valid
    line = shapely.LineString([(x0, y0), (x1, y1)])
    fp = gpd.GeoDataFrame(geometry=[*pair.footprints().geometry, far, bowtie, line, None], crs=pair.crs)
    fp.to_file(tmp_path / "fp.geojson", driver="GeoJSON")
    run = pair.run(tmp_path / "out", post=[tmp_path / "post.tif"], footprints=tmp_path / "fp.geojson", block=256)
    c_ = run["footprints"]
    assert (c_["read"], c_["repaired"], c_["skipped_not_polygon"], c_["skipped_empty"], c_["used"]) == (13, 1, 1, 1, 11)
    gdf = gpd.read_file(tmp_path / "out" / "damage.gpkg").sort_values("footprint_id")
    assert gdf.is_valid.all() and len(gdf) == 11
    grades = list(gdf["damage"])
    assert grades[2] == "not_assessed" and grades[9] == "not_assessed"  # no post data / outside the scenes
    assert [g for k, g in enumerate(grades[:9]) if k != 2] == [pair.expected(k) for k in range(9) if k != 2]
    assert grades[10] == "no-damage"  # the repaired bow-tie over untouched building 1
    assert run["buildings"]["not_assessed"] == {"outside_overlap": 1, "too_little_valid_data": 1}
    assert gdf["damage_score"].isna().sum() == 2
    with rasterio.open(tmp_path / "out" / "change.tif") as ds:
        assert (ds.read(1)[r + 5, c + 5]) == 255  # nodata


@pytest.mark.parametrize(
    "case",
    [
        "no_overlap",
        "overlap_too_small",
        "empty_footprints",
        "footprints_elsewhere",
        "footprints_without_crs",
        "missing_post",
        "post_all_nodata",
    ],
)
def test_bad_inputs_are_one_clear_error_and_leave_nothing(pair, tmp_path, case):
    out = tmp_path / "out"
    kw = {}
    _, _, post = pair.arrays()
    if case == "no_overlap":
        write_scene(tmp_path / "far.tif", post, crs="EPSG:4326", res=6e-6, origin=(10.0, 50.0))
        kw["post"], msg = [tmp_path / "far.tif"], "do not overlap"
    elif case == "overlap_too_small":  # a 40 px wide strip of post
        pair.write(tmp_path / "strip.tif", post[:, :, :40].copy())
        kw["post"], msg = [tmp_path / "strip.tif"], "overlap by only 40x256 px"
    elif case == "footprints_elsewhere":  # 5 km east of the scenes
        pair.footprints().translate(xoff=5000.0).to_file(tmp_path / "east.gpkg")
        kw["footprints"], msg = tmp_path / "east.gpkg", "none of its 9 footprints lies where pre and post overlap"
    elif case == "empty_footprints":
        gpd.GeoDataFrame(geometry=[], crs=pair.crs).to_file(tmp_path / "empty.gpkg")
        kw["footprints"], msg = tmp_path / "empty.gpkg", "no features"
    elif case == "footprints_without_crs":
        pair.footprints().set_crs(None, allow_override=True).to_file(tmp_path / "nocrs.gpkg")
        kw["footprints"], msg = tmp_path / "nocrs.gpkg", "no CRS"
    elif case == "post_all_nodata":
        pair.write(tmp_path / "blank.tif", post, mask=np.zeros((pair.size, pair.size), bool))
        kw["post"], msg = [tmp_path / "blank.tif"], "no data"
    else:
        kw["post"], msg = [tmp_path / "nope.tif"], "file not found"
    with pytest.raises(InputError, match=msg) as info:
        pair.run(out, **kw)
    assert "\n" not in str(info.value)
    assert not out.exists()  # made by the run, left empty: removed


def test_an_overlap_under_one_tile_is_said(pair, tmp_path, caplog):
    """The 256 px pair with 512 px model tiles: graded, with one warning that says so."""
    with caplog.at_level("WARNING", logger="geounet"):
        run = pair.run(tmp_path / "out", tile_size=512, overlap=64)
    assert run["buildings"]["total"] == 9
    [line] = [r.getMessage() for r in caplog.records if "less than one model tile" in r.getMessage()]
    assert "256x256 px" in line and "(512 px)" in line


def test_a_much_coarser_post_scene_is_said_and_assessed_at_its_resolution(pair, tmp_path, caplog):
    """Post at 2.5x pre's pixel size: one warning naming both resolutions; the analysis grid is post's resolution."""
    _, _, post = pair.arrays()
    coarse = post[:, ::5, ::5].repeat(2, axis=1).repeat(2, axis=2)  # 2.5 x 0.6 m = 1.5 m pixels
    pair.write(tmp_path / "coarse.tif", np.ascontiguousarray(coarse), res=pair.res * 2.5)
    with caplog.at_level("WARNING", logger="geounet"):
        run = pair.run(tmp_path / "out", post=[tmp_path / "coarse.tif"], tile_size=64, overlap=16, block=64, halo=16)
    [line] = [r.getMessage() for r in caplog.records if "much coarser" in r.getMessage()]
    assert "1.5 m/px" in line and "0.6 m/px" in line and "assessing at the coarser 1.5 m/px" in line
    assert run["method"]["pre_grid"]["transform"][0] == pytest.approx(1.5)
    assert run["buildings"]["total"] == 9
    with rasterio.open(tmp_path / "out" / "change.tif") as ds:
        assert ds.res == pytest.approx((1.5, 1.5))


def test_a_failed_run_keeps_what_the_folder_held(pair, tmp_path):
    """Into an existing folder: a failure late in the run leaves the folder as it was, no staging folder."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _, _, post = pair.arrays()
    pair.write(tmp_path / "blank.tif", post, mask=np.zeros((pair.size, pair.size), bool))
    with pytest.raises(InputError, match="no data"):
        pair.run(out, post=[tmp_path / "blank.tif"])
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_invalid_settings_are_refused_before_anything_is_written(pair, tmp_path):
    with pytest.raises(ConfigError, match=r"damage\.block: must be >= 64.*damage\.halo: must be >= 0"):
        pair.run(tmp_path / "out", block=8, halo=-1)
    assert not (tmp_path / "out").exists()


def test_cli_mosaics_reprojects_and_reports_errors_on_one_line(pair, tmp_path):
    """Pre and post as two tiles each (VRT mosaics), footprints in EPSG:4326: same grades."""
    model = make_tiny_model(tmp_path / "m.safetensors")
    pair.footprints("EPSG:4326").to_file(tmp_path / "fp.geojson")
    _, pre, post = pair.arrays()
    h = pair.size // 2  # post split west/east, pre split north/south
    x, y = pair.origin
    pair.write(tmp_path / "post_w.tif", post[:, :, :h].copy())
    pair.write(tmp_path / "post_e.tif", post[:, :, h:].copy(), origin=(x + h * pair.res, y))
    pair.write(tmp_path / "pre_n.tif", pre[:, :h].copy())
    pair.write(tmp_path / "pre_s.tif", pre[:, h:].copy(), origin=(x, y - h * pair.res))
    cfg = tmp_path / "damage.yaml"
    cfg.write_text("damage:\n" + "".join(f"  {k}: {v}\n" for k, v in (pair.settings_dict | {"block": 256}).items()))
    runner = CliRunner()
    out = tmp_path / "out"
    ok = runner.invoke(
        app,
        [
            "damage",
            "--pre",
            str(tmp_path / "pre_n.tif"),
            str(tmp_path / "pre_s.tif"),
            "--post",
            str(tmp_path / "post_w.tif"),
            str(tmp_path / "post_e.tif"),
            "--footprints",
            str(tmp_path / "fp.geojson"),
            "--model",
            str(model),
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert not ok.stderr.strip()  # --quiet: nothing on success
    counts = json.loads((out / "run.json").read_text())["buildings"]["per_grade"]
    assert (counts["destroyed"], counts["no-damage"]) == (3, 6)
    assert pair.grades(out) == [pair.expected(k) for k in range(9)]
    assert json.loads((out / "run.json").read_text())["footprints"]["reprojected"] is True
    with rasterio.open(out / "change.tif") as ds:
        assert ds.shape == (pair.size, pair.size) and ds.crs == pair.crs and ds.transform.c == pair.origin[0]
    bad = runner.invoke(
        app,
        [
            "damage",
            "--pre",
            str(pair.folder / "pre.tif"),
            "--post",
            str(tmp_path / "missing.tif"),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "out2"),
        ],
    )
    assert bad.exit_code == 2
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {tmp_path / 'missing.tif'}: file not found"]
    assert not (tmp_path / "out2").exists()


def test_cli_reports_every_config_problem_on_one_line(pair, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("damage:\n  blok: 1\n  halo: x\n  thresholds: [0.7, 0.5, 0.3]\n")
    res = CliRunner().invoke(
        app,
        [
            "damage",
            "--pre",
            str(pair.folder / "pre.tif"),
            "--post",
            str(pair.folder / "post.tif"),
            "--model",
            str(pair.model),
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"error: {cfg}: damage: unknown key 'blok' (did you mean 'block'?); "
        "damage.halo: expected an integer, got str 'x'; "
        "damage.thresholds: must be 3 increasing values in [0, 1], got [0.7, 0.5, 0.3]"
    )
    assert not (tmp_path / "out").exists()


def test_without_footprints_buildings_come_from_the_model_on_pre(pair, tmp_path, default_model):
    """The default buildings model finds the synthetic roofs in pre; the erased ones come out damaged.
    Detection and the blocks both run as tasks on the executor here."""
    from geounet.damage.settings import DamageSettings
    from geounet.engine.predict import make_executor
    from geounet.engine.settings import PredictSettings

    # a real model: the product's grading rules (pair.settings' thresholds are for the random-weight tiny model,
    # whose building probabilities mean nothing)
    rules = {k: getattr(DamageSettings(), k) for k in ("prob_weight", "feature_low", "feature_high")}
    executor = make_executor(PredictSettings())
    try:
        run = run_damage(
            [pair.folder / "pre.tif"],
            [pair.folder / "post.tif"],
            tmp_path / "out",
            None,
            default_model,
            pair.settings(block=128, **rules),
            executor,
        )
    finally:
        executor.close()
    assert run["footprints"]["source"] == "buildings model on the pre scene"
    gdf = gpd.read_file(tmp_path / "out" / "damage.gpkg", layer="buildings")
    assert gdf.crs == pair.crs
    t = Affine(pair.res, 0, pair.origin[0], 0, -pair.res, pair.origin[1])
    roofs = [shapely.box(*(t @ (c, r + 20)), *(t @ (c + 24, r))) for r, c in pair.boxes]
    # what the model marks on no roof (a 0.15 m model on a 0.6 m synthetic scene: along its edges) is not graded here
    on_roofs = [
        (geom, g) for geom, g in zip(gdf.geometry, gdf["damage"]) if any(geom.intersection(r).area for r in roofs)
    ]
    assert len(on_roofs) >= 6
    for geom, g in on_roofs:
        k = max(range(len(roofs)), key=lambda i: roofs[i].intersection(geom).area)
        assert g in (("destroyed", "major-damage") if k in pair.erased else ("no-damage",)), (k, g)
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())


def test_the_damage_command_locks_its_folder_and_cleans_a_killed_runs_leftovers(pair, tmp_path):
    """``geounet damage`` into a folder another run holds: one line; a dead run's partial folder: removed."""
    from geounet.io.locks import SceneLock

    out = tmp_path / "out"
    out.mkdir()
    (out / ".damage.partial-999999999").mkdir()  # left by a killed run of an older geounet (pid-only name)
    args = ["damage", "--pre", str(pair.folder / "pre.tif"), "--post", str(pair.folder / "post.tif")]
    args += ["--footprints", str(pair.folder / "footprints.gpkg"), "--model", str(pair.model), "--out", str(out)]
    holder = SceneLock(out / ".damage.lock")
    assert holder.acquire()
    try:
        locked = CliRunner().invoke(app, args)
    finally:
        holder.release()
    assert locked.exit_code == 2 and "locked by another run" in locked.stderr, locked.output
    assert not (out / "run.json").exists()
    done = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert done.exit_code == 0, done.output
    assert (out / "run.json").exists()
    assert not [p.name for p in out.iterdir() if "partial" in p.name]


def test_damage_reads_pre_and_post_over_http_as_the_local_files(pair, tmp_path, monkeypatch):
    """``--pre URL --post URL``: the same grades as the local files; the URLs are recorded, not hashed."""
    from tests.helpers import RangeServer

    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    common = ["--footprints", str(pair.folder / "footprints.gpkg"), "--model", str(pair.model), "--no-web"]
    common += ["--device", "cpu"]
    local = CliRunner().invoke(
        app,
        ["damage", "--pre", str(pair.folder / "pre.tif"), "--post", str(pair.folder / "post.tif")]
        + [*common, "--out", str(tmp_path / "local")],
    )
    assert local.exit_code == 0, local.output
    with RangeServer(pair.folder) as server:
        pre, post = f"{server.url}/pre.tif", f"{server.url}/post.tif"
        remote = CliRunner().invoke(
            app, ["damage", "--pre", pre, "--post", post, *common, "--out", str(tmp_path / "r")]
        )
        missing = CliRunner().invoke(
            app, ["damage", "--pre", pre, "--post", f"{server.url}/gone.tif", *common, "--out", str(tmp_path / "m")]
        )
    assert remote.exit_code == 0, remote.output
    a = gpd.read_file(tmp_path / "local" / "damage.gpkg", layer="buildings").sort_values("footprint_id")
    b = gpd.read_file(tmp_path / "r" / "damage.gpkg", layer="buildings").sort_values("footprint_id")
    assert list(a["damage"]) == list(b["damage"])
    assert np.allclose(a["damage_score"], b["damage_score"])
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert [i["path"] for i in record["inputs"]["pre"]] == [pre]
    assert missing.exit_code != 0 and f"error: {server.url}/gone.tif: HTTP 404 not found" in missing.output
    assert not (tmp_path / "m" / "run.json").exists()


def test_detection_takes_its_decision_weights_and_checks_them_first(pair, tmp_path, default_model, monkeypatch):
    """``detect_decision_weights`` reach the prediction that detects the buildings; a wrong class is one line."""
    import geounet.damage.footprints as footprints
    from geounet.errors import GeounetError

    seen = []

    def predict_scene(scene, work, model, settings, executor, last=False):
        seen.append(settings.decision_weights)
        raise GeounetError(None, "stopped after the settings were seen")

    monkeypatch.setattr(footprints, "predict_scene", predict_scene)
    args = ([pair.folder / "pre.tif"], [pair.folder / "post.tif"], tmp_path / "out", None, default_model)
    with pytest.raises(GeounetError, match="stopped after the settings were seen"):
        run_damage(*args, pair.settings(block=128, detect_decision_weights={"building": 3.0}))
    assert seen == [{"building": 3.0}]
    with pytest.raises(GeounetError) as info:
        run_damage(*args, pair.settings(block=128, detect_decision_weights={"roof": 3.0}))
    assert str(info.value) == (
        "damage.detect_decision_weights: unknown class 'roof' (classes: background, building, contact)"
    )
    assert seen == [{"building": 3.0}]  # refused before any prediction
    assert not (tmp_path / "out").exists() or not any(p for p in (tmp_path / "out").iterdir())


def test_11_bit_epochs_are_scaled_to_8_bits_each_like_8_bit_copies(pair, tmp_path):
    """pre and post as 11-bit values of two acquisitions: graded as the same epochs scaled to 8 bits beforehand."""
    from geounet.io.radiometry import scene_byte_scale

    _, pre, post = pair.arrays()
    eleven = {"pre": pre.astype(np.uint16) * 7 + 150, "post": post.astype(np.uint16) * 5 + 300}
    files, eight = {}, {}
    for epoch, dn in eleven.items():
        files[epoch] = pair.write(tmp_path / f"{epoch}_11bit.tif", dn)
        with rasterio.open(files[epoch]) as src:
            scale = scene_byte_scale(src, [1, 2, 3])
        eight[epoch] = pair.write(tmp_path / f"{epoch}_8bit.tif", scale.apply(dn))
    run = pair.run(tmp_path / "eleven", pre=[files["pre"]], post=[files["post"]], web=False)
    pair.run(tmp_path / "eight", pre=[eight["pre"]], post=[eight["post"]], web=False)
    assert pair.grades(tmp_path / "eleven") == pair.grades(tmp_path / "eight")
    assert pair.grades(tmp_path / "eleven") == [pair.expected(k) for k in range(len(pair.boxes))]
    with rasterio.open(tmp_path / "eleven" / "change.tif") as a, rasterio.open(tmp_path / "eight" / "change.tif") as b:
        assert np.array_equal(a.read(), b.read())
    scales = run["method"]["byte_scale"]
    assert scales["pre"]["low"][0] > 150 and scales["post"]["low"][0] > 300  # each epoch its own
    with pytest.raises(InputError, match="band 1 is uint16 but model"):
        pair.run(tmp_path / "refused", pre=[files["pre"]], post=[files["post"]], rescale="none")
