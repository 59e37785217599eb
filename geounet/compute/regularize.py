"""Building outlines with straight walls and right angles that keep their pixels. Pure.

Geometries are in a metric CRS (metres). Each outline is simplified (Douglas-Peucker) and
turned to its dominant wall direction: the edge-length-weighted mean of its edge directions
modulo 90 degrees. Every edge is given to the nearer of the two wall directions;
consecutive edges of one direction become one wall, placed at their length-weighted mean
position, so that the area a wall cuts off balances the area it adds. Walls shorter than
``min_wall_m`` are dropped and their neighbours joined; the corners are where consecutive
walls meet.

Invariants:

- An outline is only replaced by its regularised form when that form is a valid polygon
  and overlaps the outline it came from with an IoU of at least ``min_iou``; else by its
  oriented bounding rectangle when that overlaps it by at least ``min_iou_rectangle``;
  otherwise the simplified outline is kept. Regularising never moves a building away
  from its pixels.
- Outlines with diagonal or curved walls (more than ``max_off_axis`` of the perimeter
  further than 15 degrees from both wall directions), and rings of more than
  ``MAX_RING_VERTICES`` vertices once simplified, keep their simplified outline.
- The result depends only on each outline's coordinates (and their order), not on how
  the outline was assembled: callers pass canonical rings (``shapely.normalize``).
"""

from __future__ import annotations

import math

import numpy as np
import shapely

from geounet.compute.metrics import pairwise_iou

_OFF_AXIS_SIN = math.sin(math.radians(15.0))  # an edge further than this from both wall directions is diagonal
# A simplified ring with more vertices than this is no single building's outline (joining short walls
# costs the square of the vertices): it keeps its simplified form.
MAX_RING_VERTICES = 500


def dominant_angles(geoms: np.ndarray) -> np.ndarray:
    """Each geometry's wall direction in radians, in [-pi/4, pi/4].

    The edge-length-weighted circular mean of its exterior rings' edge directions modulo
    90 degrees (the angles are multiplied by 4 so that walls at right angles agree).
    Pass simplified outlines: a pixel staircase has only axis-parallel edges.
    """
    geoms = np.asarray(geoms, dtype=object)
    if not len(geoms):
        return np.zeros(0)
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    rings = shapely.get_exterior_ring(parts)
    xy, ring_of = shapely.get_coordinates(rings, return_index=True)
    same = ring_of[1:] == ring_of[:-1]
    d = np.diff(xy, axis=0)[same]
    owner = part_of[ring_of[1:][same]]
    theta = 4.0 * np.arctan2(d[:, 1], d[:, 0])
    length = np.hypot(d[:, 0], d[:, 1])
    s = np.bincount(owner, length * np.sin(theta), minlength=len(geoms))
    c = np.bincount(owner, length * np.cos(theta), minlength=len(geoms))
    return np.arctan2(s, c) / 4.0


