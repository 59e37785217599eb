"""Augmentation: image and labels turned alike; colour changes (hue about the grey axis, grey)."""

from __future__ import annotations

import numpy as np
import torch

from geounet.training.augment import augment, hue_rotation
from geounet.training.config import AugmentConfig


def test_augment_keeps_image_and_labels_aligned() -> None:
    y = torch.randint(0, 2, (4, 32, 32))
    x = y[:, None].float().repeat(1, 3, 1, 1)
    aug = AugmentConfig(brightness=0.0, contrast=0.0, noise=0.0)
    xa, ya = augment(x, y, aug, torch.Generator().manual_seed(0))
    assert torch.equal(xa[:, 0].long(), ya)
    assert not torch.equal(ya, y)  # something was flipped or rotated


def test_colour_augmentations() -> None:
    red = torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(hue_rotation(2 * np.pi / 3) @ red, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    grey = torch.tensor([0.4, 0.4, 0.4])
    assert torch.allclose(hue_rotation(1.0) @ grey, grey, atol=1e-6)
    x = torch.rand(2, 3, 8, 8)
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    only_grey = AugmentConfig(flips=False, rot90=False, brightness=0, contrast=0, noise=0, grayscale=1.0, p_color=1.0)
    xa, _ = augment(x, y, only_grey, torch.Generator().manual_seed(0))
    assert torch.allclose(xa, x.mean(dim=1, keepdim=True).expand_as(x))
