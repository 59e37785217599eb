import numpy as np
import pytest

from geounet.compute.blend import blend_tiles, blend_weights, ramp
from geounet.compute.grid import TileGrid


def test_ramp_is_complementary_and_smooth():
    r = ramp(64)
    np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-6)
    assert np.all(np.diff(r) > 0) and 0 < r[0] < 0.01 and 0.99 < r[-1] < 1


@pytest.mark.parametrize("shape,tile,overlap", [((700, 500), 256, 64), ((300, 300), 128, 32), ((90, 1000), 64, 16)])
def test_weights_sum_to_one_over_the_scene(shape, tile, overlap):
    g = TileGrid(*shape, tile_size=tile, overlap=overlap)
    h = overlap // 2
    acc = np.zeros((shape[0] + tile + h, shape[1] + tile + h))
    for t in g.tiles():
        acc[t.box.row0 + h : t.box.row1 + h, t.box.col0 + h : t.box.col1 + h] += blend_weights(tile, overlap, t.taper)
    np.testing.assert_allclose(acc[h : h + shape[0], h : h + shape[1]], 1.0, atol=1e-5)


def test_border_edges_do_not_taper():
    w = blend_weights(64, 16, (False, True, False, True))
    assert np.all(w[:48, :48] == 1.0)
    assert w[-1, -1] < 0.01


def test_blend_tiles_of_a_constant_prediction_is_that_constant():
    g = TileGrid(300, 300, tile_size=128, overlap=32, chunk_tiles=10)
    chunk = g.chunk(0, 0)
    preds = np.full((len(chunk.tiles), 2, 128, 128), 0.3, np.float32)
    offs = [(t.box.row0 - chunk.box.row0, t.box.col0 - chunk.box.col0) for t in chunk.tiles]
    out = blend_tiles(
        preds, offs, [blend_weights(128, 32, t.taper) for t in chunk.tiles], (chunk.box.height, chunk.box.width)
    )
    inner = out[:, 16 : 16 + 300, 16 : 16 + 300]
    np.testing.assert_allclose(inner, 0.3, atol=1e-6)
