"""Regularised building outlines: right angles, the building's own direction, its pixels kept."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio import features
from shapely import affinity

from geounet.compute.regularize import dominant_angles, regularize_outlines

L_SHAPE = shapely.Polygon([(0, 0), (12, 0), (12, 5), (5, 5), (5, 10), (0, 10)])  # metres


def staircase(poly: shapely.Polygon, pixel_m: float = 0.15) -> shapely.Polygon:
    """The outline ``rasterio.features.shapes`` gives for ``poly`` burnt on a pixel grid."""
    minx, miny, maxx, maxy = poly.bounds
    transform = Affine(pixel_m, 0, minx - 1, 0, -pixel_m, maxy + 1)
    shape = (int((maxy - miny + 2) / pixel_m), int((maxx - minx + 2) / pixel_m))
    mask = features.rasterize([poly], out_shape=shape, transform=transform).astype(np.uint8)
    parts = [shapely.geometry.shape(g) for g, _ in features.shapes(mask, mask=mask > 0, transform=transform)]
    assert len(parts) == 1
    return parts[0]


def corner_angles(poly: shapely.Polygon) -> np.ndarray:
    """Turning angles (degrees) at the exterior's vertices."""
    ring = np.asarray(poly.exterior.coords)[:-1]
    v1 = ring - np.roll(ring, 1, axis=0)
    v2 = np.roll(ring, -1, axis=0) - ring
    cross = v1[:, 0] * v2[:, 1] - v1[:, 1] * v2[:, 0]
    return np.degrees(np.abs(np.arctan2(cross, (v1 * v2).sum(1))))


def iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


@pytest.mark.parametrize("angle", [0.0, 10.0, 30.0, 44.0, 71.0])
def test_a_rotated_l_shape_gets_its_six_right_angled_walls_back(angle):
    truth = affinity.rotate(L_SHAPE, angle, origin=(0, 0))
    pixels = staircase(truth)
    assert len(pixels.exterior.coords) > 7 or angle == 0.0  # a staircase of many vertices
    (out,) = regularize_outlines(np.array([pixels]), simplify_m=0.5, min_wall_m=1.0)
    assert len(out.exterior.coords) == 7  # six walls
    assert np.allclose(corner_angles(out), 90.0, atol=1e-6)
    assert iou(out, truth) >= 0.95
    assert abs(out.area - truth.area) <= 0.03 * truth.area  # walls placed so the area balances


@pytest.mark.parametrize("angle", [0.0, 12.0, 40.0, -30.0, 100.0])
def test_dominant_angle_is_the_walls_direction_modulo_90_degrees(angle):
    rect = affinity.rotate(shapely.box(0, 0, 20, 8), angle, origin=(0, 0))
    (found,) = np.degrees(dominant_angles(np.array([shapely.simplify(staircase(rect), 0.5)])))
    diff = (found - angle + 45.0) % 90.0 - 45.0
    assert abs(diff) < 2.0


def test_a_round_building_keeps_its_outline_not_a_square():
    disk = shapely.Point(0, 0).buffer(6.0, quad_segs=32)
    pixels = staircase(disk)
    (out,) = regularize_outlines(np.array([pixels]), simplify_m=0.5, min_wall_m=1.0)
    assert iou(out, disk) >= 0.9  # its simplified outline; the bounding square would be 0.785
    assert not np.allclose(corner_angles(out), 90.0, atol=1.0)


def test_every_outline_keeps_its_pixels_and_stays_valid():
    """Random blobs, rotated rectangles and L shapes: the result never strays below the IoU guard."""
    rng = np.random.default_rng(0)
    shapes = []
    for _ in range(40):
        centres = rng.uniform(0, 10, size=(4, 2))
        blob = shapely.union_all([shapely.Point(*c).buffer(rng.uniform(1.5, 4)) for c in centres])
        shapes.append(staircase(blob.buffer(0) if blob.geom_type == "Polygon" else blob.convex_hull))
    for angle in rng.uniform(-90, 90, 10):
        shapes.append(staircase(affinity.rotate(shapely.box(0, 0, rng.uniform(3, 20), rng.uniform(3, 9)), angle)))
        shapes.append(staircase(affinity.rotate(L_SHAPE, angle)))
    geoms = np.array(shapes, dtype=object)
    out = regularize_outlines(geoms, simplify_m=0.5, min_wall_m=1.0, min_iou=0.75, min_iou_rectangle=0.85)
    assert len(out) == len(geoms)
    assert shapely.is_valid(out).all()
    ious = np.array([iou(a, b) for a, b in zip(out, geoms, strict=True)])
    assert ious.min() >= 0.75
    # the rectangles and L shapes (the last 20) all come back with right angles only
    assert all(np.allclose(corner_angles(p), 90.0, atol=1e-6) for p in out[-20:])


def test_a_courtyard_is_regularised_too():
    block = affinity.rotate(shapely.box(0, 0, 20, 14).difference(shapely.box(6, 4, 14, 10)), 25, origin=(0, 0))
    pixels = staircase(block)
    assert len(pixels.interiors) == 1
    (out,) = regularize_outlines(np.array([pixels]), simplify_m=0.5, min_wall_m=1.0)
    assert len(out.interiors) == 1 and len(out.interiors[0].coords) == 5
    assert iou(out, block) >= 0.95
    assert np.allclose(corner_angles(shapely.Polygon(out.interiors[0])), 90.0, atol=1e-6)


def test_no_outlines():
    assert len(regularize_outlines(np.array([], dtype=object), simplify_m=0.5, min_wall_m=1.0)) == 0


def test_an_outline_of_too_many_walls_keeps_its_simplified_form():
    """A comb of many teeth, its corners jittered: no walls are fitted (the work grows as the vertices squared)."""
    from geounet.compute.regularize import MAX_RING_VERTICES

    teeth = MAX_RING_VERTICES // 4 + 25  # four corners a tooth: over the limit
    xs = np.repeat(np.arange(teeth * 2) * 2.0, 2)  # 2 m teeth, 2 m apart, 3 m deep
    ys = np.tile([0.0, 3.0, 3.0, 0.0], teeth)
    corners = np.column_stack([xs, ys]) + np.random.default_rng(1).uniform(-0.15, 0.15, (len(xs), 2))
    comb = shapely.Polygon([(0.0, -5.0), *map(tuple, corners), (xs[-1], -5.0)])
    assert comb.is_valid and len(comb.exterior.coords) > MAX_RING_VERTICES
    (out,) = regularize_outlines(np.array([comb]), simplify_m=0.5, min_wall_m=1.0)
    assert out.equals(shapely.simplify(comb, 0.5, preserve_topology=True))
    # the same comb, short enough, gets its walls (the corners aligned): the limit is what kept it above
    short = shapely.Polygon([(0.0, -5.0), *map(tuple, corners[:40]), (xs[39], -5.0)])
    (walls,) = regularize_outlines(np.array([short]), simplify_m=0.5, min_wall_m=1.0)
    assert not walls.equals(shapely.simplify(short, 0.5, preserve_topology=True))
    assert np.allclose(corner_angles(walls), 90.0, atol=1e-6)
