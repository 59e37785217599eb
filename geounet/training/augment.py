"""Chip augmentation with plain torch ops: building removal, flips, turns, zoom, colour and blur, drawn from one generator.

Options that are off draw no random numbers, so configs that do not use them get the same chips as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from geounet.io.labels import IGNORE_INDEX
from geounet.training.config import AugmentConfig

if TYPE_CHECKING:
    import torch


def augment(
    x: torch.Tensor,
    y: torch.Tensor,
    aug: AugmentConfig,
    generator: torch.Generator,
    object_ids: Sequence[int] = (),
    ground_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented copies of a batch: ``x`` (B, C, H, W) float in DN / scale, ``y`` (B, H, W) class indexes.

    Removal (with ``aug.erase`` > 0, with probability ``p_erase`` per chip): objects taken
    away, each with probability ``erase`` (:func:`erase_objects`; ``object_ids``: the
    classes an object is made of, ``ground_id``: the class the ground left behind gets).
    Geometric: random horizontal/vertical flips and 90-degree rotations (square chips),
    and a zoom by up to ``scale`` (ground-resolution jitter; image bilinear, labels
    nearest, uncovered border ignored), applied to image and labels alike. Colour (with probability ``p_color`` per chip):
    contrast change around the chip mean, brightness shift, saturation change (towards
    or away from the per-pixel band mean), hue rotation about the grey axis (3 bands),
    conversion to grey (with probability ``grayscale``), gaussian noise. Blur (with
    probability ``p_blur``): a gaussian of sigma up to ``blur`` pixels.
    """
    import torch

    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        if aug.erase and object_ids and torch.rand((), generator=generator) < aug.p_erase:
            xi, yi = erase_objects(xi, yi, object_ids, ground_id, aug.erase, generator)
        xi, yi = _geometric(xi, yi, aug, generator)
        if aug.scale:
            xi, yi = zoom(xi, yi, 1.0 + aug.scale, generator)
        if torch.rand((), generator=generator) < aug.p_color:
            xi = _colour(xi, aug, generator)
        if aug.blur and torch.rand((), generator=generator) < aug.p_blur:
            xi = gaussian_blur(xi, aug.blur * float(torch.rand((), generator=generator)))
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


