"""The damage head model: fit, save, load, predict."""

from __future__ import annotations

import numpy as np
import pytest

from geounet.damage.head import fit_head, load_head, save_head
from geounet.errors import GeounetError
from tests.helpers import DEFAULT_MODEL


def test_fit_head_learns_separable_grades_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    score = rng.uniform(0, 1, 400)
    y = np.digitize(score, [0.25, 0.5, 0.75])  # the grade follows the first feature
    x = np.column_stack([score, rng.uniform(0, 1, 400), rng.uniform(0, 1, 400), rng.uniform(0, 1, 400)])
    head = fit_head(x, y)
    idx, sev = head.predict(x)
    assert (idx == y).mean() > 0.9
    assert np.corrcoef(sev, score)[0, 1] > 0.9 and ((sev >= 0) & (sev <= 1)).all()
    save_head(tmp_path / "head.safetensors", head)
    again = load_head(tmp_path / "head.safetensors")
    assert np.allclose(again.probabilities(x), head.probabilities(x))
    with pytest.raises(ValueError, match="two grades"):
        fit_head(x[:5], np.zeros(5, int))


def test_a_model_file_is_not_a_damage_head():
    with pytest.raises(GeounetError, match="not a geounet damage head"):
        load_head(DEFAULT_MODEL)


def test_a_missing_head_file_is_one_line(tmp_path):
    with pytest.raises(GeounetError, match="damage head file not found"):
        load_head(tmp_path / "nope.safetensors")
