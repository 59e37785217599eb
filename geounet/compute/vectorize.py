"""Class rasters to polygons, block by block, exact across block edges. Pure: arrays in, geometries out.

``polygonize_block`` turns one window of a class raster into one polygon per
4-connected component of each class, with the component's pixel count and the sum of
its class score, and flags the components that touch an inner edge of the block
(an edge shared with another block). ``merge_across_blocks`` joins those flagged
pieces that share a boundary segment of positive length (found with an STRtree,
never a global union), so the result is the same as polygonizing the whole raster
at once: the same components, areas and union geometry.
Geometries are in whole-raster *pixel* coordinates (x = column, y = row, integers at
pixel corners), so pieces from neighbouring blocks share edges exactly; ``apply_affine``
maps them to the raster's CRS once they are merged. Their rings have no collinear vertex:
GDAL's polygonizer puts vertices only where an outline turns, and pieces joined across
seams are dissolved (:func:`dissolve_pieces`), which drops the seam vertices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import shapes
from scipy import ndimage

_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, as rasterio.features.shapes
# Everything here works in pixel coordinates: a block or polygon at the raster's origin has the
# identity transform, which GDAL's in-memory rasters under shapes/rasterize report as "no
# geotransform". Only those warnings, from rasterio.features, are silenced (a scene without
# a geotransform is refused where it is opened: io.scene.check_scene).
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio.features")


@dataclass
class Pieces:
    """Polygons from one or more blocks: parallel arrays, one entry per polygon."""

    class_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    geometry: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    score_sum: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # sum of score DNs
    on_edge: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # touches an inner block edge

    def __len__(self) -> int:
        return len(self.class_id)

    def take(self, idx) -> Pieces:
        return Pieces(self.class_id[idx], self.geometry[idx], self.pixels[idx], self.score_sum[idx], self.on_edge[idx])

    @staticmethod
    def concat(parts: list[Pieces]) -> Pieces:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Pieces()
        return Pieces(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("class_id", "geometry", "pixels", "score_sum", "on_edge")
            )
        )


def polygonize_block(
    classes: np.ndarray,
    offset: tuple[int, int],
    class_ids: list[int],
    scores: np.ndarray | None = None,
    inner_edges: tuple[bool, bool, bool, bool] = (False, False, False, False),
) -> Pieces:
    """Polygons of the given classes in one block.

    classes: (rows, cols) class indexes; any value not in ``class_ids`` is ignored.
    offset: (row, col) of the block's first pixel in the whole raster.
    scores: optional (rows, cols) per-pixel score of the pixel's own class (any unit).
    inner_edges: (top, bottom, left, right) True where the block shares that edge with another block.

    One ``rasterio.features.shapes`` pass over the block gives every polygon and its
    class. A polygon's pixel count is its area in pixel units (exact: pixel-corner
    vertices); it touches an inner edge when its bounds reach that edge. Score sums
    need the connected components (``ndimage.label``), so they are labelled only when
    scores are given.
    """
    mask = _membership(class_ids)(classes)
    if not mask.any():
        return Pieces()
    r0, c0 = offset
    rows, cols = classes.shape
    data = classes if classes.dtype in (np.uint8, np.uint16, np.int16, np.int32) else classes.astype(np.int32)
    found = list(shapes(data, mask=mask, transform=Affine.translation(c0, r0), connectivity=4))
    geoms = _polygons_from_geojson([g for g, _ in found])
    cls = np.array([int(v) for _, v in found], np.int32)
    del found, mask  # the GeoJSON dicts: several MB of Python objects per block
    pixels = np.rint(shapely.area(geoms)).astype(np.int64)
    minx, miny, maxx, maxy = shapely.bounds(geoms).T
    top, bottom, left, right = inner_edges
    edge = (top & (miny == r0)) | (bottom & (maxy == r0 + rows)) | (left & (minx == c0)) | (right & (maxx == c0 + cols))
    ssum = np.zeros(len(geoms)) if scores is None else _score_sums(classes, scores, class_ids, geoms, cls, offset)
    return Pieces(cls, geoms, pixels, ssum, edge)


def _score_sums(
    classes: np.ndarray,
    scores: np.ndarray,
    class_ids: list[int],
    geoms: np.ndarray,
    cls: np.ndarray,
    offset: tuple[int, int],
) -> np.ndarray:
    """Sum of ``scores`` over each polygon's pixels, via 4-connected component labels.

    A polygon's first pixel in raster order is its top-left exterior vertex (smallest
    row, then smallest column), which finds its component in the label array.
    """
    if len(class_ids) == 1:
        labels, first = ndimage.label(classes == class_ids[0], structure=_FOUR)
    else:
        labels = np.zeros(classes.shape, np.int32)
        first = 0
        for cid in class_ids:
            m = classes == cid
            if m.any():
                lab, n = ndimage.label(m, structure=_FOUR)
                labels[m] = lab[m] + first
                first += n
    inside = labels > 0  # only the polygons' pixels: a block's worth of float64 weights is never made
    sums = np.bincount(labels[inside], weights=scores[inside], minlength=first + 1)
    rows, cols = first_pixels(geoms)
    return sums[labels[rows - offset[0], cols - offset[1]]]


def first_pixels(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each polygon's first pixel in raster order (row, column arrays; whole-raster pixels).

    For polygons traced along pixel edges it is the top-left exterior vertex: the
    smallest row, then the smallest column on it; the pixel below and right of it is inside.
    A hole never reaches the top row, so every vertex is searched; a MultiPolygon of
    pieces (``merge_groups(..., dissolve=False)``) gives the first pixel of their union.
    """
    if not len(geoms):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    xy, idx = shapely.get_coordinates(geoms, return_index=True)  # grouped by polygon, in order
    col, row = xy[:, 0].astype(np.int64), xy[:, 1].astype(np.int64)  # pixel corners: whole numbers
    c0, r0 = int(col.min()), int(row.min())
    width = int(col.max()) - c0 + 1
    key = (row - r0) * width + (col - c0)  # raster order
    first = np.minimum.reduceat(key, np.searchsorted(idx, np.arange(len(geoms))))
    return first // width + r0, first % width + c0


