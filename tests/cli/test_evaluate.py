"""geounet evaluate: options with a fixed set of values are checked before anything is predicted."""

from __future__ import annotations

import pytest

from tests.helpers import DEMO_SCENE, error_lines, invoke


@pytest.mark.parametrize(
    "option, value, valid",
    [
        ("--precision", "int4", "auto, fp32, bf16, fp16, int8"),
        ("--device", "gpu", "auto, cpu, cuda or cuda:N"),
        ("--tta", "d8", "none, flip, flips, d4"),
        ("--unlabelled", "nodata", "background, ignore"),
    ],
)
def test_an_unknown_choice_is_refused_listing_the_valid_ones(option, value, valid, tiny_model, tmp_path):
    labels = tmp_path / "labels.geojson"
    labels.write_text('{"type": "FeatureCollection", "features": []}')
    result = invoke("evaluate", tiny_model, DEMO_SCENE, labels, option, value)
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert line.startswith(f"error: {option}: ") and valid in line and repr(value) in line


def test_rules_are_checked_first_and_used_for_the_polygons_scored(tiny_model, tmp_path):
    """``--rule``: a bad one is one line before any prediction; a good one reaches the run (its settings in the JSON)."""
    import json

    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    with rasterio.open(DEMO_SCENE) as src:
        b, crs = src.bounds, src.crs
    labels = tmp_path / "labels.geojson"
    gpd.GeoDataFrame(geometry=[box(b.left, b.bottom, (b.left + b.right) / 2, b.top)], crs=crs).to_file(labels)
    result = invoke("evaluate", tiny_model, DEMO_SCENE, labels, "--rule", "building.min_area=5")
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert line == "error: --rule: building: unknown key 'min_area' (did you mean 'min_area_m2'?)"
    out = tmp_path / "scores.json"
    args = ["evaluate", tiny_model, DEMO_SCENE, labels, "--default-class", "building", "--json", out]
    result = invoke(*args, "--rule", "building.min_area_m2=1000000")
    assert result.exit_code == 0, result.output
    scored = json.loads(out.read_text())
    assert scored["settings"]["postprocess"] == {"building": {"min_area_m2": 1000000.0}}
    assert scored["objects"]["predicted"] == 0  # no roof is a square kilometre
