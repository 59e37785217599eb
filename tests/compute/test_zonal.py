"""Vectorized zonal statistics agree with a per-zone loop and add up across blocks."""

from __future__ import annotations

import numpy as np
import pytest

from geounet.compute.zonal import zonal_means, zonal_sums


def test_zonal_sums_match_a_loop_and_skip_invalid_pixels():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, (50, 40))
    values = rng.uniform(0, 1, (2, 50, 40))
    valid = rng.uniform(size=(50, 40)) > 0.3
    sums, counts = zonal_sums(ids, values, valid, 7)  # zone 6 and 7 have no pixel
    assert sums.shape == (2, 8) and counts.shape == (8,)
    for k in range(1, 6):
        sel = (ids == k) & valid
        assert counts[k] == sel.sum()
        np.testing.assert_allclose(sums[:, k], values[:, sel].sum(axis=1))
    assert counts[6] == counts[7] == 0
    means = zonal_means(sums, counts)
    assert np.isnan(means[:, 6]).all()
    np.testing.assert_allclose(means[0, 3], values[0][(ids == 3) & valid].mean())


def test_sums_from_blocks_equal_the_whole():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 4, (30, 30))
    values = rng.uniform(0, 1, (1, 30, 30))
    valid = np.ones((30, 30), bool)
    whole = zonal_sums(ids, values, valid, 3)
    top = zonal_sums(ids[:13], values[:, :13], valid[:13], 3)
    bottom = zonal_sums(ids[13:], values[:, 13:], valid[13:], 3)
    np.testing.assert_allclose(top[0] + bottom[0], whole[0])
    np.testing.assert_array_equal(top[1] + bottom[1], whole[1])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        zonal_sums(np.zeros((4, 4), int), np.zeros((1, 4, 5)), np.ones((4, 4), bool), 1)
