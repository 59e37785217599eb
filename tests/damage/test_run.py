"""Damage runs on a synthetic pre/post pair: erased buildings are found, nothing else is;
co-registration across CRSs; mosaics; bad inputs give one line and leave nothing."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.warp import reproject, transform as warp_transform
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from geounet.cli.main import app
from geounet.damage.run import DamageSettings, mosaic_vrt, overlap_window, post_on_pre, run_damage
from geounet.errors import GeounetError, InputError
from tests.helpers import write_scene

CRS = "EPSG:26915"
RES = 0.6
ORIGIN = (367000.0, 4104000.0)
SIZE = 256
BOXES = [(r, c) for r in (30, 110, 190) for c in (30, 110, 190)]  # (row, col) of 20 x 24 px roofs
ERASED = {0, 4, 8}
# The tiny model's weights are random, so its building probabilities mean nothing: grade on
# the encoder feature distance (the image-change term) alone, which responds to real change.
SETTINGS = dict(prob_weight=0.0, feature_low=0.1, feature_high=0.3, block=128, halo=32, device="cpu")


def _pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    bg = np.stack([gaussian_filter(rng.uniform(0, 255, (SIZE, SIZE)), 2) for _ in range(3)])
    bg = np.clip((bg - bg.mean()) * 3 + np.array([90, 120, 70])[:, None, None], 0, 255).astype(np.uint8)
    pre = bg.copy()
    for r, c in BOXES:
        pre[:, r:r + 20, c:c + 24] = np.array([200, 190, 180])[:, None, None]
        pre[:, r + 9:r + 11, c:c + 24] = 120  # ridge
    post = pre.copy()
    for k in ERASED:
        r, c = BOXES[k]
        post[:, r:r + 20, c:c + 24] = bg[:, r:r + 20, c:c + 24]
    return bg, pre, post


def _footprints(crs=CRS) -> gpd.GeoDataFrame:
    t = Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1])
    geoms = []
    for r, c in BOXES:
        (x0, y0), (x1, y1) = t * (c + 1, r + 1), t * (c + 23, r + 19)  # 1 px inside the roof
        geoms.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    gdf = gpd.GeoDataFrame({"name": [f"b{k}" for k in range(len(BOXES))]}, geometry=geoms, crs=CRS)
    return gdf.to_crs(crs)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    _, pre, post = _pair()
    write_scene(d / "pre.tif", pre, crs=CRS, res=RES, origin=ORIGIN)
    write_scene(d / "post.tif", post, crs=CRS, res=RES, origin=ORIGIN)
    _footprints().to_file(d / "footprints.gpkg", layer="buildings")
    return d


def _run(pair, out, post=None, footprints=None, pre=None, **kw):
    from tests.helpers import make_tiny_model

    model = pair / "tiny.safetensors"
    if not model.exists():
        make_tiny_model(model)
    return run_damage(pre or [pair / "pre.tif"], post or [pair / "post.tif"], out,
                      footprints or pair / "footprints.gpkg", model, DamageSettings(**(SETTINGS | kw)))


def _grades(out: Path) -> list[str]:
    gdf = gpd.read_file(out / "damage.gpkg", layer="buildings").sort_values("footprint_id")
    return list(gdf["damage"])


def test_erased_buildings_are_destroyed_and_the_others_untouched(pair, tmp_path):
    out = tmp_path / "out"
    run = _run(pair, out)
    assert sorted(p.name for p in out.iterdir()) == ["change.tif", "damage.gpkg", "quicklook.png", "run.json"]
    gdf = gpd.read_file(out / "damage.gpkg", layer="buildings").sort_values("footprint_id")
    assert gdf.crs == CRS
    for k, (g, s) in enumerate(zip(gdf["damage"], gdf["damage_score"])):
        if k in ERASED:
            assert g in ("destroyed", "major-damage"), (k, g, s)
        else:
            assert g == "no-damage", (k, g, s)
    assert gdf["area_m2"].to_numpy() == pytest.approx(22 * 18 * RES * RES, rel=1e-3)
    assert ((gdf["damage_score"] >= 0) & (gdf["damage_score"] <= 1)).all()
    assert run["buildings"]["per_grade"]["no-damage"] == 6
    assert json.loads((out / "run.json").read_text())["buildings"]["total"] == 9
    with rasterio.open(out / "change.tif") as ds, rasterio.open(pair / "pre.tif") as pre:
        assert (ds.crs, ds.transform, ds.shape) == (pre.crs, pre.transform, pre.shape)
        score = ds.read(1)
        r, c = BOXES[4]
        assert score[r + 5, c + 5] / 254 > 0.8 and score[BOXES[1][0] + 5, BOXES[1][1] + 5] == 0
    with rasterio.open(out / "quicklook.png") as q:
        assert q.width <= 1600 and q.count == 3


def test_post_in_another_crs_lands_on_the_same_pixel(tmp_path):
    """A marker at a known ground point, written in EPSG:4326, is read back at that point's pre pixel."""
    pre = np.full((3, 200, 200), 50, np.uint8)
    write_scene(tmp_path / "pre.tif", pre, crs=CRS, res=RES, origin=ORIGIN)
    x, y = ORIGIN[0] + 123.5 * RES, ORIGIN[1] - 77.5 * RES  # centre of pre pixel (row 77, col 123)
    (lon,), (lat,) = warp_transform(CRS, "EPSG:4326", [x], [y])
    d = 6e-6
    lon0, lat0 = lon - 100.3 * d, lat + 90.6 * d  # marker pixel is (row 90, col 100) of post
    post = np.full((3, 200, 200), 50, np.uint8)
    post[:, 90, 100] = 250
    write_scene(tmp_path / "post.tif", post, crs="EPSG:4326", res=d, origin=(lon0, lat0))
    from geounet.damage.run import Grid
    from tests.helpers import make_tiny_model
    from geounet.models.card import read_card

    card = read_card(make_tiny_model(tmp_path / "m.safetensors"))
    pre_xml, pre_grid = mosaic_vrt([tmp_path / "pre.tif"], card, "pre")
    post_xml, post_grid = mosaic_vrt([tmp_path / "post.tif"], card, "post")
    (tmp_path / "post.vrt").write_text(post_xml)
    assert isinstance(pre_grid, Grid) and overlap_window(pre_grid, post_grid) is not None
    with rasterio.open(tmp_path / "post.vrt") as src, post_on_pre(src, pre_grid) as vrt:
        band = vrt.read(1)
    row, col = np.unravel_index(np.argmax(band), band.shape)
    assert (row, col) == (77, 123)


