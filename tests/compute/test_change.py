"""Change measures and grading rules (pure functions), and the pre/post U-Net pass."""

from __future__ import annotations

import numpy as np
import pytest

from geounet.compute.change import (
    GRADES,
    NOT_ASSESSED,
    ChangeRules,
    change_score,
    feature_change,
    grade,
    match_moments,
    pair_forward,
    probability_drop,
)


def test_probability_drop_is_relative_and_clipped():
    p_pre = np.array([0.8, 0.8, 0.0, 0.4])
    p_post = np.array([0.2, 0.9, 0.5, 0.0])
    np.testing.assert_allclose(probability_drop(p_pre, p_post), [0.75, 0.0, 0.0, 1.0], atol=1e-6)


def test_change_score_weights_the_drop_by_pre_confidence():
    rules = ChangeRules(feature_low=0.1, feature_high=0.5, prob_weight=1.0, prob_ref=0.5)
    # unchanged: same probability, no feature distance -> 0
    assert change_score(np.array([0.9]), np.array([0.9]), np.array([0.05]), rules)[0] == 0.0
    # building gone and place changed -> 1
    assert change_score(np.array([0.9]), np.array([0.0]), np.array([0.6]), rules)[0] == pytest.approx(1.0)
    # model never saw a building in pre (c = 0): the score is the feature term alone
    assert change_score(np.array([0.0]), np.array([0.0]), np.array([0.3]), rules)[0] == pytest.approx(0.5)
    # confident pre, feature says no change, probability fully dropped: halfway
    assert change_score(np.array([0.5]), np.array([0.0]), np.array([0.1]), rules)[0] == pytest.approx(0.5)
    np.testing.assert_allclose(feature_change(np.array([0.0, 0.3, 1.0]), rules), [0.0, 0.5, 1.0], atol=1e-6)


def test_grade_thresholds_and_not_assessed():
    out = grade(np.array([0.0, 0.29, 0.3, 0.55, 0.7, 1.0, np.nan]), (0.3, 0.5, 0.7))
    assert list(out) == [
        "no-damage",
        "no-damage",
        "minor-damage",
        "major-damage",
        "destroyed",
        "destroyed",
        NOT_ASSESSED,
    ]
    assert set(GRADES) == {"no-damage", "minor-damage", "major-damage", "destroyed"}
    with pytest.raises(ValueError):
        grade(np.zeros(1), (0.5, 0.3, 0.7))


def test_match_moments_recovers_a_radiometric_change():
    rng = np.random.default_rng(0)
    pre = rng.uniform(0, 255, (3, 40, 40)).astype(np.float32)
    post = (pre - 10.0) / 1.5  # darker, lower contrast
    valid = np.ones((40, 40), bool)
    gain, offset = match_moments(pre, post, valid)
    np.testing.assert_allclose(post * gain[:, None, None] + offset[:, None, None], pre, atol=1e-2)
    g0, o0 = match_moments(pre, post, np.zeros((40, 40), bool))
    assert (g0 == 1).all() and (o0 == 0).all()


def test_pair_forward_is_zero_for_identical_tiles_and_responds_to_change(tiny_model):
    from geounet.models.registry import cached_model

    net, _ = cached_model(tiny_model, "cpu")
    rng = np.random.default_rng(0)
    pre = rng.normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
    post = pre.copy()
    post[1, :, 16:48, 16:48] = -pre[1, :, 16:48, 16:48]  # change the middle of the second tile only
    out = pair_forward(net, pre, post, building_class=1)
    assert out.shape == (2, 3, 64, 64) and out.dtype == np.float32
    assert np.allclose(out[0, 0], out[0, 1]) and np.abs(out[0, 2]).max() < 1e-5  # identical pair
    assert out[1, 2, 24:40, 24:40].mean() > 0.05  # changed centre
    assert out[1, 2, 24:40, 24:40].mean() > 5 * out[1, 2, :4, :4].mean() + 1e-6  # far corner changes less
    assert (out >= 0).all() and (out <= 1).all()


def test_pair_forward_computes_again_in_fp32_where_fp16_overflows(tiny_model):
    """fp16 (the GPU default) overflows past 65504: that pass is redone in fp32, never returned as NaN."""
    import copy

    import torch

    from geounet.models.registry import cached_model

    net = copy.deepcopy(cached_model(tiny_model, "cpu")[0])
    with torch.no_grad():
        for p in net.segmentation_head.parameters():
            p.mul_(1e6)  # logits far beyond fp16's range
    rng = np.random.default_rng(0)
    pre = rng.normal(0, 1, (1, 3, 64, 64)).astype(np.float32)
    post = pre[:, ::-1].copy()
    fp32 = pair_forward(net, pre, post, building_class=1, precision="fp32")
    assert np.isfinite(fp32).all()
    np.testing.assert_array_equal(pair_forward(net, pre, post, building_class=1, precision="fp16"), fp32)
