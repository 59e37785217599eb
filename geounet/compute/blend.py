"""Blending weights for overlapping tiles. Pure functions on arrays, no I/O.

Along an edge shared with a neighbour, a tile's weight ramps smoothly from 1 to 0
across the ``overlap`` pixels it shares with that neighbour (a squared-sine ramp);
the neighbour's ramp is its exact complement, so weights sum to 1 everywhere and a
weighted sum of tile predictions needs no normalisation. Edges on the scene border
do not taper: border pixels are predicted by one tile at full weight.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def ramp(overlap: int) -> np.ndarray:
    """Rising squared-sine ramp of ``overlap`` samples; ``ramp + ramp[::-1] == 1``."""
    t = (np.arange(overlap, dtype=np.float64) + 0.5) / max(overlap, 1)
    return (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)


def edge_profile(size: int, overlap: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    """1-D weights over a tile side of ``size`` pixels (float32, in [0, 1])."""
    w = np.ones(size, dtype=np.float32)
    if overlap:
        r = ramp(overlap)
        if taper_start:
            w[:overlap] = r
        if taper_end:
            w[size - overlap :] = r[::-1]
    return w


@lru_cache(maxsize=64)
def blend_weights(tile_size: int, overlap: int, taper: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """2-D blending window (``tile_size`` square, float32, read-only) for a tile.

    ``taper`` = (top, bottom, left, right): True where a neighbouring tile shares
    that edge. The window is the outer product of the row and column profiles.
    Cached: there are only 16 distinct windows per tile geometry.
    """
    top, bottom, left, right = taper
    rows = edge_profile(tile_size, overlap, top, bottom)
    cols = edge_profile(tile_size, overlap, left, right)
    w = rows[:, None] * cols[None, :]
    w.flags.writeable = False
    return w


def blend_tiles(
    predictions: np.ndarray,
    tile_offsets: list[tuple[int, int]],
    weights: list[np.ndarray],
    out_shape: tuple[int, int],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted sum of tile predictions ``(n, classes, T, T)`` into ``(classes, *out_shape)``.

    ``tile_offsets`` are each tile's (row, col) corner in the output array. Pass
    ``out`` to accumulate into an existing buffer (batch after batch).
    """
    n, classes, t, _ = predictions.shape
    if out is None:
        out = np.zeros((classes, *out_shape), dtype=np.float32)
    for k in range(n):
        r, c = tile_offsets[k]
        out[:, r : r + t, c : c + t] += predictions[k] * weights[k]
    return out
