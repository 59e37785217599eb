"""Losses: unlabelled pixels do not count; class weights weight the CE / BCE term."""

from __future__ import annotations

import pytest
import torch

from geounet.io.labels import IGNORE_INDEX
from geounet.training.config import LOSSES, WEIGHTED_LOSSES
from geounet.training.losses import make_loss


def test_losses_ignore_unlabelled_pixels_and_weight_classes() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    noisy = target.clone()
    noisy[:, :4] = IGNORE_INDEX
    changed = logits.clone()
    changed[:, :, :4] = 10 * torch.randn(2, 3, 4, 8)  # logits under ignored pixels do not matter
    assert set(LOSSES) == {"dice_ce", "ce", "bce", "dice", "focal", "tversky"}
    for name in LOSSES:
        loss = make_loss(name)
        assert torch.isfinite(loss(logits, target))
        assert loss(logits, noisy).item() == pytest.approx(loss(changed, noisy).item(), rel=1e-5), name
    assert set(WEIGHTED_LOSSES) == {"ce", "bce", "dice_ce"}
    for name in WEIGHTED_LOSSES:
        plain, ones = make_loss(name), make_loss(name, class_weights=[1.0, 1.0, 1.0])
        assert ones(logits, noisy).item() == pytest.approx(plain(logits, noisy).item(), rel=1e-5)
        # All weight on class 2: a prediction error on class-0 pixels no longer counts in the CE / BCE term.
        only_2 = make_loss(name, class_weights=[0.0, 0.0, 1.0])
        target_2 = torch.where(target == 2, target, torch.zeros_like(target))
        worse_on_0 = logits.clone()
        worse_on_0[:, 1] += 5.0 * (target_2 == 0)  # push class-0 pixels towards class 1
        if name != "dice_ce":  # (the dice term has no weights)
            assert only_2(worse_on_0, target_2).item() == pytest.approx(only_2(logits, target_2).item(), rel=1e-4)
        assert plain(worse_on_0, target_2).item() > plain(logits, target_2).item()
