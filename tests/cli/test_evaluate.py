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
