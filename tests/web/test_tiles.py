"""Raster tiles: Web Mercator maths, and pyramids whose pixels are where the raster's are."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer

from geounet.web.mercator import HALF_WORLD, TILE, TileRange, lonlat_bounds, resolution, zoom_for_resolution
from geounet.web.raster_tiles import RasterLayer, write_pyramid, zoom_range
from tests.helpers import write_scene

ORIGIN = (500000.0, 5800000.0)  # EPSG:32633, about 52.3 N 15 E


def test_zoom_levels_and_tile_ranges():
    assert resolution(0) == pytest.approx(2 * HALF_WORLD / 256)
    assert resolution(19) == pytest.approx(0.2986, abs=1e-4)
    assert zoom_for_resolution(0.3) == 19 and zoom_for_resolution(10.0) == 14 and zoom_for_resolution(1e9) == 0
    whole = TileRange.covering((-HALF_WORLD, -HALF_WORLD, HALF_WORLD, HALF_WORLD), 3)
    assert (whole.x0, whole.y0, whole.x1, whole.y1, whole.count) == (0, 0, 7, 7, 64)
    one = TileRange.covering((1.0, 1.0, 2.0, 2.0), 10)  # just north-east of (0, 0): tile (512, 511)
    assert (one.x0, one.y0, one.x1, one.y1) == (512, 511, 512, 511)
    assert one.transform @ (0, TILE) == pytest.approx((0.0, 0.0), abs=1e-6)  # its bottom-left corner is the origin
    w, s, e, n = lonlat_bounds((-HALF_WORLD, -HALF_WORLD, HALF_WORLD, HALF_WORLD))
    assert (w, e) == pytest.approx((-180, 180)) and n == pytest.approx(85.0511, abs=1e-4) and s == -n


def _pixel(folder: Path, zoom: int, x: float, y: float, crs: str, ext: str) -> np.ndarray | None:
    """RGBA of the tile pixel at (x, y) in ``crs``, or None when its tile was not written."""
    mx, my = Transformer.from_crs(crs, "EPSG:3857", always_xy=True).transform(x, y)
    res = resolution(zoom)
    px, py = (mx + HALF_WORLD) / res, (HALF_WORLD - my) / res
    tile = folder / str(zoom) / str(int(px // TILE)) / f"{int(py // TILE)}.{ext}"
    if not tile.is_file():
        return None
    img = np.asarray(Image.open(io.BytesIO(tile.read_bytes())).convert("RGBA"))
    return img[int(py % TILE), int(px % TILE)]


def test_class_tiles_draw_each_class_where_it_is_and_nothing_elsewhere(tmp_path):
    values = np.zeros((1, 400, 400), np.uint8)
    values[0, 100:200, 50:150] = 1  # a 15 m square of class 1 (0.15 m pixels)
    values[0, 300:380, 300:380] = 2
    values[0, :, 390:] = 255  # nodata strip
    src = write_scene(tmp_path / "classes.tif", values, nodata=255)
    zooms = zoom_range(str(src))
    assert zooms[1] == zoom_for_resolution(0.15 / math.cos(math.radians(52.3)))
    palette = (None, (230, 60, 60), (20, 120, 250))
    p = write_pyramid(RasterLayer("classes", "Classes", str(src), (1,), palette), tmp_path / "tiles", zooms)
    assert (p.minzoom, p.maxzoom) == zooms and p.tiles > 0
    folder = tmp_path / "tiles" / "classes"

    def at(row: int, col: int, zoom: int = zooms[1]) -> np.ndarray | None:
        x, y = ORIGIN[0] + (col + 0.5) * 0.15, ORIGIN[1] - (row + 0.5) * 0.15
        return _pixel(folder, zoom, x, y, "EPSG:32633", "png")

    assert list(at(150, 100)) == [230, 60, 60, 255]
    assert list(at(340, 340)) == [20, 120, 250, 255]
    for row, col in ((20, 20), (250, 250), (150, 395)):  # background, background, nodata: transparent or no tile
        got = at(row, col)
        assert got is None or got[3] == 0, (row, col, got)
    # the coarsest zoom (down to the raster in one tile): the big square still there
    assert zooms[0] < zooms[1]
    assert list(at(150, 100, zooms[0])) == [230, 60, 60, 255]
    # nothing outside the raster is written: every tile meets its bounds
    for png in folder.rglob("*.png"):
        z, x, y = (int(v) for v in png.with_suffix("").parts[-3:])
        rng = TileRange.covering(_bounds_3857(src), z)
        assert rng.x0 <= x <= rng.x1 and rng.y0 <= y <= rng.y1


def _bounds_3857(path: Path) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as src:
        return transform_bounds(src.crs, "EPSG:3857", *src.bounds)


def test_image_tiles_stretch_16_bit_scenes_and_keep_the_mask(tmp_path):
    data = np.full((3, 2000, 2000), 1000, np.uint16)  # 300 m at 0.15 m: four zooms
    data[:, :, 1000:] = 3000  # dark west half, bright east half
    mask = np.ones((2000, 2000), bool)
    mask[:400] = False  # the northern strip has no data
    src = write_scene(tmp_path / "scene.tif", data, mask=mask, res=0.15)
    zooms = zoom_range(str(src))
    write_pyramid(RasterLayer("scene", "Scene", str(src), (1, 2, 3)), tmp_path / "tiles", zooms)
    folder = tmp_path / "tiles" / "scene"

    def at(row: int, col: int, zoom: int) -> np.ndarray | None:
        x, y = ORIGIN[0] + (col + 0.5) * 0.15, ORIGIN[1] - (row + 0.5) * 0.15
        return _pixel(folder, zoom, x, y, "EPSG:32633", "webp")

    # the finest zoom is warped from the scene; the coarser ones (no overviews here) from the tiles below
    assert zooms[1] - zooms[0] >= 2
    for z in (zooms[1], zooms[0]):
        dark, bright, empty = at(1200, 400, z), at(1200, 1600, z), at(150, 800, z)
        assert dark is not None and bright is not None, z
        assert dark[3] == 255 and bright[3] == 255, z
        assert dark[:3].max() < 30 and bright[:3].min() > 225, (z, dark, bright)  # the 2-98 % stretch
        assert empty is None or empty[3] == 0, (z, empty)


def test_pyramids_read_block_by_block_and_a_scene_without_overviews_once(tmp_path, monkeypatch):
    """Every warped read is at most one block; without overviews only the finest zoom reads the raster."""
    from rasterio.vrt import WarpedVRT

    from geounet.web import raster_tiles

    reads: list[tuple[int, int, float]] = []
    original = WarpedVRT.read

    def read(self, *args, **kwargs):
        w = kwargs["window"]
        reads.append((int(w.width), int(w.height), self.transform.a))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WarpedVRT, "read", read)
    src = write_scene(tmp_path / "scene.tif", np.full((3, 3000, 3000), 100, np.uint8), res=0.15)
    zooms = zoom_range(str(src))
    assert zooms[1] - zooms[0] >= 3
    write_pyramid(RasterLayer("scene", "Scene", str(src), (1, 2, 3)), tmp_path / "tiles", zooms)
    block = raster_tiles.BLOCK_TILES * TILE
    assert reads and all(w <= block and h <= block for w, h, _ in reads)
    assert all(res == pytest.approx(resolution(zooms[1])) for _, _, res in reads)  # the finest zoom only
    tiles = {int(p.parts[-3]) for p in (tmp_path / "tiles" / "scene").rglob("*.webp")}
    assert tiles == set(range(zooms[0], zooms[1] + 1))  # every zoom was written


def test_coarser_zooms_of_a_raster_with_overviews_read_its_overviews(tmp_path, monkeypatch):
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    seen: dict[float, set[int]] = {}
    original = WarpedVRT.read

    def read(self, *args, **kwargs):
        seen.setdefault(round(self.transform.a, 6), set()).add(self.src_dataset.width)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WarpedVRT, "read", read)
    values = np.zeros((1, 3000, 3000), np.uint8)
    values[0, 1000:2000, 1000:2000] = 1
    src = write_scene(tmp_path / "classes.tif", values, res=0.15, nodata=255)
    with rasterio.open(src, "r+") as ds:
        ds.build_overviews([2, 4, 8], Resampling.nearest)
    zooms = zoom_range(str(src))
    write_pyramid(RasterLayer("classes", "C", str(src), (1,), (None, (255, 0, 0))), tmp_path / "tiles", zooms)
    widths = [min(seen[round(resolution(z), 6)]) for z in range(zooms[0], zooms[1] + 1)]
    assert widths[-1] == 3000 and widths[0] < 3000  # the finest zoom from the raster, the coarsest from an overview
    assert widths == sorted(widths)


def test_only_the_area_with_data_is_tiled(tmp_path):
    """An --aoi run's classes are nodata outside the area: the scene is tiled only where they have data."""
    from geounet.web.raster_tiles import data_bounds

    values = np.full((1, 2000, 2000), 255, np.uint8)
    values[0, 1500:1800, 200:500] = 1  # data in the south-west only (0.15 m pixels)
    classes = write_scene(tmp_path / "classes.tif", values, res=0.15, nodata=255)
    scene = write_scene(tmp_path / "scene.tif", np.full((3, 2000, 2000), 80, np.uint8), res=0.15)
    box = data_bounds(str(classes))
    assert box is not None
    with rasterio.open(classes) as ds:
        want = rasterio.windows.bounds(rasterio.windows.Window(200, 1500, 300, 300), ds.transform)
    to_3857 = Transformer.from_crs("EPSG:32633", "EPSG:3857", always_xy=True)
    (wx0, wx1), (wy0, wy1) = to_3857.transform([want[0], want[2]], [want[1], want[3]])
    assert box[0] <= wx0 and box[1] <= wy0 and box[2] >= wx1 and box[3] >= wy1  # holds the data ...
    assert box[2] - box[0] < 1.2 * (wx1 - wx0) + 2 and box[3] - box[1] < 1.2 * (wy1 - wy0) + 2  # ... and not much more
    zooms = zoom_range(str(scene))
    p = write_pyramid(RasterLayer("scene", "S", str(scene), (1, 2, 3)), tmp_path / "tiles", zooms, box)
    rng = TileRange.covering(box, zooms[1])
    full = TileRange.covering(_bounds_3857(scene), zooms[1])
    finest = list((tmp_path / "tiles" / "scene" / str(zooms[1])).rglob("*.webp"))
    assert 0 < len(finest) <= rng.count < full.count / 4
    for f in finest:
        x, y = int(f.parent.name), int(f.stem)
        assert rng.x0 <= x <= rng.x1 and rng.y0 <= y <= rng.y1
    assert p.bounds == pytest.approx(lonlat_bounds(box), abs=1e-9)  # the map fits the data, not the scene
    assert (
        data_bounds(str(write_scene(tmp_path / "empty.tif", np.full((1, 50, 50), 255, np.uint8), nodata=255))) is None
    )
