"""``quicklook.png``: the scene, decimated, with the predicted classes overlaid.

``overlay`` is pure (arrays in, RGBA array out). ``write_quicklook`` reads the scene and
``classes.tif`` at the small output size only (GDAL decimated reads, which use the
overviews when the files have them: the COG outputs always do), so the full-resolution
scene is never in memory. The PNG has no georeferencing; it is for a glance.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from geounet.io.remote import gdal_path
from geounet.models.card import ModelCard

MAX_SIDE = 512  # pixels on the long side of the PNG (a 512x512 RGBA photo: about 0.4 MB)
ALPHA = 0.5  # opacity of the class colours over the scene
NODATA = 255


def quicklook_shape(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(rows, cols) of the quicklook: the scene's aspect, long side at most ``max_side``, never upsampled."""
    scale = max(1.0, max(width, height) / max_side)
    return max(1, round(height / scale)), max(1, round(width / scale))


def stretch(
    pixels: np.ndarray,
    valid: np.ndarray,
    low: float = 2.0,
    high: float = 98.0,
    *,
    per_band: bool = True,
    keep_uint8: bool = True,
    fill: int | None = None,
) -> np.ndarray:
    """Percentile stretch of (bands, rows, cols) to uint8 over the valid pixels (``low``/``high``: percentiles).

    ``per_band``: each band gets its own range; False: one range over all bands, which keeps
    the colour balance. ``keep_uint8``: uint8 pixels pass through unstretched. ``fill``: the
    value of the pixels outside ``valid``; None: they are stretched like the others.
    """
    if keep_uint8 and pixels.dtype == np.uint8:
        out = pixels if fill is None else pixels.copy()
    else:
        out = np.zeros(pixels.shape, np.uint8)
        for part in [slice(i, i + 1) for i in range(len(pixels))] if per_band else [slice(None)]:
            group = pixels[part]
            values = group[:, valid] if valid.any() else group.reshape(len(group), -1)
            values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
            lo, hi = np.percentile(values, [low, high]) if values.size else (0.0, 1.0)
            scaled = np.nan_to_num(
                (group.astype(np.float64) - lo) / max(hi - lo, 1e-12), nan=0.0, posinf=1.0, neginf=0.0
            )
            out[part] = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    if fill is not None:
        out[:, ~valid] = fill
    return out


def overlay(
    rgb: np.ndarray, valid: np.ndarray, classes: np.ndarray, colors: np.ndarray, shown: np.ndarray, alpha: float = ALPHA
) -> np.ndarray:
    """RGBA (rows, cols, 4) uint8: ``rgb`` (3, rows, cols) uint8 with class colours blended in.

    ``classes`` holds class indexes (255 = nodata); ``colors`` is (n_classes, 3) uint8;
    ``shown[i]`` says whether class i is drawn (background is not). Pixels where
    ``valid`` is False are transparent.
    """
    img = np.moveaxis(rgb, 0, -1).astype(np.float32)
    idx = np.where(classes == NODATA, 0, classes).astype(np.intp)
    idx = np.clip(idx, 0, len(colors) - 1)
    draw = shown[idx] & (classes != NODATA) & valid
    img[draw] = (1.0 - alpha) * img[draw] + alpha * colors[idx[draw]].astype(np.float32)
    out = np.empty(classes.shape + (4,), np.uint8)
    out[..., :3] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    out[..., 3] = np.where(valid, 255, 0).astype(np.uint8)
    return out


def display_bands(card: ModelCard) -> list[int]:
    """Scene band indexes (1-based) to show as R, G, B: the card's red/green/blue, else its first band as grey."""
    names = [n.lower() for n in card.band_names]
    if all(c in names for c in ("red", "green", "blue")):
        return [card.bands[names.index(c)] for c in ("red", "green", "blue")]
    if len(card.bands) >= 3:
        return list(card.bands[:3])
    return [card.bands[0]] * 3


def write_quicklook(
    scene: str | Path, classes_tif: str | Path, card: ModelCard, png: str | Path, max_side: int = MAX_SIDE
) -> tuple[int, int]:
    """Write ``png`` (RGBA, long side <= ``max_side``); returns its (rows, cols)."""
    with rasterio.open(gdal_path(scene)) as src:
        rows, cols = quicklook_shape(src.width, src.height, max_side)
        bands = display_bands(card)
        # a VRT (a mosaic): nearest, which GDAL reads from the sources only; its average reads it all, however empty
        resampling = Resampling.nearest if src.driver == "VRT" else Resampling.average
        pixels = src.read(bands, out_shape=(len(bands), rows, cols), resampling=resampling)
        valid = src.dataset_mask(out_shape=(rows, cols), resampling=Resampling.nearest) > 0
    with rasterio.open(classes_tif) as cls:
        classes = cls.read(1, out_shape=(rows, cols), resampling=Resampling.nearest)
    colors = np.array([c.color for c in card.classes], np.uint8)
    shown = np.array([c.kind != "background" for c in card.classes], bool)
    rgba = overlay(stretch(pixels, valid), valid, classes, colors, shown)
    png = Path(png)
    tmp = png.with_name(f".{png.name}.tmp-{os.getpid()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a picture, not a map
        with (
            rasterio.Env(GDAL_PAM_ENABLED="NO"),
            rasterio.open(
                tmp,
                "w",
                driver="PNG",
                width=cols,
                height=rows,
                count=4,
                dtype="uint8",
            ) as dst,
        ):
            dst.write(np.moveaxis(rgba, -1, 0))
    os.replace(tmp, png)
    return rows, cols
