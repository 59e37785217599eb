"""Where touching instances meet: the pixels of a labelled object within a few pixels of another one. Pure."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def contact_pixels(ids: np.ndarray, radius_px: int) -> np.ndarray:
    """``(rows, cols)`` bool: object pixels within ``radius_px`` (square window) of a pixel of another object.

    ``ids``: an instance raster, 0 for no object, else the object's id. Pixels of an object
    that only border background are not contacts: a model trained to mark contacts learns
    to cut touching roofs apart, not to shrink free-standing ones.
    """
    if radius_px < 1 or not ids.any():
        return np.zeros(ids.shape, bool)
    size = 2 * radius_px + 1
    ids = ids.astype(np.int64)
    big = int(ids.max()) + 1  # above every id (scipy's filters overflow near the int64 limit)
    highest = ndimage.maximum_filter(ids, size=size, mode="nearest")
    lowest = ndimage.minimum_filter(np.where(ids > 0, ids, big), size=size, mode="nearest")
    return (ids > 0) & (lowest != big) & (highest != lowest)
