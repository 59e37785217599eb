"""Road centre lines from a road mask: skeleton graph, spur pruning, merged across blocks. Pure.

``centerlines_block`` skeletonizes one block read with a halo (so the skeleton near
the block edge is the same as the whole raster's), turns skan's skeleton paths into
LineStrings, prunes spurs (junction-to-end branches shorter than a threshold),
extends free ends by the local road half-width (a skeleton stops half a road width
short of the road's end), and clips the lines to the block's core. Pieces from all
blocks are joined with ``merge_centerlines``. Coordinates are global pixel (col, row)
coordinates of the raster; ``vectorize.apply_affine`` maps them to its CRS.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy import ndimage


def centerlines_block(
    road: np.ndarray,
    offset: tuple[int, int],
    core: tuple[int, int, int, int],
    spur_px: float,
) -> list[shapely.LineString]:
    """Centre-line pieces of the road mask ``road`` (bool, rows x cols, block plus halo).

    offset: (row, col) of ``road[0, 0]`` in the whole raster.
    core: (row0, col0, row1, col1) the block's own pixels, in whole-raster pixels;
    lines are clipped to it, so neighbouring blocks' pieces meet exactly on the edge.
    spur_px: spurs (branches with a free end) shorter than this are dropped.
    """
    import skan
    from skimage.morphology import skeletonize

    if not road.any():
        return []
    skel = skeletonize(road)
    if skel.sum() < 2:
        return []
    half_width = ndimage.distance_transform_edt(road)
    neighbours = ndimage.convolve(skel.astype(np.int16), np.ones((3, 3), np.int16), mode="constant") - 1
    graph = skan.Skeleton(skel)
    summary = skan.summarize(graph, separator="_")
    r0, c0 = offset
    lines = []
    for i, row in summary.iterrows():
        coords = graph.path_coordinates(i)  # (n, 2) row, col
        if len(coords) < 2:
            continue
        kind = int(row["branch_type"])  # 0 end-end, 1 junction-end, 2 junction-junction, 3 cycle
        if kind == 1 and row["branch_distance"] < spur_px:
            continue
        xy = np.column_stack([coords[:, 1] + 0.5 + c0, coords[:, 0] + 0.5 + r0])
        if kind in (0, 1):
            xy = _extend_free_ends(xy, coords, neighbours, half_width)
        lines.append(shapely.LineString(xy))
    if not lines:
        return []
    row0, col0, row1, col1 = core
    clipped = shapely.clip_by_rect(np.array(lines, dtype=object), col0, row0, col1, row1)
    out: list[shapely.LineString] = []
    for g in clipped:
        if g.is_empty:
            continue
        out.extend(shapely.get_parts(shapely.line_merge(g)) if g.geom_type != "LineString" else [g])
    return [g for g in out if g.geom_type == "LineString" and g.length > 0]


def _extend_free_ends(xy: np.ndarray, coords: np.ndarray, neighbours: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """Lengthen the path's free end(s) by the road half-width there, along the end direction."""
    out = xy
    for end in (0, -1):
        r, c = np.round(coords[end]).astype(int)
        if neighbours[r, c] != 1:
            continue  # a junction end, not a free end
        # direction over about two half-widths: a skeleton's last pixels bend to a corner
        step = int(min(len(xy) - 1, max(4, 2 * half_width[r, c])))
        inner = xy[step] if end == 0 else xy[-1 - step]
        direction = out[end] - inner
        norm = np.hypot(*direction)
        if norm == 0:
            continue
        tip = out[end] + direction / norm * max(half_width[r, c] - 0.5, 0.0)
        out = np.vstack([tip, out]) if end == 0 else np.vstack([out, tip])
    return out


def merge_centerlines(pieces: list[shapely.LineString], min_length_px: float = 0.0) -> list[shapely.LineString]:
    """Join pieces that meet end to end (across block edges and at degree-2 points)."""
    if not pieces:
        return []
    merged = shapely.line_merge(shapely.union_all(np.array(pieces, dtype=object)))
    lines = [g for g in shapely.get_parts(merged) if g.length >= min_length_px]
    return lines
