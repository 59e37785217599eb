"""Test-time augmentation: the 8 flips and quarter turns of a square tile (the dihedral group D4).

A tile batch ``(n, bands, h, w)`` is expanded to ``(n * k, bands, h, w)``, one copy per
transform; the model's outputs ``(n * k, classes, h, w)`` are turned back and averaged
to ``(n, classes, h, w)``, so each pixel's probability is the mean of the model's answers
for the tile seen in ``k`` orientations. Works on numpy arrays and torch tensors alike.
Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# (quarter turns counter-clockwise, mirrored left-right first)
Transform = tuple[int, bool]

TTA_SETS: dict[str, tuple[Transform, ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "flips": ((0, False), (0, True), (2, True), (2, False)),  # identity, left-right, up-down, half turn
    "d4": tuple((k, m) for m in (False, True) for k in range(4)),
}


def _flip(x: Any) -> Any:
    return x[..., ::-1] if isinstance(x, np.ndarray) else x.flip(-1)


def _rot90(x: Any, k: int) -> Any:
    if k % 4 == 0:
        return x
    if isinstance(x, np.ndarray):
        return np.rot90(x, k, axes=(-2, -1))
    import torch

    return torch.rot90(x, k, dims=(-2, -1))


def apply(x: Any, t: Transform) -> Any:
    """``x`` (..., h, w) mirrored left-right (if ``t[1]``), then turned ``t[0]`` quarter turns."""
    k, mirror = t
    return _rot90(_flip(x) if mirror else x, k)


def invert(y: Any, t: Transform) -> Any:
    """Undo :func:`apply` on an output of the same spatial layout."""
    k, mirror = t
    y = _rot90(y, -k)
    return _flip(y) if mirror else y


def is_identity(transforms: tuple[Transform, ...]) -> bool:
    return transforms == ((0, False),)


def expand(batch: Any, transforms: tuple[Transform, ...]) -> Any:
    """``(n, c, h, w)`` -> ``(n * k, c, h, w)``: every transform of the batch, transform-major."""
    if is_identity(transforms):
        return batch
    parts = [apply(batch, t) for t in transforms]
    if isinstance(batch, np.ndarray):
        return np.ascontiguousarray(np.concatenate(parts))
    import torch

    return torch.cat([p.contiguous() for p in parts])


def reduce(outputs: Any, transforms: tuple[Transform, ...]) -> Any:
    """``(n * k, c, h, w)`` model outputs of :func:`expand`'s batch -> their mean ``(n, c, h, w)``, turned back."""
    if is_identity(transforms):
        return outputs
    n = outputs.shape[0] // len(transforms)
    total = invert(outputs[:n], transforms[0])
    for i, t in enumerate(transforms[1:], 1):
        total = total + invert(outputs[i * n : (i + 1) * n], t)
    return total / len(transforms)
