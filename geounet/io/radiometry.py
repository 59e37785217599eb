"""A scene's digital numbers scaled to 8 bits, for models trained on 8-bit imagery.

Satellite products often come as 11- or 12-bit values in uint16 (or as floats); a model
trained on 8-bit RGB needs them on its scale. :func:`scene_byte_scale` takes each band's
2nd and 98th percentiles over the scene's valid pixels (a decimated read of the whole
scene, so every tile gets the same mapping); :class:`ByteScale` maps them linearly onto
:data:`TARGET`, where ordinary 8-bit aerial and satellite imagery has them, not onto 0 and
255: a full-range stretch raises the contrast beyond anything the models saw. Values beyond
0-255 are clipped. The quicklook and the web map show such scenes stretched to 0-255 (display).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

from geounet.models.card import ModelCard

SAMPLE_SIDE = 1024  # pixels on the long side of the decimated read the percentiles come from
PERCENTILES = (2.0, 98.0)
# Where the PERCENTILES of 8-bit imagery lie: the median over the bands of the bundled building
# models' training scenes (Joplin pre and post tiles, kampala_a, three OpenAerialMap areas: 50 and
# 202; single scenes 10-75 and 175-254; benchmarks/README.md "Design measurements").
TARGET = (50.0, 200.0)


@dataclass(frozen=True)
class ByteScale:
    """Per band: the digital numbers mapped to ``target`` (8-bit values), ``low`` to the first, ``high`` to the second."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    target: tuple[float, float] = TARGET

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(bands, rows, cols) digital numbers -> uint8: linear through (low, target[0]) and (high, target[1]),
        clipped to 0-255, rounded."""
        low = np.asarray(self.low, np.float64)[:, None, None]
        span = np.maximum(np.asarray(self.high, np.float64) - np.asarray(self.low, np.float64), 1e-12)[:, None, None]
        t0, t1 = self.target
        scaled = t0 + (pixels.astype(np.float64) - low) / span * (t1 - t0)
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)  # a float scene's NaN (nodata) -> 0
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return {
            "low": list(self.low),
            "high": list(self.high),
            "percentiles": list(PERCENTILES),
            "to": list(self.target),
        }


def needs_byte_scale(src: rasterio.io.DatasetReaderBase, card: ModelCard) -> bool:
    """Whether the model takes uint8 and some of its bands in this scene are of another integer or float type."""
    dtypes = {np.dtype(src.dtypes[b - 1]) for b in card.bands if b <= src.count}
    numeric = all(d.kind in "uif" for d in dtypes)
    return card.input_dtypes == ["uint8"] and numeric and dtypes != {np.dtype("uint8")}


def model_byte_scale(src: rasterio.io.DatasetReaderBase, card: ModelCard) -> ByteScale | None:
    """The scene's scale to 8 bits for this model (:func:`scene_byte_scale` of its bands), or None where it needs none."""
    return scene_byte_scale(src, card.bands) if needs_byte_scale(src, card) else None


def scene_byte_scale(
    src: rasterio.io.DatasetReaderBase, bands: list[int] | tuple[int, ...], target: tuple[float, float] = TARGET
) -> ByteScale:
    """Each band's 2nd and 98th percentile over the valid pixels of a decimated read of the whole scene, mapped to
    ``target``.

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
    return ByteScale(tuple(low), tuple(high), target)
