"""Chip augmentation with plain torch ops: flips, 90-degree turns and colour changes, drawn from one generator."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from geounet.training.config import AugmentConfig

if TYPE_CHECKING:
    import torch


def augment(
    x: torch.Tensor, y: torch.Tensor, aug: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented copies of a batch: ``x`` (B, C, H, W) float in DN / scale, ``y`` (B, H, W) class indexes.

    Geometric: random horizontal/vertical flips and 90-degree rotations (square chips),
    applied to image and labels alike. Colour (with probability ``p_color`` per chip):
    contrast change around the chip mean, brightness shift, saturation change (towards
    or away from the per-pixel band mean), hue rotation about the grey axis (3 bands),
    conversion to grey (with probability ``grayscale``), gaussian noise.
    """
    import torch

    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = _geometric(x[i], y[i], aug, generator)
        if torch.rand((), generator=generator) < aug.p_color:
            xi = _colour(xi, aug, generator)
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


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