def regularize_outlines(
    geoms: np.ndarray,
    simplify_m: float,
    min_wall_m: float,
    max_off_axis: float = 0.5,
    min_iou: float = 0.75,
    min_iou_rectangle: float = 0.85,
) -> np.ndarray:
    """Regularised building outlines (metres); see the module docstring for the rules.

    ``geoms``: Polygons or MultiPolygons in a metric CRS. Returns one geometry per input:
    the regularised outline where it is valid and overlaps the input with an IoU of at
    least ``min_iou``; else the oriented bounding rectangle where that overlaps it by at
    least ``min_iou_rectangle`` (stricter: a rectangle can replace any shape); else the
    outline simplified by ``simplify_m``.
    """
    geoms = np.asarray(geoms, dtype=object)
    simplified = shapely.simplify(geoms, simplify_m, preserve_topology=True)
    if not len(geoms):
        return simplified
    angles = dominant_angles(simplified)
    walls = np.array(
        [_regularize_geometry(g, float(a), min_wall_m, max_off_axis) for g, a in zip(simplified, angles, strict=True)],
        dtype=object,
    )
    out = simplified.copy()
    todo = np.arange(len(geoms))
    # the walls where they keep the pixels, else the oriented bounding rectangle where it does
    for candidates, least_iou in ((walls, min_iou), (shapely.oriented_envelope(geoms), min_iou_rectangle)):
        if not len(todo):
            break
        cand = candidates[todo]
        ok = np.array([c is not None for c in cand], dtype=bool)
        ok[ok] = shapely.is_valid(cand[ok]) & ~shapely.is_empty(cand[ok])
        ok[ok] = pairwise_iou(cand[ok], geoms[todo][ok]) >= least_iou
        out[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return out


def _regularize_geometry(geom, angle: float, min_wall_m: float, max_off_axis: float):
    """One (Multi)Polygon regularised, or None where any exterior ring cannot be."""
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    polys = []
    for part in shapely.get_parts(geom):
        shell = _regularize_ring(part.exterior.coords, cos_a, sin_a, min_wall_m, max_off_axis)
        if shell is None:
            return None
        holes = []
        for interior in part.interiors:
            hole = _regularize_ring(interior.coords, cos_a, sin_a, min_wall_m, max_off_axis)
            holes.append(hole if hole is not None else list(interior.coords))
        polys.append(shapely.Polygon(shell, holes))
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


def _regularize_ring(coords, cos_a: float, sin_a: float, min_wall_m: float, max_off_axis: float):
    """A closed ring's walls (list of (x, y), not closed), or None where it is not rectilinear."""
    # turn by -angle: u along the dominant wall direction, v across it
    uv = [(x * cos_a + y * sin_a, -x * sin_a + y * cos_a) for x, y in list(coords)[:-1]]
    n = len(uv)
    if n < 4 or n > MAX_RING_VERTICES:
        return None
    horizontal, weight, position = [], [], []
    off_axis = total = 0.0
    for k in range(n):
        (u0, v0), (u1, v1) = uv[k], uv[(k + 1) % n]
        du, dv = u1 - u0, v1 - v0
        length = math.hypot(du, dv)
        total += length
        if min(abs(du), abs(dv)) > _OFF_AXIS_SIN * length:
            off_axis += length
        is_h = abs(dv) <= abs(du)
        horizontal.append(is_h)
        weight.append(length)
        position.append((v0 + v1) / 2 if is_h else (u0 + u1) / 2)
    if total <= 0 or off_axis > max_off_axis * total:
        return None
    start = next((k for k in range(n) if horizontal[k] != horizontal[k - 1]), None)
    if start is None:
        return None
    walls: list[list] = []  # [is_horizontal, length, length-weighted position sum]
    for k in list(range(start, n)) + list(range(start)):
        if walls and walls[-1][0] == horizontal[k]:
            walls[-1][1] += weight[k]
            walls[-1][2] += weight[k] * position[k]
        else:
            walls.append([horizontal[k], weight[k], weight[k] * position[k]])
    # drop short walls, shortest first, joining their two neighbours (one direction) into one wall
    while len(walls) > 4:
        k = min(range(len(walls)), key=lambda j: walls[j][1])
        if walls[k][1] >= min_wall_m:
            break
        walls = walls[k - 1 :] + walls[: k - 1]  # before, short, after, ... (k - 1 is -1 for k = 0)
        before, after = walls[0], walls[2]
        walls = [[before[0], before[1] + after[1], before[2] + after[2]], *walls[3:]]
    if len(walls) < 4 or len(walls) % 2:
        return None
    out = []
    for k in range(len(walls)):
        a, b = walls[k], walls[(k + 1) % len(walls)]
        h, v = (a, b) if a[0] else (b, a)
        u, w = v[2] / v[1] if v[1] > 0 else 0.0, h[2] / h[1] if h[1] > 0 else 0.0
        out.append((u * cos_a - w * sin_a, u * sin_a + w * cos_a))
    return out
