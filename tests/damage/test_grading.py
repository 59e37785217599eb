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


def _sums(p_pre: list[float], p_post: list[float], distance: list[float], counts: list[int]) -> BuildingSums:
    """Sums over each building's ``counts`` valid pixels of constant measures (the change score band unused)."""
    sums = BuildingSums(len(p_pre))
    sums.counts[:] = counts
    sums.sums[:] = np.array([[0.0] * len(p_pre), p_pre, p_post, distance]) * counts
    return sums


def test_scores_grades_and_not_assessed_buildings():
    """Each building's score from its means; one with data on under half its area, and one outside, not assessed.

    Default rules: D = clip(1 - p_post / min(p_pre, 0.3)), c = min(1, p_pre / 0.3), F from the feature
    distance between 0.2 and 0.4, score = 1 - (1 - c D)(1 - F).
    """
    sums = _sums(
        [0.8, 0.8, 0.8, 0.8, 0.8],  # the model saw each building before
        [0.7, 0.1, 0.0, 0.0, 0.0],  # still there; a third of the reference left; gone; gone
        [0.1, 0.2, 0.3, 0.3, 0.3],
        [100, 100, 100, 40, 0],
    )
    table = grade_buildings(_buildings(), sums, GRID, DamageSettings(), None)
    assert list(table.columns) == [
        "footprint_id",
        "damage",
        "damage_score",
        "area_m2",
        "building_prob_pre",
        "building_prob_post",
        "feature_distance",
        "presence_drop",
        "confidence",
        "change_term",
        "valid_fraction",
        "geometry",
    ]
    assert list(table["damage"]) == ["no-damage", "major-damage", "destroyed", "not_assessed", "not_assessed"]
    assert table["damage_score"].tolist()[:3] == pytest.approx([0.0, 2 / 3, 1.0], abs=1e-4)
    assert table["presence_drop"].tolist()[:3] == pytest.approx([0.0, 2 / 3, 1.0], abs=1e-4)
    assert table["change_term"].tolist()[:3] == pytest.approx([0.0, 0.0, 0.5], abs=1e-4)
    assert table["damage_score"].isna().tolist() == [False, False, False, True, True]
    assert table["presence_drop"].isna().tolist() == [False, False, False, True, True]
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
        _sums([0.8] * 5, [0.8] * 5, [0.1] * 5, [100, 100, 100, 100, 0]),  # intact by the thresholds
        GRID,
        DamageSettings(thresholds=[0.5, 0.6, 0.7]),
        head,
    )
    assert list(table["damage"]) == ["destroyed"] * 4 + ["not_assessed"]
    assert table["damage_score"].tolist()[:4] == pytest.approx([1.0] * 4)
