import numpy as np
import pytest

from geounet.compute.centerlines import centerlines_block, merge_centerlines


def blockwise(road, block, halo, spur_px):
    h, w = road.shape
    pieces = []
    for r in range(0, h, block):
        for c in range(0, w, block):
            r0, c0 = max(0, r - halo), max(0, c - halo)
            pieces += centerlines_block(
                road[r0 : r + block + halo, c0 : c + block + halo],
                (r0, c0),
                (r, c, min(h, r + block), min(w, c + block)),
                spur_px,
            )
    return merge_centerlines(pieces)


def test_straight_road_has_its_length_within_2_percent():
    road = np.zeros((200, 900), bool)
    road[90:111, 50:850] = True  # 800 px long, 21 px wide
    [line] = merge_centerlines(centerlines_block(road, (0, 0), (0, 0, 200, 900), spur_px=20))
    assert line.length == pytest.approx(800, rel=0.02)
    assert abs(line.coords[0][1] - 100.5) < 1.5  # on the road's axis


def test_crossing_roads_are_joined_at_the_junction_and_independent_of_blocks():
    road = np.zeros((600, 1400), bool)
    road[290:311, 100:1300] = True
    road[100:500, 700:716] = True
    whole = merge_centerlines(centerlines_block(road, (0, 0), (0, 0, 600, 1400), spur_px=30))
    assert sum(line.length for line in whole) == pytest.approx(1600, rel=0.02)
    assert len(whole) == 4  # four arms meeting at the junction
    blocks = blockwise(road, 256, 48, 30)
    assert len(blocks) == len(whole)
    assert sum(line.length for line in blocks) == pytest.approx(sum(line.length for line in whole), rel=1e-6)


def test_short_spurs_are_pruned():
    road = np.zeros((200, 600), bool)
    road[90:111, 50:550] = True
    road[60:90, 300:306] = True  # a 30 px stub
    lines = merge_centerlines(centerlines_block(road, (0, 0), (0, 0, 200, 600), spur_px=45))
    assert len(lines) == 1 and lines[0].length == pytest.approx(500, rel=0.02)
