"""A scene's digital numbers scaled to 8 bits, for models trained on 8-bit imagery.

Satellite products often come as 11- or 12-bit values in uint16 (or as floats); a model
trained on 8-bit RGB needs them on its 0-255 scale. :func:`scene_byte_scale` takes each
band's 2nd and 98th percentiles over the scene's valid pixels (a decimated read of the
whole scene, so every tile gets the same mapping); :class:`ByteScale` maps that range
linearly onto 0-255, clipping beyond it. This is the usual 8-bit conversion of such
products, the same stretch the quicklook and the web map show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

SAMPLE_SIDE = 1024  # pixels on the long side of the decimated read the percentiles come from
PERCENTILES = (2.0, 98.0)


@dataclass(frozen=True)
class ByteScale:
    """Per band: the digital number mapped to 0 (``low``) and the one mapped to 255 (``high``)."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(bands, rows, cols) digital numbers -> uint8: linear between low and high, clipped, rounded."""
        low = np.asarray(self.low, np.float64)[:, None, None]
        span = np.maximum(np.asarray(self.high, np.float64) - np.asarray(self.low, np.float64), 1e-12)[:, None, None]
        scaled = (pixels.astype(np.float64) - low) / span * 255.0
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return {"low": list(self.low), "high": list(self.high), "percentiles": list(PERCENTILES)}


def scene_byte_scale(src: rasterio.io.DatasetReaderBase, bands: list[int] | tuple[int, ...]) -> ByteScale:
    """Each band's 2nd and 98th percentile over the valid pixels of a decimated read of the whole scene.

    Nearest-neighbour decimation to at most :data:`SAMPLE_SIDE` pixels on the long side
    (GDAL reads overviews where the file has them); the scene's mask (nodata, alpha or
    mask band) leaves its empty pixels out (all pixels count when none is valid).
    """
    factor = max(1.0, max(src.width, src.height) / SAMPLE_SIDE)
    shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
    pixels = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
    valid = src.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
    low, high = [], []
    for band in pixels:
        values = (band[valid] if valid.any() else band.ravel()).astype(np.float64)
        values = values[np.isfinite(values)]
        lo, hi = np.percentile(values, PERCENTILES) if values.size else (0.0, 1.0)
        low.append(float(lo))
        high.append(float(max(hi, lo + 1e-12)))
    return ByteScale(tuple(low), tuple(high))
