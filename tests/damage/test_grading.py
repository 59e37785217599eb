"""Per building: sums of the change measures -> damage score, grade (thresholds or a head), counts."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geounet.compute.grid import Box, GeoGrid
from geounet.damage.assess import BuildingSums
from geounet.damage.grading import grade_buildings, grade_counts
from geounet.damage.head import DamageHead
from geounet.damage.settings import DamageSettings

GRID = GeoGrid("EPSG:26915", (1.0, 0.0, 367000.0, 0.0, -1.0, 4104000.0), 100, 100)  # 1 m pixels


def _buildings() -> gpd.GeoDataFrame:
    """Four 10 x 10 m squares inside the grid, one outside it."""
    x, y = 367000.0, 4104000.0
    geoms = [shapely.box(x + 10 * k, y - 30, x + 10 * k + 10, y - 20) for k in range(4)]
    geoms.append(shapely.box(x - 50, y - 30, x - 40, y - 20))
    return gpd.GeoDataFrame({"footprint_id": np.arange(5)}, geometry=geoms, crs=GRID.crs_wkt)


def _sums(scores: list[float], counts: list[int]) -> BuildingSums:
    sums = BuildingSums(len(scores))
    sums.counts[:] = counts
    sums.sums[:] = np.array([scores, [0.8] * len(scores), [0.2] * len(scores), [0.5] * len(scores)]) * counts
    return sums


def test_scores_grades_and_not_assessed_buildings():
    """Each score's grade; a building with data on under half its area, and one outside, not assessed."""
    table = grade_buildings(
        _buildings(), _sums([0.1, 0.6, 0.9, 0.9, 0.0], [100, 100, 100, 40, 0]), GRID, DamageSettings(), None
    )
    assert list(table.columns) == [
        "footprint_id",
        "damage",
        "damage_score",
        "area_m2",
        "building_prob_pre",
        "building_prob_post",
        "feature_distance",
        "valid_fraction",
        "geometry",
    ]
    assert list(table["damage"]) == ["no-damage", "major-damage", "destroyed", "not_assessed", "not_assessed"]
    assert table["damage_score"].tolist()[:3] == pytest.approx([0.1, 0.6, 0.9])
    assert table["damage_score"].isna().tolist() == [False, False, False, True, True]
    assert table["valid_fraction"].tolist() == pytest.approx([1.0, 1.0, 1.0, 0.4, 0.0])
    assert table["area_m2"].tolist() == pytest.approx([100.0] * 5, rel=1e-3)
    assert table["building_prob_pre"].tolist()[:3] == pytest.approx([0.8] * 3)
    assert table.crs == GRID.crs_wkt
    counts = grade_counts(table, Box(0, 0, 100, 100), GRID)
    assert counts == {
        "total": 5,
        "per_grade": {"no-damage": 1, "minor-damage": 0, "major-damage": 1, "destroyed": 1, "not_assessed": 2},
        "not_assessed": {"outside_overlap": 1, "too_little_valid_data": 1},
    }


def test_a_head_replaces_the_thresholds_and_gives_the_score():
    """A head that calls everything destroyed, with thresholds that would say no damage."""
    head = DamageHead(np.zeros((4, 4)), np.array([0.0, 0.0, 0.0, 50.0]), np.zeros(4), np.ones(4))
    table = grade_buildings(
        _buildings(),
        _sums([0.1, 0.1, 0.1, 0.1, 0.0], [100, 100, 100, 100, 0]),
        GRID,
        DamageSettings(thresholds=[0.5, 0.6, 0.7]),
        head,
    )
    assert list(table["damage"]) == ["destroyed"] * 4 + ["not_assessed"]
    assert table["damage_score"].tolist()[:4] == pytest.approx([1.0] * 4)
