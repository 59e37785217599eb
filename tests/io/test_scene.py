import math

import numpy as np
import pytest
import rasterio
from affine import Affine

from geounet.compute.grid import Box
from geounet.errors import InputError
from geounet.io.scene import (
    check_scene,
    ground_pixel_size,
    ground_resolution,
    open_scene,
    open_working,
    read_box,
    working_grid,
)
from geounet.models.card import read_card
from tests.helpers import DEMO_SCENE, write_scene


def test_ground_resolution_web_mercator_shrinks_with_latitude():
    # EPSG:3857 metres are stretched by 1/cos(lat): 1 m/px at 60 N is 0.5 m on the ground
    y60 = 8399737.89  # northing of 60 N in Web Mercator
    res = ground_resolution("EPSG:3857", Affine(1, 0, 0, 0, -1, y60 + 50), 100, 100)
    assert res == pytest.approx(0.5, rel=0.01)


def test_ground_resolution_of_degrees_is_in_metres():
    # 6e-6 degrees at 37 N: 0.668 m north-south, 0.534 m east-west -> geometric mean
    res = ground_resolution("EPSG:4326", Affine(6e-6, 0, -94.5, 0, -6e-6, 37.05), 1024, 1024)
    expected = math.sqrt(6e-6 * 111_000 * 6e-6 * 111_320 * math.cos(math.radians(37.05)))
    assert res == pytest.approx(expected, rel=0.01)


def test_ground_resolution_utm_is_the_pixel_size():
    assert ground_resolution("EPSG:32633", Affine(10, 0, 500000, 0, -10, 5800000), 50, 50) == pytest.approx(
        10, rel=1e-3
    )


def test_working_grid_resamples_only_when_resolutions_differ(tiny_model, tmp_path):
    card = read_card(tiny_model)  # trained at 0.15 m
    close = write_scene(tmp_path / "close.tif", np.zeros((3, 40, 60), np.uint8), res=0.17)
    far = write_scene(tmp_path / "far.tif", np.zeros((3, 40, 60), np.uint8), res=0.6)
    with rasterio.open(close) as src:
        g = working_grid(src, card)
        assert not g.resampled and (g.width, g.height) == (60, 40)
    with rasterio.open(far) as src:
        g = working_grid(src, card)
        assert g.resampled and (g.width, g.height) == (240, 160)
        # same extent: the corners agree
        assert g.affine @ (240, 160) == pytest.approx(src.transform @ (60, 40))


def test_read_box_pads_by_reflection_and_marks_padding_invalid(tiny_model):
    card = read_card(tiny_model)
    with open_scene(DEMO_SCENE) as src:
        g = working_grid(src, card, tolerance=10)  # no resampling
        assert not g.resampled
        with open_working(DEMO_SCENE, g) as ds:
            data, valid = read_box(ds, card.bands, Box(-8, -8, 56, 56), (g.height, g.width))
            direct = src.read(card.bands, window=((0, 56), (0, 56)))
            mask = src.dataset_mask(window=((0, 56), (0, 56))) > 0
    assert data.shape == (3, 64, 64) and valid.shape == (64, 64)
    np.testing.assert_array_equal(data[:, 8:, 8:], direct)
    np.testing.assert_array_equal(data[:, 7, 8:], direct[:, 1])  # mirror of row 1
    assert not valid[:8].any() and not valid[:, :8].any()
    np.testing.assert_array_equal(valid[8:, 8:], mask)


def test_check_scene_reports_band_and_dtype_problems(tiny_model, tmp_path):
    card = read_card(tiny_model)
    one_band = write_scene(tmp_path / "pan.tif", np.zeros((1, 20, 20), np.uint8))
    wrong_dtype = write_scene(tmp_path / "u16.tif", np.zeros((3, 20, 20), np.uint16))
    with open_scene(one_band) as src, pytest.raises(InputError, match=r"has 1 band\(s\) but model"):
        check_scene(src, card)
    with open_scene(wrong_dtype) as src, pytest.raises(InputError, match="band 1 is uint16 but model .* expects uint8"):
        check_scene(src, card)


def test_ground_pixel_size_in_x_and_y() -> None:
    # 1e-5 degree pixels at the equator: about 1.113 m east-west, 1.106 m north-south.
    dx, dy = ground_pixel_size("EPSG:4326", Affine(1e-5, 0, 32.0, 0, -1e-5, 0.005), 1000, 1000)
    assert dx == pytest.approx(1.1132, abs=1e-3) and dy == pytest.approx(1.1057, abs=1e-3)
    # EPSG:3857 at 60 N: 1 m map units are about 0.5 m on the ground.
    y60 = 8399737.89
    dx, dy = ground_pixel_size("EPSG:3857", Affine(1, 0, 0, 0, -1, y60 + 50), 100, 100)
    assert dx == pytest.approx(0.5, rel=0.01) and dy == pytest.approx(0.5, rel=0.01)


def _vrt(path, source, size=20):
    """A 3-band VRT over ``source`` (a path relative to the VRT), 0.15 m pixels in UTM 33N."""
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">{source}'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32633</SRS>'
        f"<GeoTransform>500000, 0.15, 0, 5800000, 0, -0.15</GeoTransform>{bands}</VRTDataset>"
    )
    return path


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("case", ["vrt_source", "nested_vrt_source", "gcps", "rotated", "no_crs"])
def test_check_scene_says_what_is_wrong_with_the_georeferencing_or_sources(case, tiny_model, tmp_path):
    from rasterio.control import GroundControlPoint

    card = read_card(tiny_model)
    pixels = np.zeros((3, 20, 20), np.uint8)
    expected = {
        "vrt_source": f"VRT source {tmp_path / 'gone.tif'} not found",
        "nested_vrt_source": f"VRT source {tmp_path / 'gone.tif'} not found",
        "gcps": r"georeferenced by 3 ground control points only, .* \(gdalwarp -r bilinear IN OUT.tif\)",
        "rotated": "rotated geotransforms are not supported",
        "no_crs": "raster has no CRS",
    }[case]
    if case == "vrt_source":
        scene = _vrt(tmp_path / "scene.vrt", "gone.tif")
    elif case == "nested_vrt_source":
        _vrt(tmp_path / "inner.vrt", "gone.tif")
        scene = _vrt(tmp_path / "scene.vrt", "inner.vrt")
    elif case == "gcps":
        scene = write_scene(tmp_path / "gcps.tif", pixels, crs=None)
        gcps = [GroundControlPoint(0, 0, 500000, 5800000), GroundControlPoint(0, 20, 500003, 5800000)]
        with rasterio.open(scene, "r+") as dst:
            dst.gcps = (gcps + [GroundControlPoint(20, 0, 500000, 5799997)], rasterio.crs.CRS.from_epsg(32633))
    elif case == "rotated":
        scene = write_scene(tmp_path / "rot.tif", pixels)
        with rasterio.open(scene, "r+") as dst:
            dst.transform = Affine(0.1, 0.1, 500000, 0.1, -0.1, 5800000)
    else:
        scene = tmp_path / "nocrs.tif"
        profile = dict(
            driver="GTiff", width=20, height=20, count=3, dtype="uint8", transform=Affine(1, 0, 0, 0, -1, 20)
        )
        with rasterio.open(scene, "w", **profile) as dst:
            dst.write(pixels)
    with open_scene(scene) as src, pytest.raises(InputError, match=expected) as info:
        check_scene(src, card)
    assert "\n" not in str(info.value) and "truncated" not in str(info.value)
