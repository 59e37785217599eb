"""Scenes that are not 8-bit, scaled to 8 bits for 8-bit models: percentiles of the valid pixels, one scale a scene."""

import numpy as np
import rasterio

from geounet.io.radiometry import TARGET, ByteScale, needs_byte_scale, scene_byte_scale
from tests.helpers import make_tiny_model, write_scene


def test_percentiles_come_from_the_valid_pixels_and_go_where_8_bit_imagery_has_them(tmp_path):
    band = np.arange(100 * 100, dtype=np.uint16).reshape(100, 100)  # 0 .. 9999, each value once
    data = np.stack([band, band // 2 + 1000])
    data[:, :10, :] = 65535  # nodata: a tenth of the rows
    scene = write_scene(tmp_path / "u16.tif", data, nodata=65535)
    with rasterio.open(scene) as src:
        scale = scene_byte_scale(src, [1, 2])
    valid = band[10:]
    assert np.allclose(scale.low[0], np.percentile(valid, 2)) and np.allclose(scale.high[0], np.percentile(valid, 98))
    assert np.allclose(scale.low[1], np.percentile(valid // 2 + 1000, 2))
    lo, hi = scale.low[0], scale.high[0]
    out = scale.apply(np.array([[[lo - 50, lo, hi, 60000, -1e9]], [[0, 0, 0, 0, 0]]]))
    assert scale.target == TARGET == (50.0, 200.0)
    assert out.dtype == np.uint8 and out[0].tolist() == [[round(50 - 50 * 150 / (hi - lo)), 50, 200, 255, 0]]
    middle = ByteScale((100.0,), (300.0,), (0.0, 255.0)).apply(np.array([[[150, 200, 201]]], np.uint16))
    assert middle.tolist() == [[[64, 128, 129]]]  # (x - 100) / 200 * 255, rounded (127.5 to even)


def test_which_scenes_need_scaling(tmp_path):
    card_path = make_tiny_model(tmp_path / "tiny.safetensors")
    from geounet.models.card import read_card

    card = read_card(card_path)
    cases = {np.uint8: False, np.uint16: True, np.int16: True, np.float32: True, np.complex64: False}
    for dtype, expected in cases.items():
        scene = write_scene(tmp_path / f"{np.dtype(dtype).name}.tif", np.zeros((3, 8, 8), dtype))
        with rasterio.open(scene) as src:
            assert needs_byte_scale(src, card) is expected, dtype


def test_a_float_scenes_nan_becomes_0_without_a_warning():
    import warnings

    from geounet.io.quicklook import stretch

    pixels = np.array([[[0.1, np.nan, 0.3, np.inf]]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" would fail here
        scaled = ByteScale((0.1,), (0.3,)).apply(pixels)
        shown = stretch(pixels, np.ones((1, 4), bool))  # NaN among the valid pixels (no nodata declared)
    assert scaled.tolist() == [[[50, 0, 200, 255]]]
    assert shown[0, 0, 0] == 0 and shown[0, 0, 2] == 255 and shown[0, 0, 1] == 0
