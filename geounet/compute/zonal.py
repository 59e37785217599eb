"""Per-building (zonal) statistics of a raster block, vectorized. Pure: arrays in, arrays out.

A block's footprints are rasterized once into an id array (0 = no building,
``k`` = building ``k``); sums and pixel counts for every building then come from
one ``np.bincount`` per measure, whatever the number of buildings. Sums from
several blocks add up, so a building that spans blocks gets exact statistics.
"""

from __future__ import annotations

import numpy as np


def zonal_sums(ids: np.ndarray, values: np.ndarray, valid: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``values`` ``(k, h, w)`` and valid-pixel counts per id, over valid pixels.

    ``ids`` ``(h, w)`` integers in ``[0, n]`` (0 = background); returns
    ``(sums (k, n + 1) float64, counts (n + 1,) int64)``; index 0 collects background.
    """
    ids = np.asarray(ids)
    if ids.shape != valid.shape or values.shape[1:] != ids.shape:
        raise ValueError(f"shapes differ: ids {ids.shape}, valid {valid.shape}, values {values.shape}")
    sel = np.asarray(valid, bool).ravel() & (ids.ravel() > 0)
    flat = ids.ravel()[sel].astype(np.int64)
    counts = np.bincount(flat, minlength=n + 1)
    sums = (
        np.stack([np.bincount(flat, weights=v.ravel()[sel], minlength=n + 1) for v in values])
        if len(values)
        else np.zeros((0, n + 1))
    )
    return sums, counts


def zonal_means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Means ``(k, n + 1)`` from accumulated sums and counts; NaN where a zone has no valid pixel."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
