"""Decimated views of the pair: the radiometry sample and the quicklook PNG (shared stretch, grade outlines)."""

from __future__ import annotations

import warnings

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from geounet.compute.change import GRADE_COLOURS
from geounet.compute.grid import Box
from geounet.damage.mosaic import mosaic_vrt
from geounet.damage.preview import GAP, read_pair_preview, write_quicklook
from geounet.io.quicklook import stretch
from geounet.models.card import read_card


@pytest.fixture(scope="module")
def vrts(pair, tmp_path_factory):
    d = tmp_path_factory.mktemp("preview")
    card = read_card(pair.model)
    pre_xml, grid = mosaic_vrt([pair.folder / "pre.tif"], card, "pre")
    (d / "pre.vrt").write_text(pre_xml)
    (d / "post.vrt").write_text(mosaic_vrt([pair.folder / "post.tif"], card, "post")[0])
    return d, grid


def test_pair_preview_is_decimated_to_the_size_asked(vrts):
    d, grid = vrts
    pre, post, ok = read_pair_preview(d / "pre.vrt", d / "post.vrt", grid, Box(0, 0, 256, 128), 64, [1, 2, 3])
    assert pre.shape == post.shape == (3, 64, 32) and ok.shape == (2, 64, 32) and ok.all()  # 256 rows, 128 cols


def test_quicklook_shows_both_epochs_and_outlines_in_grade_colours(pair, vrts, tmp_path):
    d, grid = vrts
    table = pair.footprints().assign(damage=[pair.expected(k) for k in range(9)])
    write_quicklook(d / "pre.vrt", d / "post.vrt", grid, grid.extent, table, tmp_path / "q.png", 200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "q.png") as png:
            img = png.read()
    panel = (200 - GAP) // 2
    assert img.shape == (3, panel, 2 * panel + GAP)
    assert (img[:, :, panel : panel + GAP] == 255).all()  # the gap
    colours = {tuple(int(v) for v in img[:, r, c]) for r in range(panel) for c in range(img.shape[2])}
    assert GRADE_COLOURS["destroyed"] in colours and GRADE_COLOURS["no-damage"] in colours
    assert not list(tmp_path.glob("*.aux.xml"))


def test_an_empty_table_still_gives_a_picture(vrts, tmp_path):
    d, grid = vrts
    empty = gpd.GeoDataFrame({"damage": []}, geometry=[], crs=grid.crs_wkt)
    write_quicklook(d / "pre.vrt", d / "post.vrt", grid, Box(0, 0, 100, 200), empty, tmp_path / "q.png", 1600)
    assert (tmp_path / "q.png").exists()


# geounet.io.quicklook.stretch's options for the damage quicklook (its default behaviour: tests/io/test_quicklook.py)


def test_one_range_over_all_bands_keeps_the_colour_balance():
    pixels = np.stack([np.linspace(0, 100, 100), np.linspace(0, 200, 100)]).reshape(2, 10, 10).astype(np.uint8)
    valid = np.ones((10, 10), bool)
    per_band = stretch(pixels, valid, keep_uint8=False)
    shared = stretch(pixels, valid, per_band=False, keep_uint8=False)
    assert per_band[0].max() == per_band[1].max() == 255  # each band to full range
    assert shared[1].max() == 255 and shared[0].max() < 140  # band 0 stays darker


def test_uint8_is_kept_unless_asked_and_invalid_pixels_take_the_fill():
    pixels = np.arange(48, dtype=np.uint8).reshape(3, 4, 4) + 100
    valid = np.ones((4, 4), bool)
    valid[0, 0] = False
    assert stretch(pixels, valid) is pixels
    kept = stretch(pixels, valid, fill=255)
    assert kept is not pixels and (kept[:, 0, 0] == 255).all() and (kept[:, 1:, :] == pixels[:, 1:, :]).all()
    out = stretch(pixels, valid, per_band=False, keep_uint8=False, fill=255)
    assert (out[:, 0, 0] == 255).all() and out[:, valid].min() == 0 and out[:, valid].max() == 255
    assert (stretch(pixels, np.zeros((4, 4), bool), keep_uint8=False, fill=255) == 255).all()  # nothing valid: white
