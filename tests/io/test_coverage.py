"""coverage: the tiles that may hold data, read from the scene's mask at low resolution (never a false 'empty')."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from geounet.compute.grid import TileGrid
from geounet.io.coverage import FACTOR, Coverage, all_valid, scene_coverage, tiles_with_data
from geounet.io.scene import WorkingGrid, open_working, working_grid
from tests.helpers import make_card, sparse_vrt, write_scene


def brute_force(valid: np.ndarray, grid: TileGrid, pad: int = 0) -> np.ndarray:
    """Tiles whose extent (widened by ``pad`` pixels) holds a valid pixel, one by one."""
    out = np.zeros(grid.shape_tiles, bool)
    h, w = valid.shape
    for tile in grid.tiles():
        b = tile.box
        r0, c0 = max(0, b.row0 - pad), max(0, b.col0 - pad)
        r1, c1 = min(h, b.row1 + pad), min(w, b.col1 + pad)
        out[tile.index] = valid[r0:r1, c0:c1].any()
    return out


def scene_with(tmp_path, valid: np.ndarray, how: str):
    """A 3-band uint8 scene valid where ``valid``: through a nodata value, a mask band, or an alpha band."""
    rng = np.random.default_rng(3)
    data = rng.integers(1, 255, (3, *valid.shape), dtype=np.uint8)
    if how == "nodata":
        data[:, ~valid] = 0
        return write_scene(tmp_path / "nodata.tif", data, nodata=0)
    if how == "mask":
        return write_scene(tmp_path / "mask.tif", data, mask=valid)
    alpha = np.where(valid, 255, 0).astype(np.uint8)[None]
    path = tmp_path / "alpha.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=valid.shape[1],
        height=valid.shape[0],
        count=4,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(0.15, 0, 500000, 0, -0.15, 5800000),
        photometric="RGB",
        alpha="YES",
    ) as dst:
        dst.write(np.concatenate([data, alpha]))
    return path


@pytest.mark.parametrize("how", ["nodata", "mask", "alpha"])
def test_an_island_smaller_than_a_read_pixel_is_never_dropped(tmp_path, how):
    """One valid pixel in a read cell of FACTOR^2 pixels (and in a whole window) still marks its tiles."""
    valid = np.zeros((900, 1300), bool)
    valid[421, 1013] = True  # alone in its FACTOR x FACTOR read pixel and in its tile
    grid = TileGrid(900, 1300, 64, 16, 2)
    with rasterio.open(scene_with(tmp_path, valid, how)) as ds:
        assert not all_valid(ds)
        tiles = tiles_with_data(ds, grid)
    expected = brute_force(valid, grid)
    assert expected.sum() >= 1
    assert not (expected & ~tiles).any()  # conservative: every tile holding the pixel is kept
    assert not (tiles & ~brute_force(valid, grid, FACTOR)).any()  # and only tiles within one read pixel of it


@pytest.mark.parametrize("how", ["nodata", "mask"])
def test_random_islands_every_tile_with_data_is_kept(tmp_path, how):
    rng = np.random.default_rng(7)
    valid = np.zeros((700, 950), bool)
    for _ in range(25):
        r, c = rng.integers(0, 700), rng.integers(0, 950)
        valid[r : r + rng.integers(1, 4), c : c + rng.integers(1, 40)] = True
    valid[650:, :300] = True
    grid = TileGrid(700, 950, 96, 32, 3)
    with rasterio.open(scene_with(tmp_path, valid, how)) as ds:
        tiles = tiles_with_data(ds, grid, window=256)  # many windows: islands straddle their edges
    assert not (brute_force(valid, grid) & ~tiles).any()
    assert not (tiles & ~brute_force(valid, grid, FACTOR)).any()
    assert 0 < tiles.sum() < tiles.size


def test_a_scene_without_nodata_or_mask_is_not_read(tmp_path, monkeypatch):
    scene = write_scene(tmp_path / "full.tif", np.ones((3, 300, 200), np.uint8))
    w = WorkingGrid("", (0.15, 0, 0, 0, -0.15, 0), 200, 300, False)
    grid = TileGrid(300, 200, 64, 16, 2)

    def no_read(*a, **k):
        raise AssertionError("read the mask of a scene that has none")

    monkeypatch.setattr(rasterio.io.DatasetReader, "dataset_mask", no_read)
    cov = scene_coverage(scene, w, grid)
    assert cov.complete and cov.chunk_indices() == [c.index for c in grid.chunks()]
    assert cov.tiles_in_data_chunks == grid.n_tiles and cov.scene_blocks(100).all()


def test_chunks_and_scene_blocks_follow_the_tiles_with_data():
    grid = TileGrid(1000, 1500, 128, 32, 2)  # stride 96, 11 x 16 tiles, 6 x 8 chunks
    tiles = np.zeros(grid.shape_tiles, bool)
    tiles[4, 9] = True
    cov = Coverage(grid, tiles)
    assert cov.chunk_indices() == [(2, 4)] and cov.tiles_in_data_chunks == 4
    blocks = cov.scene_blocks(100, margin=0)
    box = grid.tile(4, 9).box  # rows 368-496, cols 848-976
    expected = np.zeros(blocks.shape, bool)
    expected[box.row0 // 100 : -(-box.row1 // 100), box.col0 // 100 : -(-box.col1 // 100)] = True
    np.testing.assert_array_equal(blocks, expected)
    # the last chunk row holds one row of tiles (11 = 5 x 2 + 1), the last column two (16 = 8 x 2)
    edge = np.zeros(grid.shape_tiles, bool)
    edge[10, 15] = True
    assert Coverage(grid, edge).tiles_in_data_chunks == 2


@pytest.mark.parametrize("model_res", [0.3, 0.075])  # the working grid 2x coarser, and 2x finer
def test_on_a_resampled_working_grid_every_tile_the_warped_mask_reaches_is_kept(tmp_path, model_res):
    valid = np.zeros((400, 600), bool)
    valid[100:103, 200:260] = True
    valid[333, 77] = True
    scene = scene_with(tmp_path, valid, "nodata")  # 0.15 m
    card = make_card()
    card.resolution_m = model_res
    with rasterio.open(scene) as src:
        w = working_grid(src, card)
    assert w.resampled
    grid = TileGrid(w.height, w.width, 64, 16, 2)
    cov = scene_coverage(scene, w, grid)
    with open_working(scene, w) as vrt:
        warped = vrt.dataset_mask() > 0
    assert warped.any()
    assert not (brute_force(warped, grid) & ~cov.tiles).any()
    reach = FACTOR + 2 * max(1, round(cov.scale[0]))  # scene pixels: a read pixel and the resampling's reach
    assert not (cov.tiles & ~brute_force(warped, grid, int(np.ceil(reach / cov.scale[0])) + 2)).any()
    # every scene block holding a valid pixel is one stage 2 visits
    blocks = cov.scene_blocks(64)
    for r, c in np.argwhere(valid):
        assert blocks[r // 64, c // 64]


def test_a_huge_mostly_empty_vrt_costs_what_its_source_does(tmp_path):
    """200,000^2 px VRT, one 300^2 source: only the tiles around it, found without reading the empty extent."""
    rng = np.random.default_rng(0)
    src = write_scene(tmp_path / "src.tif", rng.integers(1, 255, (3, 300, 300), dtype=np.uint8), res=0.5)
    row, col = 123_457, 54_000
    vrt = sparse_vrt(tmp_path / "big.vrt", 200_000, src, row, col)
    grid = TileGrid(200_000, 200_000, 512, 64, 2)
    w = WorkingGrid("", (0.5, 0, 400000, 0, -0.5, 5900000), 200_000, 200_000, False)
    cov = scene_coverage(vrt, w, grid)

    def touching(start: int) -> set[int]:  # tiles (along one axis) whose extent meets [start, start + 300)
        return {i for i in range(grid.shape_tiles[0]) if i * 448 - 32 < start + 300 and i * 448 + 480 > start}

    assert {(int(i), int(j)) for i, j in np.argwhere(cov.tiles)} == {
        (i, j) for i in touching(row) for j in touching(col)
    }
    assert cov.chunk_indices() == sorted({(i // 2, j // 2) for i in touching(row) for j in touching(col)})


def test_aoi_tiles_are_the_tiles_whose_extent_meets_the_area():
    import shapely

    from geounet.io.coverage import aoi_tiles

    grid = TileGrid(300, 400, 64, 16, 2)
    area = shapely.Polygon([(10, 10), (150, 20), (60, 140)])  # pixel coordinates: x = column, y = row
    got = aoi_tiles(area, grid)
    expected = np.zeros(grid.shape_tiles, bool)
    for tile in grid.tiles():
        b = tile.box
        extent = shapely.box(max(b.col0, 0), max(b.row0, 0), min(b.col1, 400), min(b.row1, 300))
        expected[tile.index] = extent.intersects(area)
    np.testing.assert_array_equal(got, expected)
    assert 0 < got.sum() < got.size
    # on a working grid half as fine as the scene, widened by a reach of 3 scene pixels
    half = TileGrid(150, 200, 64, 16, 2)
    wide = aoi_tiles(area, half, (2.0, 2.0), 3)
    for tile in half.tiles():
        b = tile.box
        extent = shapely.box(
            max(b.col0, 0) * 2 - 3, max(b.row0, 0) * 2 - 3, min(b.col1, 200) * 2 + 3, min(b.row1, 150) * 2 + 3
        )
        assert wide[tile.index] == extent.intersects(area)
    assert not aoi_tiles(shapely.Polygon(), grid).any()
