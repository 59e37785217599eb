"""Areas of interest (``--aoi FILE``, ``--bbox``): the part of a scene to predict.

An :class:`AreaOfInterest` is read once, in its own CRS (a vector file's polygons
unioned, or a bounding box), and put on each scene's CRS and pixel grid when the scene
is planned. Tiles whose extent misses it are never read or run
(``geounet.io.coverage.aoi_tiles``), output pixels whose centre is outside it are
nodata (:func:`inside_block`), and polygons are cut along it (the vector stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from geounet.errors import GeounetError, InputError

DEFAULT_BBOX_CRS = "EPSG:4326"
SEGMENTS = 64  # points per bounding-box edge: its edges bend when put on another CRS


@dataclass(frozen=True)
class AreaOfInterest:
    """A polygonal area in its own CRS; ``source``: where it came from (for run.json and messages)."""

    geometry: Any  # shapely (Multi)Polygon
    crs_wkt: str
    source: str

    def in_crs(self, crs_wkt: str) -> Any:
        """The area on ``crs_wkt`` (edges densified first, so they bend as they should); empty if it cannot be."""
        geom = shapely.segmentize(self.geometry, _step(self.geometry))
        src, dst = CRS.from_wkt(self.crs_wkt), CRS.from_wkt(crs_wkt)
        if src == dst:
            return geom
        t = Transformer.from_crs(src, dst, always_xy=True)

        def project(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(t.transform(xy[:, 0], xy[:, 1]))

        out = shapely.make_valid(shapely.transform(geom, project))
        if not np.isfinite(shapely.bounds(out)).all():  # beyond the CRS's area of use
            raise GeounetError(self.source, f"cannot be put on the scene's CRS ({dst.name})")
        return _polygonal(out)

    def on_grid(self, crs: Any, transform: Any, shape: tuple[int, int]) -> np.ndarray:
        """(rows, cols) bool: the pixels of a grid (``crs``, ``transform``, ``shape``) whose centre is in the area."""
        area_px = to_pixels(self.in_crs(CRS.from_user_input(crs).to_wkt()), transform)
        return inside_block(area_px, 0, 0, *shape)


def to_pixels(geom: Any, transform: Any) -> Any:
    """``geom`` (in a grid's CRS) in that grid's pixel coordinates (x = column, y = row); ``transform``: its affine."""
    a, b, c, d, e, f = tuple(~Affine(*tuple(transform)[:6]))[:6]

    def project(xy: np.ndarray) -> np.ndarray:
        return np.column_stack((a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f))

    return shapely.transform(geom, project)


def area_of_interest(
    aoi: str | Path | None, bbox: Any = None, bbox_crs: str = DEFAULT_BBOX_CRS
) -> AreaOfInterest | None:
    """The area asked for: ``aoi`` (a vector file), ``bbox`` (minx, miny, maxx, maxy in ``bbox_crs``), or None."""
    if aoi is not None and bbox is not None:
        raise GeounetError(None, "--aoi and --bbox: give one of them, not both")
    if bbox is not None:
        return bbox_area(bbox, bbox_crs)
    if aoi is not None:
        return read_area(aoi)
    return None


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``"minx,miny,maxx,maxy"`` -> four floats (a one-line error otherwise)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise GeounetError(None, f"--bbox: expected minx,miny,maxx,maxy (four numbers), got {text!r}")
    return values[0], values[1], values[2], values[3]


def bbox_problems(bbox: Any, bbox_crs: str, name: str = "--bbox") -> list[str]:
    """What is wrong with a bounding box and its CRS, one line each."""
    problems = []
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not np.isfinite(values).all():
        problems.append(f"{name}: expected [minx, miny, maxx, maxy] (four numbers), got {bbox!r}")
    elif not (values[0] < values[2] and values[1] < values[3]):
        problems.append(f"{name}: needs minx < maxx and miny < maxy, got {values}")
    try:
        CRS.from_user_input(bbox_crs)
    except CRSError:
        problems.append(
            f"{name}_crs: not a CRS: {bbox_crs!r}" if name == "bbox" else f"{name}-crs: not a CRS: {bbox_crs!r}"
        )
    return problems


def bbox_area(bbox: Any, bbox_crs: str = DEFAULT_BBOX_CRS) -> AreaOfInterest:
    """A bounding box (minx, miny, maxx, maxy in ``bbox_crs``) as an area."""
    problems = bbox_problems(bbox, bbox_crs)
    if problems:
        raise GeounetError(None, "; ".join(problems))
    minx, miny, maxx, maxy = (float(v) for v in bbox)
    text = ",".join(f"{v:g}" for v in (minx, miny, maxx, maxy))
    return AreaOfInterest(
        shapely.box(minx, miny, maxx, maxy), CRS.from_user_input(bbox_crs).to_wkt(), f"bbox {text} ({bbox_crs})"
    )


def read_area(path: str | Path) -> AreaOfInterest:
    """A vector file's polygons (any layer pyogrio reads first, any CRS), unioned."""
    import pyogrio

    try:
        info = pyogrio.read_info(path)
        df = pyogrio.read_dataframe(path, columns=[])
    except Exception as exc:  # noqa: BLE001  any reading problem is one line about the file
        raise InputError(
            path, f"cannot read it as a vector file: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from None
    crs = info.get("crs")
    if crs is None:
        if len(df):
            raise InputError(path, "has no CRS")
        raise InputError(path, "no polygon in it")
    geom = _polygonal(shapely.make_valid(np.asarray(df.geometry.values, dtype=object)))
    if geom.is_empty:
        raise InputError(path, "no polygon in it")
    return AreaOfInterest(geom, CRS.from_user_input(crs).to_wkt(), str(path))


def inside_block(area_px: Any, row0: int, col0: int, height: int, width: int) -> np.ndarray:
    """(height, width) bool: the pixels of a block whose centre is inside ``area_px`` (pixel coordinates)."""
    box = shapely.box(col0, row0, col0 + width, row0 + height)
    if not shapely.intersects(area_px, box):
        return np.zeros((height, width), bool)
    if shapely.contains(area_px, box):
        return np.ones((height, width), bool)
    from rasterio.features import rasterize

    part = shapely.clip_by_rect(area_px, col0 - 1, row0 - 1, col0 + width + 1, row0 + height + 1)
    out = rasterize([part], out_shape=(height, width), transform=Affine.translation(col0, row0), dtype="uint8")
    return out.astype(bool)


def _polygonal(geoms: Any) -> Any:
    """The union of the polygonal parts of ``geoms`` (one geometry or an array); empty if none."""
    parts = shapely.get_parts(np.atleast_1d(np.asarray(geoms, dtype=object)))
    parts = shapely.get_parts(parts)  # collections inside collections
    polys = parts[np.isin(shapely.get_type_id(parts), (3, 6))] if len(parts) else parts
    polys = polys[~shapely.is_empty(polys)] if len(polys) else polys
    if not len(polys):
        return shapely.MultiPolygon()
    return shapely.union_all(polys)


def _step(geom: Any) -> float:
    """The longest segment kept when densifying ``geom`` (1/:data:`SEGMENTS` of its extent)."""
    minx, miny, maxx, maxy = shapely.bounds(geom)
    return max(maxx - minx, maxy - miny, 1e-9) / SEGMENTS