def test_post_warped_from_epsg4326_grades_like_the_original(pair, tmp_path):
    """Post given in EPSG:4326 (as on Joplin) is warped back onto the pre grid: a misregistration of
    even a pixel or two would raise the feature distance of the untouched roofs' edges."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(pair / "post.tif") as src:
        tr, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        geo = np.zeros((3, h, w), np.uint8)
        reproject(src.read(), geo, src_transform=src.transform, src_crs=src.crs, dst_transform=tr,
                  dst_crs="EPSG:4326", resampling=Resampling.cubic)
    with rasterio.open(tmp_path / "post4326.tif", "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=tr, nodata=0) as dst:
        dst.write(geo)
    _run(pair, tmp_path / "out", post=[tmp_path / "post4326.tif"], block=256)
    gdf = gpd.read_file(tmp_path / "out" / "damage.gpkg").sort_values("footprint_id")
    assert list(gdf["damage"]) == ["destroyed" if k in ERASED else "no-damage" for k in range(9)]
    untouched = gdf["feature_distance"].to_numpy()[[k for k in range(9) if k not in ERASED]]
    assert untouched.max() < 0.05, untouched


def test_nodata_outside_overlap_and_invalid_footprints(pair, tmp_path):
    """Post partly nodata, a building outside the scenes, a bow-tie (repaired), a line and a null (skipped)."""
    _, _, post = _pair()
    mask = np.ones((SIZE, SIZE), bool)
    r, c = BOXES[2]
    mask[: r + 40, c - 10:] = False  # no post data over building 2 (untouched) and its corner
    write_scene(tmp_path / "post.tif", post, crs=CRS, res=RES, origin=ORIGIN, mask=mask)
    fp = _footprints()
    far = shapely.box(ORIGIN[0] - 500, ORIGIN[1] - 20, ORIGIN[0] - 480, ORIGIN[1])  # west of the scenes
    rb, cb = BOXES[1]
    t = Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1])
    (x0, y0), (x1, y1) = t * (cb + 1, rb + 1), t * (cb + 23, rb + 19)
    bowtie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])  # self-intersecting, over building 1
    assert not bowtie.is_valid
    line = shapely.LineString([(x0, y0), (x1, y1)])
    fp = gpd.GeoDataFrame(geometry=[*fp.geometry, far, bowtie, line, None], crs=CRS)
    fp.to_file(tmp_path / "fp.geojson", driver="GeoJSON")
    run = _run(pair, tmp_path / "out", post=[tmp_path / "post.tif"], footprints=tmp_path / "fp.geojson", block=256)
    c_ = run["footprints"]
    assert (c_["read"], c_["repaired"], c_["skipped_not_polygon"], c_["skipped_empty"], c_["used"]) == (13, 1, 1, 1, 11)
    gdf = gpd.read_file(tmp_path / "out" / "damage.gpkg").sort_values("footprint_id")
    assert gdf.is_valid.all() and len(gdf) == 11
    grades = list(gdf["damage"])
    assert grades[2] == "not_assessed" and grades[9] == "not_assessed"  # no post data / outside the scenes
    assert [g for k, g in enumerate(grades[:9]) if k != 2] == [
        "destroyed" if k in ERASED else "no-damage" for k in range(9) if k != 2]
    assert grades[10] == "no-damage"  # the repaired bow-tie over untouched building 1
    assert run["buildings"]["not_assessed"] == {"outside_overlap": 1, "too_little_valid_data": 1}
    assert gdf["damage_score"].isna().sum() == 2
    with rasterio.open(tmp_path / "out" / "change.tif") as ds:
        assert (ds.read(1)[r + 5, c + 5]) == 255  # nodata


def _assert_nothing_written(out: Path):
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


@pytest.mark.parametrize("case", ["no_overlap", "empty_footprints", "footprints_without_crs", "missing_post",
                                  "post_all_nodata"])
def test_bad_inputs_are_one_clear_error_and_leave_nothing(pair, tmp_path, case):
    out = tmp_path / "out"
    kw = {}
    if case == "no_overlap":
        _, _, post = _pair()
        write_scene(tmp_path / "far.tif", post, crs="EPSG:4326", res=6e-6, origin=(10.0, 50.0))
        kw["post"], msg = [tmp_path / "far.tif"], "do not overlap"
    elif case == "empty_footprints":
        gpd.GeoDataFrame(geometry=[], crs=CRS).to_file(tmp_path / "empty.gpkg")
        kw["footprints"], msg = tmp_path / "empty.gpkg", "no features"
    elif case == "footprints_without_crs":
        _footprints().set_crs(None, allow_override=True).to_file(tmp_path / "nocrs.gpkg")
        kw["footprints"], msg = tmp_path / "nocrs.gpkg", "no CRS"
    elif case == "post_all_nodata":
        _, _, post = _pair()
        write_scene(tmp_path / "blank.tif", post, crs=CRS, res=RES, origin=ORIGIN, mask=np.zeros((SIZE, SIZE), bool))
        kw["post"], msg = [tmp_path / "blank.tif"], "no data"
    else:
        kw["post"], msg = [tmp_path / "nope.tif"], "file not found"
    with pytest.raises(InputError, match=msg) as info:
        _run(pair, out, **kw)
    assert "\n" not in str(info.value)
    _assert_nothing_written(out)


def test_settings_from_a_config_section():
    s = DamageSettings.from_dict({"thresholds": [0.2, 0.4, 0.6], "block": 512})
    assert s.thresholds == [0.2, 0.4, 0.6] and s.block == 512
    with pytest.raises(GeounetError, match="unknown"):
        DamageSettings.from_dict({"treshold": 1})
    with pytest.raises(GeounetError, match="thresholds"):
        DamageSettings.from_dict({"thresholds": [0.7, 0.5, 0.3]})


def test_cli_mosaics_reprojects_and_reports_errors_on_one_line(pair, tmp_path):
    """Pre and post as two tiles each (VRT mosaics), footprints in EPSG:4326: same grades."""
    from tests.helpers import make_tiny_model

    model = make_tiny_model(tmp_path / "m.safetensors")
    _footprints("EPSG:4326").to_file(tmp_path / "fp.geojson")
    _, pre, post = _pair()
    h = SIZE // 2  # post split west/east, pre split north/south
    write_scene(tmp_path / "post_w.tif", post[:, :, :h].copy(), crs=CRS, res=RES, origin=ORIGIN)
    write_scene(tmp_path / "post_e.tif", post[:, :, h:].copy(), crs=CRS, res=RES, origin=(ORIGIN[0] + h * RES, ORIGIN[1]))
    write_scene(tmp_path / "pre_n.tif", pre[:, :h].copy(), crs=CRS, res=RES, origin=ORIGIN)
    write_scene(tmp_path / "pre_s.tif", pre[:, h:].copy(), crs=CRS, res=RES, origin=(ORIGIN[0], ORIGIN[1] - h * RES))
    cfg = tmp_path / "damage.yaml"
    cfg.write_text("damage:\n" + "".join(f"  {k}: {v}\n" for k, v in (SETTINGS | {"block": 256}).items()))
    runner = CliRunner()
    out = tmp_path / "out"
    ok = runner.invoke(app, ["damage", "--pre", str(tmp_path / "pre_n.tif"), str(tmp_path / "pre_s.tif"),
                             "--post", str(tmp_path / "post_w.tif"), str(tmp_path / "post_e.tif"),
                             "--footprints", str(tmp_path / "fp.geojson"), "--model", str(model),
                             "--config", str(cfg), "--out", str(out), "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert not ok.stderr.strip()  # --quiet: nothing on success
    counts = json.loads((out / "run.json").read_text())["buildings"]["per_grade"]
    assert (counts["destroyed"], counts["no-damage"]) == (3, 6)
    assert _grades(out) == ["destroyed" if k in ERASED else "no-damage" for k in range(9)]
    assert json.loads((out / "run.json").read_text())["footprints"]["reprojected"] is True
    with rasterio.open(out / "change.tif") as ds:
        assert ds.shape == (SIZE, SIZE) and ds.crs == CRS and ds.transform.c == ORIGIN[0]
    bad = runner.invoke(app, ["damage", "--pre", str(pair / "pre.tif"), "--post", str(tmp_path / "missing.tif"),
                              "--model", str(model), "--out", str(tmp_path / "out2")])
    assert bad.exit_code == 2
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {tmp_path / 'missing.tif'}: file not found"]
    assert not (tmp_path / "out2").exists()


def test_without_footprints_buildings_come_from_the_model_on_pre(pair, tmp_path, default_model):
    """The default buildings model finds the synthetic roofs in pre; the erased ones come out damaged.
    Detection and the blocks both run as tasks on a (local) Dask cluster here."""
    from geounet.engine.settings import PredictSettings
    from geounet.engine.predict import make_executor

    client = make_executor(PredictSettings())
    try:
        run = run_damage([pair / "pre.tif"], [pair / "post.tif"], tmp_path / "out", None, default_model,
                         DamageSettings(**(SETTINGS | {"block": 128})), client)
    finally:
        client.close()
    assert run["footprints"]["source"] == "buildings model on the pre scene"
    gdf = gpd.read_file(tmp_path / "out" / "damage.gpkg", layer="buildings")
    assert len(gdf) >= 6 and gdf.crs == CRS
    t = Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1])
    roofs = [shapely.box(*(t * (c, r + 20)), *(t * (c + 24, r))) for r, c in BOXES]
    for geom, g in zip(gdf.geometry, gdf["damage"]):
        k = max(range(len(roofs)), key=lambda i: roofs[i].intersection(geom).area)
        assert g in (("destroyed", "major-damage") if k in ERASED else ("no-damage",)), (k, g)
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())


def test_joplin_mosaics_and_overlap(tmp_path, default_model):
    """The real pair: 4 pre tiles (EPSG:26915) and 6 post tiles (EPSG:4326) mosaic and overlap as expected."""
    from tests.helpers import shared_file
    from geounet.models.card import read_card

    joplin = shared_file("joplin")
    card = read_card(default_model)
    pre_xml, pre = mosaic_vrt(sorted((joplin / "pre").glob("*.tif")), card, "pre")
    post_xml, post = mosaic_vrt(sorted((joplin / "post").glob("*.tif")), card, "post")
    assert (pre.width, pre.height) == (2048, 2048) and (post.width, post.height) == (3072, 2048)
    win = overlap_window(pre, post)
    assert (win.width, win.height) == (1992, 1625)  # about 1.2 x 1.0 km at 0.6 m
    (tmp_path / "post.vrt").write_text(post_xml)
    (tmp_path / "pre.vrt").write_text(pre_xml)
    with rasterio.open(tmp_path / "pre.vrt") as p:
        block = rasterio.windows.Window(win.col_off + 900, win.row_off + 700, 64, 64)
        assert (p.dataset_mask(window=block) > 0).all() and p.read(1, window=block).std() > 0
    with rasterio.open(tmp_path / "post.vrt") as src, post_on_pre(src, pre) as vrt:
        assert (vrt.read(4, window=block) > 0).all() and vrt.read(1, window=block).std() > 0
        assert (vrt.read(4, window=rasterio.windows.Window(0, 0, 32, 32)) == 0).all()  # pre corner: no post
