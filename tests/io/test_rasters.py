"""Pure raster helpers: probabilities -> uint8 scores and classes."""

from __future__ import annotations

import numpy as np
import pytest

from geounet.io.rasters import NODATA, SCORE_SCALE, finalize_block


@pytest.mark.parametrize("n_classes", [1, 2, 3, 6])
def test_finalize_block_equals_argmax_and_rounded_scores(n_classes):
    rng = np.random.default_rng(n_classes)
    probs = rng.random((n_classes, 70, 90), dtype=np.float32)
    probs[:, :5, :5] = 0.25  # exact ties: the first class wins, as np.argmax
    probs[0, 10, 10], probs[-1, 11, 11] = -1e-6, 1.0 + 1e-6  # float overshoot is clipped
    valid = rng.random((70, 90)) > 0.2
    scores, classes = finalize_block(probs, valid)
    assert scores.dtype == classes.dtype == np.uint8 and scores.shape == probs.shape
    expected = np.argmax(probs, axis=0)
    np.testing.assert_array_equal(classes[valid], expected[valid])
    dn = np.rint(np.clip(probs, 0, 1) * SCORE_SCALE)
    np.testing.assert_array_equal(scores[:, valid], dn[:, valid])
    assert np.all(classes[~valid] == NODATA) and np.all(scores[:, ~valid] == NODATA)
    assert scores[:, valid].max() <= SCORE_SCALE


def test_finalize_block_all_valid_leaves_no_nodata():
    probs = np.stack([np.full((4, 4), 0.7, np.float32), np.full((4, 4), 0.3, np.float32)])
    scores, classes = finalize_block(probs, np.ones((4, 4), bool))
    assert np.all(classes == 0) and np.all(scores[0] == 178) and np.all(scores[1] == 76)


@pytest.mark.parametrize(
    "size, factors", [((512, 300), []), ((513, 10), [2]), ((4096, 4096), [2, 4, 8]), ((1000, 5000), [2, 4, 8, 16])]
)
def test_overview_factors_stop_when_a_level_fits_one_block(size, factors):
    from geounet.io.rasters import overview_factors

    assert overview_factors(*size, block=512) == factors
