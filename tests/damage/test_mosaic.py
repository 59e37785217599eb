"""VRT mosaics of each epoch's tiles, their overlap on the pre grid, post warped onto pre."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from geounet.compute.grid import Box, GeoGrid
from geounet.damage.mosaic import as_window, mosaic_vrt, overlap_box, post_on_pre
from geounet.errors import InputError
from geounet.models.card import read_card
from tests.helpers import shared_file, write_scene


@pytest.fixture(scope="module")
def card(pair):
    return read_card(pair.model)


def test_two_tiles_with_a_gap_mosaic_on_one_grid_and_the_gap_is_nodata(pair, card, tmp_path):
    """Two tiles side by side with a 10 px gap: one grid over both, each tile in place, the gap invalid."""
    x, y = pair.origin
    left = np.full((3, 40, 30), 60, np.uint8)
    right = np.full((3, 40, 20), 200, np.uint8)
    pair.write(tmp_path / "l.tif", left)
    pair.write(tmp_path / "r.tif", right, origin=(x + 40 * pair.res, y))
    xml, grid = mosaic_vrt([tmp_path / "l.tif", tmp_path / "r.tif"], card, "pre")
    assert isinstance(grid, GeoGrid) and (grid.width, grid.height) == (60, 40)
    assert grid.affine == pair.transform
    (tmp_path / "m.vrt").write_text(xml)
    with rasterio.open(tmp_path / "m.vrt") as src:
        band, mask = src.read(1), src.dataset_mask()
    assert (band[:, :30] == 60).all() and (band[:, 40:] == 200).all()
    assert (mask[:, :30] > 0).all() and (mask[:, 30:40] == 0).all() and (mask[:, 40:] > 0).all()


def test_tiles_of_one_epoch_must_share_a_crs(pair, card, tmp_path):
    pixels = np.full((3, 20, 20), 90, np.uint8)
    pair.write(tmp_path / "a.tif", pixels)
    write_scene(tmp_path / "b.tif", pixels, crs="EPSG:4326", res=6e-6, origin=(-94.5, 37.07))
    with pytest.raises(InputError, match="post tiles must share one CRS"):
        mosaic_vrt([tmp_path / "a.tif", tmp_path / "b.tif"], card, "post")


def test_overlap_is_the_pre_box_post_covers_and_none_when_disjoint(pair):
    pre = GeoGrid("EPSG:26915", tuple(pair.transform)[:6], 100, 80)
    shifted = pair.transform * pair.transform.translation(30, -10)  # post starts 30 px east, 10 px north
    post = GeoGrid("EPSG:26915", tuple(shifted)[:6], 100, 50)
    box = overlap_box(pre, post)
    assert box == Box(0, 30, 40, 100)
    assert as_window(box) == rasterio.windows.Window(30, 0, 70, 40)
    far = GeoGrid("EPSG:26915", tuple(pair.transform * pair.transform.translation(500, 0))[:6], 10, 10)
    assert overlap_box(pre, far) is None


def test_post_in_another_crs_lands_on_the_same_pixel(pair, card, tmp_path):
    """A marker at a known ground point, written in EPSG:4326, is read back at that point's pre pixel."""
    pair.write(tmp_path / "pre.tif", np.full((3, 200, 200), 50, np.uint8))
    x, y = pair.origin[0] + 123.5 * pair.res, pair.origin[1] - 77.5 * pair.res  # centre of pre pixel (77, 123)
    (lon,), (lat,) = warp_transform(pair.crs, "EPSG:4326", [x], [y])
    d = 6e-6
    lon0, lat0 = lon - 100.3 * d, lat + 90.6 * d  # marker pixel is (row 90, col 100) of post
    post = np.full((3, 200, 200), 50, np.uint8)
    post[:, 90, 100] = 250
    write_scene(tmp_path / "post.tif", post, crs="EPSG:4326", res=d, origin=(lon0, lat0))
    pre_xml, pre_grid = mosaic_vrt([tmp_path / "pre.tif"], card, "pre")
    post_xml, post_grid = mosaic_vrt([tmp_path / "post.tif"], card, "post")
    (tmp_path / "post.vrt").write_text(post_xml)
    assert isinstance(pre_grid, GeoGrid) and overlap_box(pre_grid, post_grid) is not None
    with rasterio.open(tmp_path / "post.vrt") as src, post_on_pre(src, pre_grid) as vrt:
        band = vrt.read(1)
    row, col = np.unravel_index(np.argmax(band), band.shape)
    assert (row, col) == (77, 123)


def test_joplin_mosaics_and_overlap(tmp_path, default_model):
    """The real pair: 4 pre tiles (EPSG:26915) and 6 post tiles (EPSG:4326) mosaic and overlap as expected."""
    joplin = shared_file("joplin")
    card = read_card(default_model)
    pre_xml, pre = mosaic_vrt(sorted((joplin / "pre").glob("*.tif")), card, "pre")
    post_xml, post = mosaic_vrt(sorted((joplin / "post").glob("*.tif")), card, "post")
    assert (pre.width, pre.height) == (2048, 2048) and (post.width, post.height) == (3072, 2048)
    box = overlap_box(pre, post)
    assert (box.width, box.height) == (1992, 1625)  # about 1.2 x 1.0 km at 0.6 m
    (tmp_path / "post.vrt").write_text(post_xml)
    (tmp_path / "pre.vrt").write_text(pre_xml)
    block = rasterio.windows.Window(box.col0 + 900, box.row0 + 700, 64, 64)
    with rasterio.open(tmp_path / "pre.vrt") as p:
        assert (p.dataset_mask(window=block) > 0).all() and p.read(1, window=block).std() > 0
    with rasterio.open(tmp_path / "post.vrt") as src, post_on_pre(src, pre) as vrt:
        assert (vrt.read(4, window=block) > 0).all() and vrt.read(1, window=block).std() > 0
        assert (vrt.read(4, window=rasterio.windows.Window(0, 0, 32, 32)) == 0).all()  # pre corner: no post