def erase_objects(
    xi: torch.Tensor,
    yi: torch.Tensor,
    object_ids: Sequence[int],
    ground_id: int,
    share: float,
    generator: torch.Generator,
    margin: int = 3,
    tries: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A chip (C, H, W) and its labels (H, W) with some objects removed, as if cleared: the lot, not a roof.

    Objects are the 4-connected components of ``object_ids`` pixels (a building with the
    contact pixels around it, or a block of attached ones). Each is taken with probability
    ``share``: it and ``margin`` pixels of ground around it (never another object or
    unlabelled pixels) are covered by a copy of the chip's own pixels at a random offset
    where every pixel is ground, and labelled ``ground_id``. An object with no such offset
    in ``tries`` draws is kept. Real ground from the same image, not a synthetic fill.
    """
    import torch
    from scipy import ndimage

    labels = yi.numpy()
    is_object = np.isin(labels, list(object_ids))
    components, n = ndimage.label(is_object, structure=ndimage.generate_binary_structure(2, 1))
    if n == 0:
        return xi, yi
    taken = np.flatnonzero((torch.rand(n, generator=generator) < share).numpy())
    if not len(taken):
        return xi, yi
    ground = labels == ground_id
    h, w = labels.shape
    x, y = xi.clone(), yi.clone()
    boxes = ndimage.find_objects(components)
    for k in taken:
        rows, cols = boxes[k]
        r0, c0 = max(rows.start - margin, 0), max(cols.start - margin, 0)
        r1, c1 = min(rows.stop + margin, h), min(cols.stop + margin, w)
        own = components[r0:r1, c0:c1] == k + 1
        lot = own | (ndimage.binary_dilation(own, iterations=margin) & ground[r0:r1, c0:c1])
        bh, bw = r1 - r0, c1 - c0
        if bh >= h or bw >= w:
            continue
        for _ in range(tries):
            sr = int(torch.randint(h - bh + 1, (), generator=generator))
            sc = int(torch.randint(w - bw + 1, (), generator=generator))
            if ground[sr : sr + bh, sc : sc + bw][lot].all():
                cover = torch.from_numpy(lot)
                x[:, r0:r1, c0:c1][:, cover] = xi[:, sr : sr + bh, sc : sc + bw][:, cover]
                y[r0:r1, c0:c1][cover] = ground_id
                break
    return x, y


def _geometric(
    xi: torch.Tensor, yi: torch.Tensor, aug: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chip (C, H, W) and its labels (H, W), flipped and turned alike."""
    import torch

    if aug.flips:
        if torch.rand((), generator=generator) < 0.5:
            xi, yi = xi.flip(-1), yi.flip(-1)
        if torch.rand((), generator=generator) < 0.5:
            xi, yi = xi.flip(-2), yi.flip(-2)
    if aug.rot90 and xi.shape[-1] == xi.shape[-2]:
        k = int(torch.randint(4, (), generator=generator))
        if k:
            xi, yi = torch.rot90(xi, k, (-2, -1)), torch.rot90(yi, k, (-2, -1))
    return xi, yi


def _colour(xi: torch.Tensor, aug: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One chip (C, H, W) with the colour augmentations that ``aug`` turns on."""
    import torch

    u = torch.rand(6, generator=generator)
    if aug.contrast:
        c = 1.0 + aug.contrast * (2 * float(u[0]) - 1)
        m = xi.mean(dim=(-2, -1), keepdim=True)
        xi = (xi - m) * c + m
    if aug.brightness:
        xi = xi + aug.brightness * (2 * float(u[1]) - 1)
    if aug.hue and xi.shape[0] == 3:
        rot = hue_rotation(2 * math.pi * aug.hue * (2 * float(u[3]) - 1))
        xi = torch.einsum("ij,jhw->ihw", rot, xi)
    if aug.saturation:
        grey = xi.mean(dim=0, keepdim=True)
        xi = grey + (xi - grey) * (1.0 + aug.saturation * (2 * float(u[4]) - 1))
    if aug.grayscale and float(u[5]) < aug.grayscale:
        xi = xi.mean(dim=0, keepdim=True).expand_as(xi).clone()
    if aug.noise:
        sigma = aug.noise * float(u[2])
        xi = xi + sigma * torch.randn(xi.shape, generator=generator)
    return xi


def hue_rotation(angle: float) -> torch.Tensor:
    """3 x 3 matrix rotating RGB vectors by ``angle`` radians about the grey axis (1, 1, 1)."""
    import torch

    c, s = math.cos(angle), math.sin(angle)
    k = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)
    return c * torch.eye(3) + (1.0 - c) / 3.0 * torch.ones(3, 3) + s * k


def zoom(
    xi: torch.Tensor, yi: torch.Tensor, max_factor: float, generator: torch.Generator, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chip (C, H, W) and labels (H, W) zoomed by a factor in ``[1 / max_factor, max_factor]`` (log-uniform).

    The chip keeps its size: a zoom in is cropped at a random offset; a zoom out is
    padded (image by reflection, labels with ``ignore_index``, so the border teaches nothing).
    """
    import torch
    import torch.nn.functional as F

    factor = math.exp(math.log(max_factor) * (2 * float(torch.rand((), generator=generator)) - 1))
    h, w = yi.shape
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    if (nh, nw) == (h, w):
        return xi, yi
    x = F.interpolate(xi[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=factor < 1)[0]
    y = F.interpolate(yi[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].to(yi.dtype)
    if factor > 1:
        r = int(torch.randint(nh - h + 1, (), generator=generator))
        c = int(torch.randint(nw - w + 1, (), generator=generator))
        return x[:, r : r + h, c : c + w], y[r : r + h, c : c + w]
    top, left = (h - nh) // 2, (w - nw) // 2
    pad = (left, w - nw - left, top, h - nh - top)
    mode = "reflect" if min(nh, nw) > max(pad) else "replicate"
    return F.pad(x[None], pad, mode=mode)[0], F.pad(y, pad, value=ignore_index)


def gaussian_blur(xi: torch.Tensor, sigma: float) -> torch.Tensor:
    """Chip (C, H, W) blurred by a separable gaussian of ``sigma`` pixels (edges reflected)."""
    import torch
    import torch.nn.functional as F

    if sigma < 0.1:
        return xi
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=xi.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = xi.shape[0]
    x = F.pad(xi[None], (radius, radius, radius, radius), mode="reflect" if min(xi.shape[1:]) > radius else "replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]
