"""The buildings a damage run grades: footprints from a vector file, or detected by the model on pre.

Either way the result is a GeoDataFrame in the pre grid's CRS with a ``footprint_id``
column (the feature's row number in the file, or the detection order) and one polygon
per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely

from geounet.damage.settings import DamageSettings
from geounet.engine.executors import Executor
from geounet.engine.predict import make_executor, predict_scene
from geounet.engine.settings import PredictSettings
from geounet.errors import InputError
from geounet.io.folders import output_dir_for

POLYGONAL = (3, 6)  # shapely type ids of Polygon and MultiPolygon


def read_footprints(path: Path, crs_wkt: str) -> tuple[gpd.GeoDataFrame, dict[str, Any]]:
    """Footprint polygons reprojected to ``crs_wkt``, repaired; counts of what was done (for run.json).

    Invalid polygons are repaired with ``make_valid`` (keeping the polygonal parts); null,
    empty and non-polygonal geometries are skipped.
    """
    path = Path(path)
    gdf = _read_vector(path)
    counts: dict[str, Any] = {
        "read": len(gdf),
        "crs": gdf.crs.to_string(),
        "reprojected": False,
        "repaired": 0,
        "skipped_invalid": 0,
        "skipped_not_polygon": 0,
        "skipped_empty": 0,
    }
    gdf = gdf[[]].set_geometry(gdf.geometry).assign(footprint_id=np.arange(len(gdf)))
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    keep = _repair(geoms, counts)
    gdf = gdf.set_geometry(gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs))[keep]
    if not rasterio.crs.CRS.from_user_input(gdf.crs) == rasterio.crs.CRS.from_wkt(crs_wkt):
        gdf = gdf.to_crs(crs_wkt)
        counts["reprojected"] = True
        bad = ~gdf.is_valid  # reprojection can bend an edge across another
        if bad.any():
            gdf.loc[bad, "geometry"] = gdf.geometry[bad].make_valid()
    counts["used"] = len(gdf)
    if gdf.empty:
        raise InputError(path, f"no usable footprint: {counts['read']} read, all empty, invalid or not polygons")
    return gdf.reset_index(drop=True), counts


def _read_vector(path: Path) -> gpd.GeoDataFrame:
    """A vector file with at least one feature and a CRS; one-line :class:`InputError` otherwise."""
    if not path.exists():
        raise InputError(path, "footprints file not found")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - pyogrio raises DataSourceError and friends
        raise InputError(path, f"not a readable vector file ({str(exc).splitlines()[0][:160]})") from None
    if gdf.empty:
        raise InputError(path, "footprints file has no features")
    if gdf.crs is None:
        raise InputError(path, "footprints have no CRS: cannot place them (set one, e.g. ogr2ogr -a_srs EPSG:4326)")
    return gdf


def _repair(geoms: np.ndarray, counts: dict[str, Any]) -> np.ndarray:
    """Repair invalid polygons of ``geoms`` in place; returns which to keep, and counts the rest."""
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    counts["skipped_empty"] = int(empty.sum())
    polygonal = np.isin(shapely.get_type_id(geoms), POLYGONAL)
    counts["skipped_not_polygon"] = int((~empty & ~polygonal).sum())
    keep = ~empty & polygonal
    invalid = keep & ~shapely.is_valid(geoms)
    for i in np.flatnonzero(invalid):
        g = shapely.make_valid(geoms[i])
        parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon") and p.area > 0]
        if parts:
            geoms[i] = shapely.union_all(parts)
            counts["repaired"] += 1
        else:
            keep[i] = False
            counts["skipped_invalid"] += 1
    return keep


def detect_footprints(
    pre_vrt: Path, work: Path, model_path: Path, settings: DamageSettings, executor: Executor | None
) -> gpd.GeoDataFrame:
    """Buildings from the buildings model on the pre mosaic, at the pre grid's resolution (never resampled).

    ``predict_scene`` writes into ``work``. ``executor``: where the prediction runs; None:
    one made (and closed) here.
    """
    s = settings
    ps = PredictSettings(
        tile_size=s.tile_size,
        overlap=s.overlap,
        batch_size=s.batch_size,
        device=s.device,
        precision=s.precision,
        resample_tolerance=1e9,
        vector=True,
        quiet=True,
        decision_weights=s.detect_decision_weights,
        rescale=s.rescale,
    )
    own = executor is None
    runner = make_executor(ps, model_path) if executor is None else executor
    try:
        predict_scene(pre_vrt, work, model_path, ps, runner, last=own)  # an executor of its own: no scene follows
    finally:
        if own:
            runner.close()
    gdf = gpd.read_file(output_dir_for(pre_vrt, work) / "features.gpkg", layer="buildings")
    return gdf[[]].set_geometry(gdf.geometry).assign(footprint_id=np.arange(len(gdf)))
