"""features.gpkg: layers from the model's class kinds, metres on the ground, QGIS styles, exact across blocks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Geod
from rasterio.features import rasterize

from geounet.compute.postprocess import ClassRules
from geounet.engine.predict import predict_batch
from geounet.engine.settings import PredictSettings
from geounet.engine.vector_stage import vectorize_scene
from geounet.errors import InputError
from tests.helpers import DEMO_SCENE, make_card, shared_file

GEOD = Geod(ellps="WGS84")
RAW = {"building": ClassRules(), "road": ClassRules(spur_m=5.0), "landcover": ClassRules()}  # no cleaning: exact shapes


@pytest.fixture(scope="module", params=["thread pool", "dask.distributed"])
def client(request):
    """An executor of 2 threads: the local runs' thread pool, or an in-process dask.distributed cluster
    (the futures of a ``--scheduler`` run)."""
    from geounet.engine.executors import DistributedExecutor, ThreadedExecutor

    if request.param == "thread pool":
        local = ThreadedExecutor(2)
        yield local
        local.close()
        return
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        yield DistributedExecutor(c, "in-process threads")


card = make_card


def write_classes(path: Path, classes: np.ndarray, crs, transform) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=classes.shape[1],
        height=classes.shape[0],
        count=1,
        dtype="uint8",
        crs=crs,
        transform=transform,
        nodata=255,
    ) as d:
        d.write(classes, 1)
    return path


def geodesic_areas(gdf: gpd.GeoDataFrame) -> np.ndarray:
    ll = gdf.to_crs("EPSG:4326")
    return np.array([abs(GEOD.geometry_area_perimeter(g)[0]) for g in ll.geometry])


def test_layers_attributes_styles_and_centerline_length(client, tmp_path):
    classes = np.zeros((400, 600), np.uint8)
    classes[50:90, 50:110] = 1  # building 40 x 60 px at 0.5 m = 20 x 30 m
    classes[200:214, 20:580] = 2  # road 560 px = 280 m long, 7 m wide
    classes[300:400, 300:600] = 3  # forest
    t = Affine(0.5, 0, 400000, 0, -0.5, 4100000)
    path = write_classes(tmp_path / "classes.tif", classes, "EPSG:32615", t)
    c = card(
        ("building", "building", (230, 60, 60)), ("road", "road", (250, 200, 0)), ("forest", "landcover", (20, 120, 40))
    )
    gpkg = tmp_path / "features.gpkg"
    info = vectorize_scene(path, None, gpkg, c, client, rules=RAW, block=128)
    layers = dict(pyogrio.list_layers(gpkg))
    assert {"buildings", "roads", "road_centerlines", "landcover"} <= set(layers)
    b = gpd.read_file(gpkg, layer="buildings")
    assert b.crs == "EPSG:32615" and len(b) == 1 and b.is_valid.all()
    assert list(b.columns[:-1]) == ["class", "score", "area_m2", "perimeter_m"]
    assert b.area_m2[0] == pytest.approx(600, rel=1e-3) and b.perimeter_m[0] == pytest.approx(100, rel=1e-3)
    [line] = gpd.read_file(gpkg, layer="road_centerlines").itertuples()
    assert line.length_m == pytest.approx(280, rel=0.02)
    lc = gpd.read_file(gpkg, layer="landcover")
    assert list(lc["class"]) == [3] and list(lc["class_name"]) == ["forest"]
    assert info["layers"] == {"buildings": 1, "roads": 1, "landcover": 1, "road_centerlines": 1}
    with sqlite3.connect(gpkg) as db:
        styles = dict(db.execute("SELECT f_table_name, styleQML FROM layer_styles WHERE useAsDefault = 1"))
        assert ("layer_styles",) in db.execute("SELECT table_name FROM gpkg_contents").fetchall()
    assert set(styles) == {"buildings", "roads", "road_centerlines", "landcover"}
    assert "230,60,60" in styles["buildings"] and 'attr="class"' in styles["buildings"]
    assert "20,120,40" in styles["landcover"]


def test_empty_result_still_has_the_layer(client, tmp_path):
    path = write_classes(
        tmp_path / "c.tif", np.zeros((50, 50), np.uint8), "EPSG:32615", Affine(1, 0, 4e5, 0, -1, 4.1e6)
    )
    gpkg = tmp_path / "f.gpkg"
    vectorize_scene(path, None, gpkg, card(("building", "building", (230, 60, 60))), client)
    assert dict(pyogrio.list_layers(gpkg))["buildings"] == "MultiPolygon"
    assert len(gpd.read_file(gpkg, layer="buildings")) == 0


def test_unknown_class_index_is_refused(client, tmp_path):
    classes = np.zeros((20, 20), np.uint8)
    classes[5, 5] = 7
    path = write_classes(tmp_path / "c.tif", classes, "EPSG:32615", Affine(1, 0, 4e5, 0, -1, 4.1e6))
    with pytest.raises(InputError, match="class index 7 is not one of the model's 2 classes"):
        vectorize_scene(path, None, tmp_path / "f.gpkg", card(("building", "building", (230, 60, 60))), client)


def test_joplin_post_in_degrees_gets_areas_in_square_metres(client, tmp_path):
    """EPSG:4326 scene: area_m2 agrees with geodesic (ellipsoidal) areas within 0.5%."""
    scene = shared_file("joplin/post/tile_31500-5137.tif")
    footprints = gpd.read_file(shared_file("joplin/footprints_2020.geojson"))
    with rasterio.open(scene) as src:
        fp = footprints.to_crs(src.crs).cx[src.bounds.left : src.bounds.right, src.bounds.bottom : src.bounds.top]
        classes = rasterize(((g, 1) for g in fp.geometry), out_shape=src.shape, transform=src.transform, dtype="uint8")
        path = write_classes(tmp_path / "c.tif", classes, src.crs, src.transform)
    gpkg = tmp_path / "f.gpkg"
    vectorize_scene(path, None, gpkg, card(("building", "building", (230, 60, 60))), client, rules=RAW, block=256)
    b = gpd.read_file(gpkg, layer="buildings")
    assert b.crs == "EPSG:4326" and len(b) > 20 and b.is_valid.all()
    geodesic = geodesic_areas(b)
    assert np.abs(b.area_m2 / geodesic - 1).max() < 0.005
    assert b.area_m2.sum() == pytest.approx(geodesic.sum(), rel=0.005)
    assert 50 < b.area_m2.median() < 1000  # houses, in square metres, not square degrees


def test_polar_scene_falls_back_to_a_local_equal_area_projection(client, tmp_path):
    classes = np.zeros((200, 200), np.uint8)
    classes[50:150, 60:140] = 1
    t = Affine(2, 0, -200, 0, -2, 200)  # EPSG:3413 polar stereographic, a 400 m square around the North Pole
    path = write_classes(tmp_path / "c.tif", classes, "EPSG:3413", t)
    gpkg = tmp_path / "f.gpkg"
    vectorize_scene(path, None, gpkg, card(("ice", "landcover", (200, 200, 255))), client, rules=RAW)
    lc = gpd.read_file(gpkg, layer="landcover")
    assert len(lc) == 1 and lc.area_m2[0] == pytest.approx(geodesic_areas(lc)[0], rel=0.005)


@pytest.fixture(scope="module")
def demo_prediction(default_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    [rep] = predict_batch([DEMO_SCENE], out, default_model, PredictSettings(quiet=True))
    assert rep.ok, rep.error
    return out / "kampala_demo"


def test_real_prediction_is_independent_of_block_size(demo_prediction, default_model, client, tmp_path):
    from geounet.models.card import read_card

    c = read_card(default_model)
    results = {}
    for block in (96, 100000):
        gpkg = tmp_path / f"f{block}.gpkg"
        vectorize_scene(demo_prediction / "classes.tif", demo_prediction / "scores.tif", gpkg, c, client, block=block)
        results[block] = gpd.read_file(gpkg, layer="buildings")
    a, b = results[96], results[100000]
    assert len(a) == len(b) > 0
    assert a.area_m2.sum() == pytest.approx(b.area_m2.sum(), rel=1e-6)
    sym = shapely.union_all(a.geometry.values).symmetric_difference(shapely.union_all(b.geometry.values)).area
    assert sym <= 1e-6 * a.geometry.area.sum()


def test_predict_writes_valid_regularised_buildings(demo_prediction):
    b = gpd.read_file(demo_prediction / "features.gpkg", layer="buildings")
    assert len(b) > 5 and b.is_valid.all() and b.crs == "EPSG:3857"
    assert (b.area_m2 >= 4.0).all() and (b.score > 0.5).all()
    # corners: turning angles away from straight are mostly right angles
    angles = []
    for poly in b.to_crs(b.estimate_utm_crs()).geometry.explode():
        ring = np.asarray(poly.exterior.coords)[:-1]
        v1 = ring - np.roll(ring, 1, axis=0)
        v2 = np.roll(ring, -1, axis=0) - ring
        cross = v1[:, 0] * v2[:, 1] - v1[:, 1] * v2[:, 0]  # z of the 2-D cross product
        turn = np.degrees(np.abs(np.arctan2(cross, (v1 * v2).sum(1))))
        angles.extend(turn[turn > 10])
    angles = np.asarray(angles)
    right = np.abs(angles - 90) < 10
    assert right.mean() >= 0.7, f"only {right.mean():.0%} of {len(angles)} corners are right angles"


def test_blocks_a_sparse_class_raster_does_not_store_are_not_visited(client, tmp_path, monkeypatch):
    """A sparse COG of a mostly empty scene: only the vector blocks over stored 512 px blocks become tasks."""
    import geounet.engine.vector_stage as vs
    from geounet.io import rasters
    from geounet.io.rasters import tiled_profile, write_cog, written_blocks

    monkeypatch.setattr(rasters, "SPARSE_MIN_BLOCKS", 1)  # the sparse writer for this small raster too
    t = Affine(0.5, 0, 400000, 0, -0.5, 4100000)
    tiled = tmp_path / "classes.tiled.tif"
    with rasterio.open(tiled, "w", **tiled_profile("EPSG:32615", t, 6000, 5000, 1, "uint8", 255)) as d:
        block = np.zeros((300, 300), np.uint8)
        block[100:140, 100:160] = 1  # one building
        d.write(block, 1, window=rasterio.windows.Window(3100, 2100, 300, 300))  # inside one 512 px block
    write_cog(tiled, tmp_path / "classes.tif", "NEAREST", blocks=written_blocks(tiled))
    assert written_blocks(tmp_path / "classes.tif").sum() == 1
    seen = []
    imap = client.imap_unordered

    def counted(fn, items, *args, **kwargs):
        items = list(items)
        if fn is vs._indexed and args[0] is vs.polygonize_task:
            seen.extend(j.window for j in items)
        return imap(fn, items, *args, **kwargs)

    monkeypatch.setattr(client, "imap_unordered", counted)
    c = card(("building", "building", (230, 60, 60)))
    info = vectorize_scene(tmp_path / "classes.tif", None, tmp_path / "f.gpkg", c, client, rules=RAW, block=1024)
    assert seen == [(2048, 3072, 3072, 4096)]  # 1 of 30 blocks: the one holding the stored 512 px block
    assert info["layers"]["buildings"] == 1
    b = gpd.read_file(tmp_path / "f.gpkg", layer="buildings")
    assert b.area_m2.iloc[0] == pytest.approx(40 * 60 * 0.25, rel=1e-3)  # on the ground, not in UTM metres


def _terraces() -> tuple[np.ndarray, int]:
    """A 600 px square class raster of terraced roofs (1) with contact bands (2) between them; and the roof count."""
    classes = np.zeros((600, 600), np.uint8)
    roofs = 0
    for r in range(15, 560, 75):  # rows of terraces, across the 256 px block edges
        for c in range(8, 540, 64):
            classes[r : r + 45, c : c + 60] = 1
            classes[r : r + 45, c + 60 : c + 64] = 2  # the contact band between this roof and the next
            roofs += 1
        classes[r : r + 45, 520:600] = 0
        roofs -= 1
    return classes, roofs


def test_buildings_split_at_contacts_do_not_depend_on_the_block_size(client, tmp_path):
    """A model with a contact class: one building per roof of a terrace, the same with 256 and 1024 px blocks."""
    classes, roofs = _terraces()
    path = write_classes(tmp_path / "classes.tif", classes, "EPSG:32636", Affine(0.1, 0, 400000, 0, -0.1, 40000))
    c = card(("building", "building", (230, 60, 60)), ("contact", "background", (60, 60, 230)))
    rules = {"building": ClassRules(seed_m=1.0)}
    results = {}
    for block in (256, 1024):
        gpkg = tmp_path / f"f{block}.gpkg"
        vectorize_scene(path, None, gpkg, c, client, rules=rules, block=block)
        results[block] = gpd.read_file(gpkg, layer="buildings")
    a, b = results[256], results[1024]
    assert len(a) == len(b) == roofs
    assert np.allclose(np.sort(a.area_m2), np.sort(b.area_m2))
    # contacts kept, in the roofs (UTM grid metres, within its scale factor of ground metres)
    assert a.area_m2.sum() == pytest.approx(np.isin(classes, [1, 2]).sum() * 0.01, rel=1e-3)
    sym = shapely.union_all(a.geometry.values).symmetric_difference(shapely.union_all(b.geometry.values)).area
    assert sym <= 1e-6 * a.geometry.area.sum()
    # The same raster read by a model without a contact class: contacts are background, as before.
    plain = card(("building", "building", (230, 60, 60)), ("edge", "background", (60, 60, 230)))
    vectorize_scene(path, None, tmp_path / "plain.gpkg", plain, client, rules=rules, block=256)
    p = gpd.read_file(tmp_path / "plain.gpkg", layer="buildings")
    assert len(p) == roofs and p.area_m2.sum() == pytest.approx((classes == 1).sum() * 0.01, rel=1e-3)


def test_seam_groups_are_cut_into_runs_of_about_equal_pixels():
    from geounet.engine.vector_stage import balanced_runs

    runs = balanced_runs([10**6, 10, 10, 10**6, 5, 10**6], 4)
    assert [r.tolist() for r in runs] == [[0, 1, 2], [3, 4], [5]]  # one heavy group each
    assert np.concatenate(runs).tolist() == list(range(6))  # consecutive, every group once
    assert len(balanced_runs([10] * 100, 8)) == 1  # too little work to split
    assert [len(r) for r in balanced_runs([], 4)] == [0]
    heavy = balanced_runs([100_000] * 40, 4)
    assert len(heavy) == 4 and all(len(r) == 10 for r in heavy)


@pytest.mark.parametrize("waiting_rows", [200_000, 0])
def test_rows_go_to_the_file_in_the_blocks_raster_order(tmp_path, monkeypatch, waiting_rows):
    """Blocks finish in any order; their rows are written in raster order (a block waits for those
    before it; one never handed over is settled at the end). Past WAITING_ROWS rows waiting, they
    are written as they are (bounded memory) and the order is the completion order."""
    import geounet.engine.vector_stage as vs
    from geounet.compute.grid import GeoGrid
    from geounet.compute.vectorize import Pieces
    from geounet.engine.executors import ThreadedExecutor

    monkeypatch.setattr(vs, "WAITING_ROWS", waiting_rows)
    crs = "EPSG:32615"
    grid = GeoGrid(rasterio.crs.CRS.from_string(crs).to_wkt(), (0.5, 0, 400000, 0, -0.5, 4100000), 512, 512)
    executor = ThreadedExecutor(1)
    stream = vs.VectorStream(
        tmp_path / "f.gpkg", card(("building", "building", (230, 60, 60))), executor, grid, RAW, 256
    )
    assert list(stream.jobs) == [(0, 0), (0, 1), (1, 0), (1, 1)]

    def polygons(k: int) -> tuple[dict[str, gpd.GeoDataFrame], Pieces]:
        row = {"class": ["building"], "score": [0.5], "area_m2": [float(k)], "perimeter_m": [4.0]}
        geom = shapely.box(400000 + k, 4099000, 400001 + k, 4099001)
        return {"buildings": gpd.GeoDataFrame(row, geometry=[geom], crs=crs)}, Pieces()

    try:
        stream.block_polygonized((1, 1), polygons(3))  # waits for the blocks before it
        stream.block_polygonized((0, 1), polygons(1))
        stream.block_polygonized((0, 0), polygons(0))  # (0, 0) and (0, 1) go; (1, 1) waits for (1, 0)
        stream._settle_rest()  # (1, 0) was never handed over: it held nothing
        stream.writer.flush()
    finally:
        executor.close()
    written = list(gpd.read_file(tmp_path / "f.gpkg", layer="buildings").area_m2)
    assert written == ([0.0, 1.0, 3.0] if waiting_rows else [3.0, 1.0, 0.0])
