"""tta: the D4 transforms are a group, expand/reduce undo each other, and equivariant models are unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geounet.compute.tta import TTA_SETS, apply, expand, invert, reduce


@pytest.mark.parametrize("name", list(TTA_SETS))
def test_every_transform_is_undone_and_the_set_has_distinct_members(name):
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    seen = set()
    for t in TTA_SETS[name]:
        y = apply(x, t)
        np.testing.assert_array_equal(invert(y, t), x)
        seen.add(y.tobytes())
        yt = apply(torch.from_numpy(x), t)
        np.testing.assert_array_equal(yt.numpy(), y)  # torch and numpy agree
    assert len(seen) == len(TTA_SETS[name])  # 8 different images for d4
    assert len(TTA_SETS["d4"]) == 8


@pytest.mark.parametrize("array", [np.asarray, torch.from_numpy])
def test_reduce_of_a_pointwise_model_equals_the_model(array):
    rng = np.random.default_rng(0)
    x = array(rng.random((3, 2, 8, 8), dtype=np.float32))

    def model(b):
        return b * 2.0 + 1.0  # acts on each pixel alone: orientation does not matter

    for t in TTA_SETS.values():
        out = reduce(model(expand(x, t)), t)
        np.testing.assert_allclose(np.asarray(out), np.asarray(model(x)), rtol=1e-6)


def test_reduce_averages_the_answers_of_an_orientation_sensitive_model():
    x = np.zeros((1, 1, 4, 4), np.float32)

    def left_column(b):  # marks the left column of whatever it is shown
        out = np.zeros_like(b)
        out[..., :, 0] = 1.0
        return out

    out = reduce(left_column(expand(x, TTA_SETS["flip"])), TTA_SETS["flip"])
    assert out[0, 0, 0, 0] == 0.5 and out[0, 0, 0, 3] == 0.5 and out[0, 0, 0, 1] == 0.0
    four = reduce(left_column(expand(x, TTA_SETS["d4"])), TTA_SETS["d4"])[0, 0]
    expected = np.zeros((4, 4))
    expected[[0, 3], :] = expected[:, [0, 3]] = 0.25  # each edge is the left column in 2 of the 8 views
    expected[[0, 0, 3, 3], [0, 3, 0, 3]] = 0.5  # a corner lies on two edges
    np.testing.assert_allclose(four, expected, atol=1e-6)
