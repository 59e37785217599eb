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


def test_zoom_keeps_image_and_labels_aligned_and_ignores_the_uncovered_border() -> None:
    from geounet.training.augment import zoom

    y = torch.zeros(64, 64, dtype=torch.long)
    y[16:48, 16:48] = 1  # a 32 px square
    x = y[None].float().repeat(3, 1, 1)
    sizes = set()
    for seed in range(12):
        xz, yz = zoom(x, y, 1.5, torch.Generator().manual_seed(seed))
        assert xz.shape == x.shape and yz.shape == y.shape
        labelled = yz != 255
        # image and labels moved together (bilinear and nearest may differ on the square's outline only)
        assert float(((xz[0] > 0.5).long() != yz)[labelled].float().mean()) < 0.03
        sizes.add(int((yz == 1).sum()))
        if (yz == 255).any():  # zoomed out: the border is ignored, never background
            assert (yz[0] == 255).all() or (yz[:, 0] == 255).all()
    assert min(sizes) < 32 * 32 * 0.8 and max(sizes) > 32 * 32 * 1.2  # factors both ways


def test_blur_keeps_the_mean_and_softens_edges() -> None:
    from geounet.training.augment import gaussian_blur

    x = torch.zeros(3, 32, 32)
    x[:, :, 16:] = 1.0
    b = gaussian_blur(x, 1.5)
    assert b.shape == x.shape
    assert abs(float(b.mean()) - float(x.mean())) < 1e-4
    assert 0.05 < float(b[0, 10, 15]) < 0.5 and torch.equal(gaussian_blur(x, 0.0), x)


def test_options_that_are_off_draw_no_random_numbers() -> None:
    """Configs that do not zoom or blur get the same chips as before those options existed."""
    y = torch.randint(0, 2, (2, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    a = augment(x, y, AugmentConfig(), torch.Generator().manual_seed(3))
    b = augment(x, y, AugmentConfig(scale=0.0, blur=0.0, p_blur=0.9), torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = augment(x, y, AugmentConfig(scale=0.3, blur=1.0, p_blur=1.0), torch.Generator().manual_seed(3))
    assert not torch.equal(a[0], c[0])