def _polygons_from_geojson(geoms: list[dict]) -> np.ndarray:
    """GeoJSON polygon dicts -> shapely Polygons, built in one vectorized call."""
    coords, ring_ends, poly_ends = [], [0], [0]
    for g in geoms:
        for ring in g["coordinates"]:
            coords.extend(ring)
            ring_ends.append(len(coords))
        poly_ends.append(len(ring_ends) - 1)
    if not geoms:
        return np.zeros(0, object)
    return shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        np.asarray(coords, dtype=np.float64),
        (np.asarray(ring_ends, np.int64), np.asarray(poly_ends, np.int64)),
    )


def merge_across_blocks(pieces: Pieces) -> Pieces:
    """Join pieces of the same class that share a boundary segment; others pass through.

    Only pieces flagged ``on_edge`` are considered; pairs come from an STRtree query.
    Pieces that meet at a single corner stay apart (4-connectivity, as a whole-raster
    polygonization would give). The result has ``on_edge`` all False: the pieces not on
    an edge, then one piece per group of :func:`seam_groups`, in its order.
    """
    keep = pieces.take(~pieces.on_edge)
    cand = pieces.take(pieces.on_edge)
    return Pieces.concat([keep, merge_groups(cand, seam_groups(cand))])


def seam_groups(cand: Pieces) -> list[np.ndarray]:
    """The pieces (indexes into ``cand``) that form one polygon: same class, sharing a boundary segment.

    Groups come in the order of their smallest index; each lists its pieces in increasing order.
    """
    n = len(cand)
    if n == 0:
        return []
    tree = shapely.STRtree(cand.geometry)
    left, right = tree.query(cand.geometry, predicate="intersects")
    sel = (left < right) & (cand.class_id[left] == cand.class_id[right])
    left, right = left[sel], right[sel]
    shared = shapely.relate_pattern(cand.geometry[left], cand.geometry[right], "****1****")
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left[shared], right[shared]):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)])
    order = np.argsort(roots, kind="stable")
    starts = np.flatnonzero(np.r_[True, roots[order][1:] != roots[order][:-1]])
    return np.split(order, starts[1:])


