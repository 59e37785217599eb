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


def test_removed_objects_become_ground_copied_from_the_same_chip() -> None:
    """A cleared lot: the object and a margin of ground around it are covered by real ground pixels, labelled ground."""
    from geounet.training.augment import erase_objects

    y = torch.zeros(64, 64, dtype=torch.long)
    y[10:20, 10:22] = 1  # a building
    y[10:20, 22:24] = 2  # its contact pixels (with a neighbour)
    y[10:20, 24:34] = 1  # the neighbour: the same object (4-connected through the contacts)
    y[40:50, 40:50] = 1  # another building
    y[0:6, 50:64] = 255  # unlabelled: never copied, never covered
    ground_colour = torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64)  # every pixel told apart
    x = torch.stack([ground_colour, y.float(), torch.zeros(64, 64)])
    xe, ye = erase_objects(x, y, [1, 2], 0, share=1.0, generator=torch.Generator().manual_seed(0))
    assert (ye == 0).sum() > (y == 0).sum()
    assert not ((ye == 1) | (ye == 2)).any()  # both objects taken (share 1): none left
    assert torch.equal(ye == 255, y == 255) and torch.equal(xe[:, y == 255], x[:, y == 255])
    changed = (xe != x).any(dim=0)
    assert changed[10:20, 10:34].all() and changed[40:50, 40:50].all()
    assert float(xe[1][changed].max()) == 0.0  # what covers them was ground (band 1 holds the labels)
    # each lot is one copy of ground from elsewhere: a pixel's value minus its own index is one offset per lot
    offset = (xe[0] - ground_colour)[40:50, 40:50]
    assert torch.equal(offset, torch.full_like(offset, float(offset[0, 0]))) and float(offset[0, 0]) != 0.0
    assert changed[38:52, 38:52].sum() > 100 + 4 * 10  # and the margin of ground around it


def test_removal_keeps_objects_without_room_and_draws_nothing_when_off() -> None:
    from geounet.training.augment import erase_objects

    y = torch.ones(32, 32, dtype=torch.long)
    y[0:4, 0:4] = 0  # too little ground anywhere to cover the one big object
    x = torch.rand(3, 32, 32)
    xe, ye = erase_objects(x, y, [1], 0, share=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(xe, x) and torch.equal(ye, y)
    yb = torch.zeros(2, 32, 32, dtype=torch.long)
    yb[:, 4:8, 4:8] = yb[:, 20:26, 12:16] = 1  # two small buildings on open ground
    xb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a = augment(xb, yb, AugmentConfig(), torch.Generator().manual_seed(3), [1], 0)
    b = augment(xb, yb, AugmentConfig(erase=0.0), torch.Generator().manual_seed(3), [1], 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = augment(xb, yb, AugmentConfig(erase=1.0, p_erase=1.0), torch.Generator().manual_seed(3), [1], 0)
    assert (c[1] == 1).sum() < (a[1] == 1).sum()


def test_removal_takes_buildings_and_contacts_and_leaves_background() -> None:
    from geounet.training.config import ClassConfig, LabelConfig, erase_classes

    classes = [
        ClassConfig("background", [0, 0, 0], "background"),
        ClassConfig("building", [230, 60, 60], "building"),
        ClassConfig("contact", [60, 60, 230], "background"),
    ]
    assert erase_classes(classes, LabelConfig(contact_class="contact")) == ([1, 2], 0)
    assert erase_classes(classes[:2], LabelConfig()) == ([1], 0)
    assert erase_classes([ClassConfig("farm", [0, 0, 0]), ClassConfig("forest", [0, 0, 0])], LabelConfig()) is None
