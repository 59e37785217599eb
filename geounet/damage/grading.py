"""Per building: change measures averaged over its footprint -> damage score and grade.

``damage_score`` comes from the footprint's means over its pixels valid in both
epochs (building probability pre and post, encoder feature distance:
``change.building_score``); the grade from the settings' thresholds, or from a trained
damage head when one is given (which then also gives the score). A building outside the overlap,
or with too small a share of valid pixels, is ``not_assessed`` (score null).
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely

from geounet.compute.change import GRADES, NOT_ASSESSED, building_score, grade
from geounet.compute.grid import Box, GeoGrid
from geounet.compute.postprocess import metric_crs
from geounet.damage.assess import BuildingSums
from geounet.damage.head import DamageHead
from geounet.damage.mosaic import as_window
from geounet.damage.settings import DamageSettings


def grade_buildings(
    buildings: gpd.GeoDataFrame, sums: BuildingSums, pre: GeoGrid, s: DamageSettings, head: DamageHead | None
) -> gpd.GeoDataFrame:
    """The ``damage.gpkg`` table: one row per building, in the pre grid's CRS.

    Columns: ``footprint_id``, ``damage`` (grade), ``damage_score``, ``area_m2``, the mean
    building probabilities pre and post, the mean ``feature_distance``, the score's terms
    (``presence_drop`` D, ``confidence`` c, ``change_term`` F: see
    :func:`geounet.compute.change.building_score`; all null when not assessed) and
    ``valid_fraction`` (share of the footprint with data in both epochs).
    """
    means = sums.means()
    geoms = np.asarray(buildings.geometry.values, dtype=object)
    expected = np.maximum(shapely.area(geoms) / abs(pre.affine.determinant), 1.0)  # footprint area in pixels
    frac = np.minimum(sums.counts / expected, 1.0)
    assessed = (sums.counts > 0) & (frac >= s.min_valid_fraction)
    p_pre, p_post, distance = (np.where(assessed, m, np.nan) for m in means[1:4])
    terms = building_score(p_pre, p_post, distance, s.rules())
    score = terms.score
    grades = grade(score, tuple(s.thresholds))  # type: ignore[arg-type]
    if head is not None:  # the trained head replaces the thresholds (and gives the score)
        pixel_mean = np.where(assessed, means[0], np.nan)  # the head's inputs: as it was trained
        idx, head_score = head.predict(np.stack([pixel_mean, means[1], means[2], means[3]], axis=1)[assessed])
        grades[assessed] = np.array(GRADES, dtype=object)[idx]
        score[assessed] = head_score
    area = buildings.geometry.to_crs(metric_crs(buildings.crs, tuple(buildings.total_bounds))).area.to_numpy()
    return gpd.GeoDataFrame(
        {
            "footprint_id": buildings["footprint_id"].to_numpy(),
            "damage": grades.astype(str),
            "damage_score": np.round(score, 4),
            "area_m2": np.round(area, 2),
            "building_prob_pre": np.round(np.where(assessed, means[1], np.nan), 4),
            "building_prob_post": np.round(np.where(assessed, means[2], np.nan), 4),
            "feature_distance": np.round(np.where(assessed, means[3], np.nan), 4),
            "presence_drop": np.round(terms.presence_drop, 4),
            "confidence": np.round(terms.confidence, 4),
            "change_term": np.round(terms.change_term, 4),
            "valid_fraction": np.round(frac, 4),
        },
        geometry=buildings.geometry.values,
        crs=pre.crs_wkt,
    )


def grade_counts(table: gpd.GeoDataFrame, overlap: Box, pre: GeoGrid) -> dict[str, Any]:
    """run.json's ``buildings``: total, count per grade, and why the not assessed ones were not."""
    grades = table["damage"].to_numpy()
    assessed = grades != NOT_ASSESSED
    inside = shapely.intersects(
        np.asarray(table.geometry.values, dtype=object),
        shapely.box(*rasterio.windows.bounds(as_window(overlap), pre.affine)),
    )
    return {
        "total": len(table),
        "per_grade": {g: int((grades == g).sum()) for g in GRADES + (NOT_ASSESSED,)},
        "not_assessed": {
            "outside_overlap": int((~inside).sum()),
            "too_little_valid_data": int((inside & ~assessed).sum()),  # nodata in pre or post, or sub-pixel
        },
    }