def merge_groups(cand: Pieces, groups: list[np.ndarray], dissolve: bool = True) -> Pieces:
    """One piece per group of ``cand`` (:func:`seam_groups`): geometries unioned, pixels and score sums added.

    ``dissolve=False``: each group's geometry is the MultiPolygon of its pieces instead,
    for buildings that :func:`split_at_contacts` may cut apart again (it needs only their
    bounds and pixels); :func:`dissolve_pieces` unions what is kept whole, with the same
    result. Independent per group: groups may be merged in separate tasks with the same result.
    """
    merged_geoms = np.empty(len(groups), object)
    pixels = np.zeros(len(groups), np.int64)
    ssum = np.zeros(len(groups))
    cls = np.zeros(len(groups), np.int32)
    for k, members in enumerate(groups):
        merged_geoms[k] = shapely.multipolygons(cand.geometry[members])
        pixels[k] = cand.pixels[members].sum()
        ssum[k] = cand.score_sum[members].sum()
        cls[k] = cand.class_id[members[0]]
    return Pieces(
        cls, dissolve_pieces(merged_geoms) if dissolve else merged_geoms, pixels, ssum, np.zeros(len(groups), bool)
    )


def dissolve_pieces(geoms: np.ndarray) -> np.ndarray:
    """MultiPolygons of pieces (``merge_groups(..., dissolve=False)``) unioned, seam vertices dropped; Polygons kept."""
    geoms = np.asarray(geoms, dtype=object).copy()
    for k in np.flatnonzero(shapely.get_type_id(geoms) == shapely.GeometryType.MULTIPOLYGON):
        parts = shapely.get_parts(geoms[k])
        geoms[k] = shapely.simplify(parts[0] if len(parts) == 1 else shapely.union_all(parts), 0.0)
    return geoms


