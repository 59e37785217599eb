import numpy as np
import pytest

from geounet.compute.grid import Box, TileGrid, blocks


@pytest.mark.parametrize("shape", [(1000, 700), (256, 256), (50, 31), (1, 1), (449, 1345)])
@pytest.mark.parametrize("tile,overlap,k", [(256, 64, 2), (128, 0, 3), (512, 64, 1)])
def test_cores_cover_every_pixel_once(shape, tile, overlap, k):
    g = TileGrid(*shape, tile_size=tile, overlap=overlap, chunk_tiles=k)
    cover = np.zeros(shape, int)
    for t in g.tiles():
        assert t.box.height == tile and t.box.width == tile
        h = overlap // 2
        core = Box(t.box.row0 + h, t.box.col0 + h, t.box.row1 - h, t.box.col1 - h).intersect(g.scene)
        cover[core.row0 : core.row1, core.col0 : core.col1] += 1
    assert cover.min() == 1 and cover.max() == 1


@pytest.mark.parametrize("shape", [(1000, 700), (100, 100), (2000, 3000), (33, 900)])
def test_regions_partition_the_scene_and_name_the_chunks_that_cover_them(shape):
    g = TileGrid(*shape, tile_size=256, overlap=64, chunk_tiles=2)
    cover = np.zeros(shape, int)
    for region in g.regions():
        b = region.box
        cover[b.row0 : b.row1, b.col0 : b.col1] += 1
        # every tile that overlaps the region lies in one of the region's chunks
        for chunk in g.chunks():
            touches = any(t.box.intersect(b) for t in chunk.tiles)
            assert touches == (chunk.index in region.chunks), (region, chunk.index)
    assert cover.min() == 1 and cover.max() == 1


def test_scene_smaller_than_one_tile_is_one_tile_without_taper():
    g = TileGrid(40, 70, tile_size=256, overlap=64)
    tiles = list(g.tiles())
    assert len(tiles) == 1 and tiles[0].taper == (False, False, False, False)
    assert len(list(g.regions())) == 1


def test_taper_only_where_a_neighbour_shares_the_edge():
    g = TileGrid(1000, 1000, tile_size=256, overlap=64)
    ny, nx = g.shape_tiles
    assert g.tile(0, 0).taper == (False, True, False, True)
    assert g.tile(ny - 1, nx - 1).taper == (True, False, True, False)
    assert g.tile(1, 1).taper == (True, True, True, True)


def test_bad_geometry_is_rejected():
    with pytest.raises(ValueError):
        TileGrid(10, 10, tile_size=64, overlap=64)
    with pytest.raises(ValueError):
        TileGrid(10, 10, tile_size=64, overlap=3)
    with pytest.raises(ValueError):
        TileGrid(0, 10)


@pytest.mark.parametrize(
    "grid", [TileGrid(1000, 1300, 128, 32, 3), TileGrid(50, 70, 64, 16, 1), TileGrid(5000, 300, 96, 32, 2)]
)
def test_chunk_regions_are_the_regions_a_chunk_contributes_to(grid):
    regions = list(grid.regions())
    for chunk in grid.chunks():
        assert grid.chunk_regions(*chunk.index) == [r for r in regions if chunk.index in r.chunks]


def test_block_progress_completes_each_block_once_when_the_stitcher_regions_are_in():
    from geounet.compute.grid import BlockProgress

    grid = TileGrid(1000, 700, 128, 32, chunk_tiles=2)
    progress = BlockProgress(1000, 700, 256)
    done = []
    regions = list(grid.regions())
    for region in regions[::-1]:  # any order
        done += progress.add(region.box)
    expected = blocks(Box(0, 0, 1000, 700), 256)
    assert sorted(done, key=lambda b: (b.row0, b.col0)) == expected
    with pytest.raises(ValueError, match="twice"):
        progress.add(regions[0].box)
    # a block waits for its last pixel
    p = BlockProgress(10, 10, 10)
    assert p.add(Box(0, 0, 10, 9)) == [] and p.add(Box(0, 9, 10, 10)) == [Box(0, 0, 10, 10)]
