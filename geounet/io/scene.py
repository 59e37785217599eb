"""Reading scenes: validation, ground resolution, the working grid, padded window reads.

All windows are in pixel coordinates of the *working grid*: the scene's own grid,
or, when the scene's ground resolution differs much from the model's, the same
extent resampled to the model's resolution (read through a GDAL WarpedVRT, so only
the needed window is ever read).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from affine import Affine
from pyproj import Geod
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geounet.compute.grid import Box, GeoGrid
from geounet.errors import InputError
from geounet.models.card import ModelCard

_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class WorkingGrid(GeoGrid):
    """The pixel grid the model runs on; ``resampled``: it differs from the scene's own grid."""

    resampled: bool = False


def ground_resolution(crs, transform: Affine, width: int, height: int) -> float:
    """Ground sampling distance in metres per pixel at the scene centre (geometric mean of x and y)."""
    dx, dy = ground_pixel_size(crs, transform, width, height)
    return math.sqrt(dx * dy)


def ground_pixel_size(crs, transform: Affine, width: int, height: int) -> tuple[float, float]:
    """Ground size (metres, geodesic on WGS84) of one pixel step in x and in y at the scene centre.

    Correct for projected CRSs with any unit and for Web Mercator's scale error and
    geographic (degree) CRSs alike: it measures one pixel step on the ellipsoid.
    """
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    cr, cc = height / 2.0, width / 2.0
    x0, y0 = transform @ (cc, cr)
    x1, y1 = transform @ (cc + 1, cr)
    x2, y2 = transform @ (cc, cr + 1)
    (lon0, lon1, lon2), (lat0, lat1, lat2) = to_lonlat.transform([x0, x1, x2], [y0, y1, y2])
    dx = _GEOD.inv(lon0, lat0, lon1, lat1)[2]
    dy = _GEOD.inv(lon0, lat0, lon2, lat2)[2]
    return abs(dx), abs(dy)


def open_scene(path: str | Path) -> rasterio.io.DatasetReader:
    """Open a scene for reading, turning GDAL errors into a one-line InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not a raster file")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(path, f"not a readable raster ({_gdal_message(exc)})") from None


def check_scene(src: rasterio.io.DatasetReader, card: ModelCard) -> None:
    """Raise InputError if the model cannot use this scene (CRS, transform, bands, dtype, bytes)."""
    path = src.name
    if src.crs is None:
        raise InputError(path, "raster has no CRS: cannot georeference outputs (set one with gdal_edit.py -a_srs)")
    if src.transform.is_identity or src.transform.determinant == 0:
        raise InputError(path, "raster has no geotransform: cannot georeference outputs")
    if abs(src.transform.b) > 1e-12 or abs(src.transform.d) > 1e-12:
        raise InputError(path, "rotated geotransforms are not supported: warp the scene to a north-up grid first")
    need = max(card.bands)
    if src.count < need:
        raise InputError(
            path,
            f"has {src.count} band(s) but model {card.name!r} needs bands {card.bands} ({', '.join(card.band_names)})",
        )
    for b in card.bands:
        dtype = src.dtypes[b - 1]
        if dtype not in card.input_dtypes:
            raise InputError(
                path, f"band {b} is {dtype} but model {card.name!r} expects {' or '.join(card.input_dtypes)} input"
            )
    # A truncated or corrupt file usually opens fine and fails on its last blocks:
    # read one pixel from each corner block so that fails now, not mid-run.
    h, w = src.height, src.width
    for r, c in {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2)}:
        try:
            src.read(card.bands, window=Window(c, r, 1, 1))
            src.read_masks(card.bands[0], window=Window(c, r, 1, 1))
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(path, f"cannot read pixels, file truncated or corrupt ({_gdal_message(exc)})") from None


def working_grid(src: rasterio.io.DatasetReader, card: ModelCard, tolerance: float = 0.25) -> WorkingGrid:
    """The scene's grid, or the same extent at the model's resolution if they differ by > ``tolerance``."""
    res = ground_resolution(src.crs, src.transform, src.width, src.height)
    factor = card.resolution_m / res  # > 1: scene finer than model, so we downsample
    if abs(math.log(factor)) <= math.log1p(tolerance):
        return WorkingGrid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height, False)
    width = max(1, round(src.width / factor))
    height = max(1, round(src.height / factor))
    t = src.transform @ Affine.scale(src.width / width, src.height / height)
    return WorkingGrid(src.crs.to_wkt(), tuple(t)[:6], width, height, True)


@contextmanager
def open_working(path: str | Path, grid: WorkingGrid) -> Iterator[rasterio.io.DatasetReaderBase]:
    """Open the scene as seen on the working grid (a WarpedVRT when resampled)."""
    with open_scene(path) as src:
        if not grid.resampled:
            yield src
            return
        downsample = abs(grid.affine.a) > abs(src.transform.a)
        with WarpedVRT(
            src,
            crs=src.crs,
            transform=grid.affine,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.average if downsample else Resampling.bilinear,
        ) as vrt:
            yield vrt


def read_box(
    ds: rasterio.io.DatasetReaderBase, bands: list[int], box: Box, grid_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``box`` (may reach past the grid) as ``(pixels (bands, h, w), valid mask (h, w) bool)``.

    Pixels outside the grid are filled by mirror reflection of the edge, so the
    model sees natural context; they are marked invalid in the mask.
    """
    height, width = grid_shape
    inside = box.intersect(Box(0, 0, height, width))
    if inside is None:
        return np.zeros((len(bands), box.height, box.width), np.uint8), np.zeros((box.height, box.width), bool)
    window = Window(inside.col0, inside.row0, inside.width, inside.height)
    try:
        data = ds.read(bands, window=window)
        mask = ds.dataset_mask(window=window) > 0
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(
            ds.name, f"cannot read window {window!r}: file truncated or corrupt ({_gdal_message(exc)})"
        ) from None
    pad = (
        (inside.row0 - box.row0, box.row1 - inside.row1),
        (inside.col0 - box.col0, box.col1 - inside.col1),
    )
    if any(p for pair in pad for p in pair):
        modes: list[Literal["reflect", "edge"]] = ["reflect" if n > 1 else "edge" for n in data.shape[1:]]
        data = np.pad(data, ((0, 0), pad[0], (0, 0)), mode=modes[0])
        data = np.pad(data, ((0, 0), (0, 0), pad[1]), mode=modes[1])
        mask = np.pad(mask, pad, mode="constant", constant_values=False)
    return data, mask


def _gdal_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__
