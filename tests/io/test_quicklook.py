"""quicklook: decimated scene + class overlay -> small RGBA PNG."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from geounet.io.quicklook import display_bands, overlay, quicklook_shape, stretch, write_quicklook
from geounet.models.card import ClassInfo, ModelCard
from tests.helpers import write_scene


def _card(bands=(1, 2, 3), names=("red", "green", "blue")) -> ModelCard:
    return ModelCard(
        name="t",
        classes=[ClassInfo("background", (0, 0, 0), "background"), ClassInfo("building", (255, 0, 0), "building")],
        bands=list(bands),
        band_names=list(names),
        mean=[0.5] * len(bands),
        std=[0.25] * len(bands),
        scale=255.0,
        input_dtypes=["uint8"],
        resolution_m=0.15,
        tile_size=128,
        overlap=32,
    )


def test_shape_keeps_aspect_and_never_upsamples():
    assert quicklook_shape(10000, 5000, 1024) == (512, 1024)
    assert quicklook_shape(300, 4000, 1024) == (1024, 77)
    assert quicklook_shape(200, 100, 1024) == (100, 200)


def test_overlay_draws_classes_not_background_nor_nodata():
    rgb = np.full((3, 2, 3), 100, np.uint8)
    classes = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)
    valid = np.array([[True, True, True], [True, False, True]])
    colors = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    out = overlay(rgb, valid, classes, colors, np.array([False, True]), alpha=0.5)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (100, 100, 100, 255)  # background: the scene as is
    assert tuple(out[0, 1]) == (178, 50, 50, 255)  # building: half red
    assert tuple(out[0, 2]) == (100, 100, 100, 255)  # nodata class: not drawn
    assert out[1, 1, 3] == 0  # outside the scene's mask: transparent


def test_stretch_uint16_to_uint8_over_valid_pixels():
    band = np.arange(100, dtype=np.uint16).reshape(1, 10, 10) * 40
    valid = np.ones((10, 10), bool)
    out = stretch(band, valid)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_display_bands_follow_band_names():
    assert display_bands(_card((3, 2, 1), ("blue", "green", "red"))) == [1, 2, 3]
    assert display_bands(_card((1,), ("pan",))) == [1, 1, 1]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # reading the PNG back
def test_write_quicklook_small_png_with_mask(tmp_path):
    h, w = 300, 2400  # long side 2400 -> 1024
    data = np.full((3, h, w), 120, np.uint8)
    mask = np.ones((h, w), bool)
    mask[:, : w // 4] = False
    scene = write_scene(tmp_path / "s.tif", data, mask=mask)
    classes = np.zeros((h, w), np.uint8)
    classes[:, w // 2 :] = 1
    with rasterio.open(scene) as src:
        prof = dict(
            driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs=src.crs, transform=src.transform, nodata=255
        )
    with rasterio.open(tmp_path / "classes.tif", "w", **prof) as dst:
        dst.write(classes, 1)
    rows, cols = write_quicklook(scene, tmp_path / "classes.tif", _card(), tmp_path / "q.png", max_side=1024)
    assert (rows, cols) == (128, 1024)
    with rasterio.open(tmp_path / "q.png") as png:
        assert png.driver == "PNG" and png.count == 4 and (png.height, png.width) == (128, 1024)
        img = png.read()
    assert img[3, :, :200].max() == 0 and img[3, :, 300:].min() == 255  # masked quarter transparent
    assert tuple(img[:3, 64, 100 + 512]) != tuple(img[:3, 64, 400])  # building half tinted
    assert img[0, 64, 900] > img[1, 64, 900]  # tinted red
    assert not list(tmp_path.glob(".q.png*")) and not list(tmp_path.glob("*.aux.xml"))
