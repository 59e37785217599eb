"""Cleaning polygons in metres: holes, specks, simplification, building regularisation. Pure.

All rules are in metres / square metres on the ground. Geometries are processed in a
local Lambert azimuthal *equal-area* projection centred on the scene (``metric_crs``):
areas are exact and lengths within 0.01% over tens of kilometres, at any latitude,
poles included, where a UTM zone would not exist.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import shapely
from pyproj import CRS, Transformer

from geounet.compute.regularize import regularize_outlines

if TYPE_CHECKING:  # geopandas (and pandas) only where a GeoDataFrame is cleaned: not at every command's start
    import geopandas as gpd


@dataclass
class ClassRules:
    """Post-processing for one class kind (metres and square metres on the ground)."""

    min_area_m2: float = 0.0  # drop polygons smaller than this (after filling holes)
    hole_area_m2: float = 0.0  # fill holes smaller than this
    simplify_m: float = 0.0  # Douglas-Peucker tolerance (topology preserving)
    regularize: bool = False  # straight walls and right angles that keep the pixels (compute.regularize)
    split_m: float = 0.0  # split touching objects: watershed seeds at least this far apart (0: off)
    # models with a contact class: buildings are seeded by their cores, the pixels at least this far
    # from any pixel that is not building (0: by whole components of building pixels)
    seed_m: float = 0.0
    spur_m: float = 0.0  # road centre lines: prune spurs shorter than this
    min_length_m: float = 0.0  # road centre lines: drop lines shorter than this

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_RULES: dict[str, ClassRules] = {
    "building": ClassRules(min_area_m2=4.0, hole_area_m2=4.0, simplify_m=0.5, regularize=True, seed_m=1.25),
    "road": ClassRules(min_area_m2=20.0, hole_area_m2=20.0, simplify_m=0.5, spur_m=10.0, min_length_m=5.0),
    "landcover": ClassRules(min_area_m2=400.0, hole_area_m2=400.0, simplify_m=5.0),
}


def metric_crs(crs, bounds: tuple[float, float, float, float]) -> CRS:
    """Local equal-area CRS (metres) centred on ``bounds`` (minx, miny, maxx, maxy in ``crs``)."""
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2)
    return CRS.from_proj4(f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs")


def fill_holes(geoms: np.ndarray, max_hole_area: float) -> np.ndarray:
    """Remove interior rings smaller than ``max_hole_area`` (units of the geometry's CRS)."""
    if max_hole_area <= 0:
        return geoms
    out = np.array(geoms, dtype=object)
    with_holes = np.flatnonzero(shapely.get_num_interior_rings(shapely.get_geometry(out, 0)) > 0)
    multi = np.flatnonzero(shapely.get_num_geometries(out) > 1)
    for i in np.union1d(with_holes, multi):  # only polygons that have holes need work
        g = out[i]
        polys = []
        for p in shapely.get_parts(g):
            holes = [r for r in p.interiors if shapely.Polygon(r).area >= max_hole_area]
            polys.append(shapely.Polygon(p.exterior, holes))
        out[i] = polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)
    return out


def clean_geometries(geoms: np.ndarray, rules: ClassRules) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``rules`` to polygons in a metric CRS (metres) whose rings have no collinear vertex.

    Returns the cleaned geometries and the indexes (into ``geoms``) of those kept. The
    vector stage's polygons have none (traced by GDAL, seams dissolved, then mapped through
    transforms that keep corners corners: ``compute.vectorize``); other polygons go through
    :func:`clean_polygons`, which removes them first.
    """
    geoms = np.asarray(geoms, dtype=object)
    keep = np.arange(len(geoms))
    if not len(geoms):
        return geoms, keep
    # Canonical rings first (fixed start and orientation): simplification then gives the same
    # result however the polygon was assembled (one block or merged pieces).
    geoms = fill_holes(shapely.normalize(geoms), rules.hole_area_m2)
    big = shapely.area(geoms) >= max(rules.min_area_m2, 1e-12)
    geoms, keep = geoms[big], keep[big]
    if rules.regularize and len(geoms):
        tolerance = max(rules.simplify_m, 0.1)
        geoms = regularize_outlines(geoms, simplify_m=tolerance, min_wall_m=2 * tolerance)
    elif rules.simplify_m > 0 and len(geoms):
        geoms = shapely.simplify(geoms, rules.simplify_m, preserve_topology=True)
    geoms = repair_polygons(geoms)
    ok = ~shapely.is_empty(geoms) & (shapely.area(geoms) >= max(rules.min_area_m2, 1e-12))
    return geoms[ok], keep[ok]


def clean_polygons(gdf: gpd.GeoDataFrame, rules: ClassRules) -> gpd.GeoDataFrame:
    """Apply ``rules`` to polygons in a metric CRS; adds ``area_m2`` and ``perimeter_m``."""
    import geopandas as gpd

    # any polygons: collinear vertices removed first, as clean_geometries expects
    geoms, keep = clean_geometries(shapely.simplify(np.asarray(gdf.geometry.values, dtype=object), 0.0), rules)
    gdf = gdf.iloc[keep].set_geometry(gpd.GeoSeries(geoms, index=gdf.index[keep], crs=gdf.crs))
    return gdf.assign(area_m2=shapely.area(geoms), perimeter_m=shapely.length(geoms))


def repair_polygons(geoms: np.ndarray) -> np.ndarray:
    """make_valid where needed, keeping only the polygonal parts (a repaired polygon may yield lines)."""
    arr = np.asarray(geoms, dtype=object)
    bad = np.flatnonzero(~shapely.is_valid(arr))
    if not len(bad):
        return arr
    out = arr.copy()
    for i in bad:  # usually none
        g = shapely.make_valid(arr[i])
        if g.geom_type not in ("Polygon", "MultiPolygon"):
            parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
            g = shapely.union_all(parts) if parts else shapely.Polygon()
        out[i] = g
    return out


def valid_polygons(geoms: gpd.GeoSeries) -> gpd.GeoSeries:
    """:func:`repair_polygons` for a GeoSeries."""
    import geopandas as gpd

    return gpd.GeoSeries(repair_polygons(geoms.values), index=geoms.index, crs=geoms.crs)