def apply_affine(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Whole-raster pixel (col, row) coordinates -> the raster's CRS, through its transform."""
    a, b, c, d, e, f = transform[:6]
    return shapely.transform(
        np.asarray(geoms, dtype=object),
        lambda p: np.column_stack([a * p[:, 0] + b * p[:, 1] + c, d * p[:, 0] + e * p[:, 1] + f]),
    )


def split_touching(pieces: Pieces, pixel_size_m: tuple[float, float], min_distance_m: float) -> Pieces:
    """Split each polygon into instances where it narrows: touching roofs become separate buildings.

    Per polygon (complete, so the result does not depend on the block size): its pixels
    are rasterized, the distance to its edge is computed in metres (``pixel_size_m`` =
    ground size of a pixel step in x and y), the local maxima of that distance at least
    ``min_distance_m`` apart seed a watershed of the negated distance, and each basin
    becomes a polygon. A polygon with one seed is kept as it is. Parts keep the parent's
    class and mean score. Pure; pixel coordinates in and out.
    """
    if min_distance_m <= 0 or not len(pieces):
        return pieces
    from rasterio.features import rasterize
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dx, dy = pixel_size_m
    min_px = max(1, int(round(min_distance_m / ((dx + dy) / 2))))
    kept = np.ones(len(pieces), bool)
    parts: list[Pieces] = []
    bounds = shapely.bounds(pieces.geometry).astype(np.int64)
    for i, (x0, y0, x1, y1) in enumerate(bounds):
        if min(x1 - x0, y1 - y0) < 2 * min_px:
            continue  # too small to hold two seeds min_distance apart
        shape = (int(y1 - y0) + 2, int(x1 - x0) + 2)
        origin = Affine.translation(x0 - 1, y0 - 1)
        mask = rasterize([(pieces.geometry[i], 1)], out_shape=shape, transform=origin, dtype="uint8") > 0
        dist = ndimage.distance_transform_edt(mask, sampling=(dy, dx))
        peaks = peak_local_max(dist, min_distance=min_px, labels=mask.astype(np.int32), exclude_border=False)
        if len(peaks) < 2:
            continue
        markers = np.zeros(shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        basins = watershed(-dist, markers, mask=mask).astype(np.int32)
        kept[i] = False
        parts.append(_parts(basins, origin, pieces, i))
    return Pieces.concat([pieces.take(kept), *parts])


def _parts(basins: np.ndarray, origin: Affine, pieces: Pieces, i: int) -> Pieces:
    """The basins (labels > 0, pixels of a window at ``origin``) of polygon ``i`` as its parts.

    Each part keeps the polygon's class and mean score.
    """
    found = list(shapes(basins, mask=basins > 0, transform=origin, connectivity=4))
    geoms = _polygons_from_geojson([g for g, _ in found])
    pixels = np.rint(shapely.area(geoms)).astype(np.int64)
    mean = pieces.score_sum[i] / max(pieces.pixels[i], 1)
    n = len(geoms)
    return Pieces(np.full(n, pieces.class_id[i], np.int32), geoms, pixels, pixels * mean, np.zeros(n, bool))


def split_at_contacts(
    pieces: Pieces,
    windows: Sequence[np.ndarray],
    building_ids: Sequence[int],
    pixel_size_m: tuple[float, float],
    seed_m: float = 0.0,
    member_ids: Sequence[int] | None = None,
    seed_counts: np.ndarray | None = None,
) -> Pieces:
    """Split each polygon of building and contact pixels into one building per seed.

    ``pieces``: complete polygons (whole-raster pixel coordinates), each a 4-connected
    component of building and contact pixels (any class not in ``building_ids`` that the
    polygon covers counts as contact), or the MultiPolygon of such a component's seam pieces
    (``merge_groups(..., dissolve=False)``), unioned only if it is kept whole. ``windows[i]``: the class raster under
    ``pieces.geometry[i]``'s bounds (rows ``miny:maxy``, columns ``minx:maxx``).
    ``pixel_size_m``: ground size of a pixel step in x and y (metres).

    The seeds are the 4-connected components of the polygon's building pixels. With
    ``seed_m`` > 0 a component is seeded by its cores instead, where it has any: the
    4-connected parts of its pixels at least ``seed_m`` metres from every pixel that is
    not building, each of at least ``seed_m`` x ``seed_m`` square metres; this splits
    roofs that touch with no contact pixel between them, and never joins two components.
    The rest of a component goes to its nearest core, then every contact pixel to the
    roof nearest to it through the polygon: floods (:func:`flood_from_seeds`) of the
    distance (metres) to the seeds, then to the roofs, so each part is one 4-connected
    polygon around one seed; a pixel equally near two goes to the one whose seed pixels come
    first in raster order, whatever window holds the polygon. A polygon with
    fewer than two seeds is kept whole, contacts included; one without a building pixel
    (contacts only) is dropped. Parts keep the parent's class and mean score. Pure;
    pixel coordinates in and out. ``member_ids``: the classes the polygons are made of
    (building and contact), when known: a polygon's pixels are then its 4-connected
    component in the window (the same pixels, without rasterizing it). ``seed_counts``:
    each polygon's number of seeds when already counted (:func:`contact_seed_counts`, one
    pass over a block): polygons with fewer than two are then settled without their window.
    """
    if not len(pieces):
        return pieces
    from rasterio.features import rasterize

    dx, dy = pixel_size_m
    min_core_px = max(1, int(np.ceil(seed_m * seed_m / (dx * dy))))
    kept = np.ones(len(pieces), bool)
    parts: list[Pieces] = []
    bounds = shapely.bounds(pieces.geometry).astype(np.int64)
    is_member = None if member_ids is None else _membership(member_ids)
    is_building = _membership(building_ids)
    first_rows, first_cols = first_pixels(pieces.geometry)
    for i, (x0, y0, x1, y1) in enumerate(bounds):
        if seed_counts is not None and seed_counts[i] < 2:
            kept[i] = seed_counts[i] > 0  # one seed: one building; none: contacts only, dropped
            continue
        window = windows[i]
        if window.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"window {window.shape} does not cover polygon {i}'s bounds {(x0, y0, x1, y1)}")
        origin = Affine.translation(x0, y0)
        if is_member is None:
            mask = rasterize([(pieces.geometry[i], 1)], out_shape=window.shape, transform=origin, dtype="uint8") > 0
        else:  # the component under the polygon's first pixel in raster order
            labels, _ = ndimage.label(is_member(window), structure=_FOUR)
            mask = labels == labels[first_rows[i] - y0, first_cols[i] - x0]
            del labels  # window-sized arrays are let go as soon as they are used: two tasks hold large windows at once
        building = mask & is_building(window)
        if not building.any():
            kept[i] = False  # contacts only: the edge between buildings, not one
            continue
        has_contacts = building.sum() != mask.sum()
        if seed_m <= 0 and not has_contacts:
            continue  # no contact pixel: one component of building pixels, one building
        seeds, components = _seeds(building, (dx, dy), seed_m, min_core_px)
        if seeds.max() < 2:
            continue
        roofs = seeds if seed_m <= 0 else _roofs(seeds, components, building, (dx, dy))
        del seeds, components, building
        if not has_contacts:
            basins = roofs.astype(np.int32)  # no contact pixel to hand out
        else:
            dist = distance_m(roofs == 0, (dx, dy), edges=False)
            basins = flood_from_seeds(dist, roofs, mask).astype(np.int32)
            del dist
        del roofs
        kept[i] = False
        parts.append(_parts(basins, origin, pieces, i))
    whole = pieces.take(kept)
    whole.geometry = dissolve_pieces(whole.geometry)
    return Pieces.concat([whole, *parts])


def contact_seed_counts(
    classes: np.ndarray,
    offset: tuple[int, int],
    geoms: np.ndarray,
    building_ids: Sequence[int],
    member_ids: Sequence[int],
    pixel_size_m: tuple[float, float],
    seed_m: float = 0.0,
) -> np.ndarray:
    """How many seeds :func:`split_at_contacts` finds in each polygon, counted in one pass over a window.

    ``classes``: (rows, cols) class raster that holds every polygon of ``geoms`` whole;
    ``offset``: (row, col) of its first pixel in whole-raster pixels. ``geoms``: polygons
    (whole-raster pixel coordinates), each a 4-connected component of ``member_ids``
    pixels. 0: contact pixels only; 1: one building, kept whole; 2 or more: split.

    The counts equal those of each polygon's own window: a pixel's distance to the nearest
    pixel that is not building is never shortened by another polygon's pixels, since a
    pixel outside both polygons lies between them no farther away; the window's edges
    count as not building, as there.
    """
    if not len(geoms):
        return np.zeros(0, np.int64)
    building = _membership(building_ids)(classes)
    components, n = ndimage.label(_membership(member_ids)(classes), structure=_FOUR)
    roofs, n_roofs = ndimage.label(building, structure=_FOUR)
    owner = np.zeros(n_roofs + 1, np.int64)
    owner[roofs[building]] = components[building]  # each roof (building component) lies in one polygon
    per_roof = np.ones(n_roofs + 1, np.int64)  # a roof without a core is its own seed
    if seed_m > 0:
        dx, dy = pixel_size_m
        min_core_px = max(1, int(np.ceil(seed_m * seed_m / (dx * dy))))
        cores, m = ndimage.label(distance_m(building, (dx, dy)) >= seed_m, structure=_FOUR)
        inside = cores > 0  # a core lies in one roof: its pixels alone say which, and its size
        size = np.bincount(cores[inside], minlength=m + 1)
        core_roof = np.zeros(m + 1, np.int64)
        core_roof[cores[inside]] = roofs[inside]
        del cores, inside
        valid = size >= min_core_px
        valid[0] = False
        per_roof = np.maximum(np.bincount(core_roof[valid], minlength=n_roofs + 1), 1)
    per_roof[0] = 0
    seeds = np.bincount(owner, weights=per_roof, minlength=n + 1).astype(np.int64)
    rows, cols = first_pixels(geoms)
    return seeds[components[rows - offset[0], cols - offset[1]]]


def distance_m(mask: np.ndarray, pixel_size_m: tuple[float, float], edges: bool = True) -> np.ndarray:
    """Each True pixel's distance in metres to the nearest False pixel (0 on False pixels); float32.

    ``pixel_size_m``: ground size of a pixel step in x and y. ``edges``: pixels beyond the
    window count as False (else only the window's own False pixels count; a window with
    none gives no finite distance). The exact Euclidean transform of the ``edt`` package:
    one implementation for every window, so a polygon's distances are the same whichever
    window (block or its own bounds) holds it.
    """
    import edt

    dx, dy = pixel_size_m
    return edt.edt(np.ascontiguousarray(mask, dtype=bool), anisotropy=(dy, dx), black_border=edges, parallel=1)


def _membership(ids: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    """``f(window) == np.isin(window, ids)``, by one table lookup for uint8 class rasters (many small windows)."""
    table = np.zeros(256, bool)
    table[[i for i in ids if 0 <= i < 256]] = True
    ids = list(ids)
    return lambda w: table[w] if w.dtype == np.uint8 else np.isin(w, ids)


def _roofs(
    seeds: np.ndarray, components: np.ndarray, building: np.ndarray, pixel_size_m: tuple[float, float]
) -> np.ndarray:
    """Each building pixel labelled with the nearest seed of its own 4-connected component (``components``).

    A component with one seed is all that seed's; the components with two seeds or more are
    flooded from their seeds by the distance (metres) to the nearest seed pixel
    (:func:`flood_from_seeds`: each component's result is its own, whatever else the window holds).
    """
    n = int(components.max())
    found = seeds > 0
    component_of = np.zeros(int(seeds.max()) + 1, np.int64)
    component_of[seeds[found]] = components[found]  # a seed lies in one component
    seed_of = np.zeros(n + 1, seeds.dtype)
    seed_of[component_of[1:]] = np.arange(1, len(component_of), dtype=seeds.dtype)
    roofs = seed_of[components]
    several = np.bincount(component_of[1:], minlength=n + 1) > 1
    several[0] = False
    if several.any():
        flooded = several[components]
        dist = distance_m(~found, pixel_size_m, edges=False)
        roofs[flooded] = flood_from_seeds(dist, np.where(flooded, seeds, 0), flooded)[flooded]
    return roofs


def flood_from_seeds(distance: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each ``mask`` pixel labelled with the seed whose flood reaches it first (4-connected).

    ``distance``: (rows, cols), > 0 on every mask pixel that is not a seed (e.g. metres to
    the nearest seed pixel); ``seeds``: labels > 0 on seed pixels (all in ``mask``), 0
    elsewhere. A watershed (skimage) of ``distance`` from the seeds: pixels are taken in
    increasing distance, each by the seed of the neighbour that reached it first; seed
    pixels start in raster order (row, then column), so ties go the same way in any
    window that holds the mask: the result depends on the mask and seeds alone, not on
    the order of skimage's heap. Only seed pixels beside an unseeded mask pixel enter the
    flood (the others could not take a pixel), which leaves the result unchanged.
    """
    from skimage.segmentation import watershed

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    out = np.zeros(seeds.shape, seeds.dtype)
    if not len(rows):
        return out
    crop = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # the result does not depend on the window
    distance, seeds, mask = distance[crop], seeds[crop], mask[crop]
    seeded = seeds > 0
    unseeded = mask & ~seeded
    frontier = np.zeros_like(seeded)
    frontier[1:] |= unseeded[:-1]
    frontier[:-1] |= unseeded[1:]
    frontier[:, 1:] |= unseeded[:, :-1]
    frontier[:, :-1] |= unseeded[:, 1:]
    frontier &= seeded
    starts = np.flatnonzero(frontier)
    values = distance.astype(np.float64)
    values.ravel()[starts] = np.arange(-len(starts), 0, dtype=np.float64) / (len(starts) + 1)  # < 0, raster order
    flooded = watershed(values, np.where(frontier, seeds, 0), mask=unseeded | frontier, connectivity=1)
    flooded[seeded] = seeds[seeded]
    out[crop] = flooded
    return out


def _seeds(
    building: np.ndarray, pixel_size_m: tuple[float, float], seed_m: float, min_core_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seed labels (1..n, 0 elsewhere) of :func:`split_at_contacts` in a (rows, cols) building mask,
    and the mask's 4-connected components (labels) they were found in."""
    components, n = ndimage.label(building, structure=_FOUR)
    if seed_m <= 0 or n == 0:
        return components, components
    dx, dy = pixel_size_m
    cores, m = ndimage.label(distance_m(building, (dx, dy)) >= seed_m, structure=_FOUR)
    size = np.bincount(cores.ravel(), minlength=m + 1)
    size[0] = 0
    cores[(size < min_core_px)[cores]] = 0
    seeded = np.zeros(n + 1, bool)
    seeded[components[cores > 0]] = True
    seeded[0] = False
    seeds = np.where(cores > 0, cores, 0)
    coreless = (components > 0) & ~seeded[components]
    seeds[coreless] = m + components[coreless]  # a component without a core is its own seed
    found = seeds > 0
    labels = np.zeros(seeds.shape, np.int32)
    labels[found] = 1 + np.searchsorted(np.unique(seeds[found]), seeds[found])  # numbered 1..n
    return labels, components
