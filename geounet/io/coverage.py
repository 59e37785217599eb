"""Where a scene holds data, found before any chunk is scheduled: which tiles may hold a valid pixel.

A mostly empty scene (a huge VRT mosaic with few sources, an orthophoto's nodata
collar) should cost tasks, memory and time in proportion to its data, not its extent.
:func:`scene_coverage` reads the scene's valid-pixel mask (``dataset_mask``, the mask the
chunk tasks read) at low resolution, one window at a time, so memory stays bounded
whatever the scene's size, and answers for every tile of the
:class:`~geounet.compute.grid.TileGrid`: may it hold a valid pixel? The answer is
conservative, never "no" where a valid pixel is: a chunk whose tiles all say no holds
no data, and the outputs there stay nodata without running it.

The mask is read with GDAL's ``average`` decimation, :data:`FACTOR` scene pixels to a read
pixel each way. For a nodata mask GDAL averages the band values leaving nodata out, so a
read pixel is invalid only when all its pixels are: exact at any decimation. For a mask
band or an alpha band it averages 0/255 values, and one valid pixel among ``FACTOR ** 2``
still rounds to a non-zero value (a lone pixel of low alpha may not). Reads use the
scene's overviews when it has some, so an island its overviews lost is lost here too.
For a VRT, a window that no source touches costs next to nothing (GDAL's ``average``
reads a window that a source touches at full resolution, so windows stay small).
``GDALGetDataCoverageStatus``, which would answer from a VRT's sources or a GeoTIFF's
unwritten blocks without reading, is not in rasterio's API.

Each tile's extent, taken on the scene's grid, is widened by one read pixel (where the
decimation may put a pixel near a read pixel's edge) and, when the model's working grid
is a resampling of the scene, by the resampling's reach, before looking for a valid read
pixel in it. A scene without nodata, mask or alpha (every pixel valid) is not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.windows import Window

from geounet.compute.grid import TileGrid
from geounet.errors import InputError
from geounet.io.scene import WorkingGrid, open_scene

FACTOR = 8  # scene pixels per read pixel, each way
WINDOW = 4096  # side of one mask read, scene pixels (a multiple of FACTOR)


@dataclass(frozen=True)
class Coverage:
    """Which tiles of ``grid`` (working grid) may hold a valid pixel; never False where one does.

    ``scale``: scene pixels per working-grid pixel (rows, columns); ``scene_shape``: the
    scene grid's (height, width) in pixels. Both describe the working grid = the scene's
    grid when the scene is not resampled.
    """

    grid: TileGrid
    tiles: np.ndarray  # (tile rows, tile columns) bool
    scale: tuple[float, float] = (1.0, 1.0)
    scene_shape: tuple[int, int] | None = None

    @classmethod
    def everything(cls, grid: TileGrid, scale: tuple[float, float] = (1.0, 1.0), scene_shape=None) -> Coverage:
        """Every tile holds data (a scene whose every pixel is valid)."""
        return cls(grid, np.ones(grid.shape_tiles, bool), scale, scene_shape)

    @property
    def complete(self) -> bool:
        """Whether every tile may hold data (nothing to skip)."""
        return bool(self.tiles.all())

    @cached_property
    def chunks(self) -> np.ndarray:
        """(chunk rows, chunk columns) bool: the chunks with a tile that may hold data."""
        return _any_blocks(self.tiles, self.grid.chunk_tiles)

    def chunk_indices(self) -> list[tuple[int, int]]:
        """The chunks with data, in raster order."""
        return [(int(i), int(j)) for i, j in np.argwhere(self.chunks)]

    @property
    def tiles_in_data_chunks(self) -> int:
        """How many tiles the chunks with data hold (their tiles without data included)."""
        k = self.grid.chunk_tiles
        ny, nx = self.grid.shape_tiles
        rows = np.minimum(k, ny - k * np.arange(self.chunks.shape[0]))
        cols = np.minimum(k, nx - k * np.arange(self.chunks.shape[1]))
        return int((rows[:, None] * cols[None, :])[self.chunks].sum())

    @cached_property
    def _tile_sums(self) -> np.ndarray:
        return _prefix_sums(self.tiles)

    def scene_blocks(self, size: int, margin: int = 2) -> np.ndarray:
        """(rows, columns) bool over the scene grid cut in ``size``-pixel blocks: True where a block may hold data.

        A block says True when a tile with data reaches within ``margin`` working-grid
        pixels of it (the reach of the resampling back to the scene's grid). Every valid
        output pixel lies in such a block; the others stay nodata.
        """
        height, width = self.scene_shape or (self.grid.height, self.grid.width)
        sy, sx = self.scale
        g = self.grid
        lo_r, hi_r = _tile_span(_block_edges(height, size), sy, margin, g.stride, g.halo, g.tile_size, g.shape_tiles[0])
        lo_c, hi_c = _tile_span(_block_edges(width, size), sx, margin, g.stride, g.halo, g.tile_size, g.shape_tiles[1])
        return _any_in(self._tile_sums, lo_r, hi_r, lo_c, hi_c)


def scene_coverage(path: str | Path, working: WorkingGrid, grid: TileGrid) -> Coverage:
    """The tiles of ``grid`` (on ``working``, the scene's working grid) that may hold a valid pixel.

    Reads the scene's mask at 1/:data:`FACTOR` resolution, window by window (see the module
    docstring); a scene without any nodata, mask or alpha is not read.
    """
    with open_scene(path) as src:
        scene_shape = (src.height, src.width)
        scale = (src.height / working.height, src.width / working.width)
        if all_valid(src):
            return Coverage.everything(grid, scale, scene_shape)
        reach = math.ceil(max(scale)) + 1 if working.resampled else 0  # scene pixels a resampled pixel reads
        return Coverage(grid, tiles_with_data(src, grid, scale, reach), scale, scene_shape)


def all_valid(ds: rasterio.io.DatasetReaderBase) -> bool:
    """Whether ``ds.dataset_mask()`` is valid everywhere by construction (no nodata, mask or alpha applies)."""
    flags = ds.mask_flag_enums
    if MaskFlags.per_dataset in flags[0]:
        return False
    if ds.count == 4 and ds.colorinterp[0] == ColorInterp.red:  # as dataset_mask: band 4's mask
        return MaskFlags.all_valid in flags[3]
    return any(MaskFlags.all_valid in f for f in flags)


def tiles_with_data(
    ds: rasterio.io.DatasetReaderBase,
    grid: TileGrid,
    scale: tuple[float, float] = (1.0, 1.0),
    reach: int = 0,
    factor: int = FACTOR,
    window: int = WINDOW,
) -> np.ndarray:
    """(tile rows, tile columns) bool: the tiles of ``grid`` whose extent holds a valid pixel of ``ds``, or may.

    ``ds`` is read on its own grid; ``grid`` is on a working grid of ``scale`` ``ds`` pixels
    per pixel (rows, columns). A tile's extent, mapped to ``ds`` pixels, is widened by
    ``reach`` pixels and by one read pixel of ``factor`` pixels on each side. Reads
    ``window``-pixel windows of the mask decimated ``factor`` times with ``average``.
    """
    sy, sx = scale
    ny, nx = grid.shape_tiles
    tiles = np.zeros((ny, nx), bool)
    pad = reach + factor
    # each tile's extent on ds's grid (clipped to the working grid first), widened
    t0r, t1r = _tile_extent(ny, grid, grid.height, sy, pad)
    t0c, t1c = _tile_extent(nx, grid, grid.width, sx, pad)
    step = max(factor, window // factor * factor)
    for r0 in range(0, ds.height, step):
        h = min(step, ds.height - r0)
        rows = np.flatnonzero((t0r < r0 + h) & (t1r > r0))
        for c0 in range(0, ds.width, step):
            w = min(step, ds.width - c0)
            shape = (-(-h // factor), -(-w // factor))
            try:
                m = ds.dataset_mask(window=Window(c0, r0, w, h), out_shape=shape, resampling=Resampling.average) > 0
            except rasterio.errors.RasterioIOError as exc:
                raise InputError(ds.name, f"cannot read its mask near pixel ({r0}, {c0}): {exc}") from None
            if not m.any():
                continue
            cols = np.flatnonzero((t0c < c0 + w) & (t1c > c0))
            sums = _prefix_sums(m)
            lo_r = np.clip((t0r[rows] - r0) // factor, 0, shape[0])
            hi_r = np.clip(-(-(t1r[rows] - r0) // factor), 0, shape[0])
            lo_c = np.clip((t0c[cols] - c0) // factor, 0, shape[1])
            hi_c = np.clip(-(-(t1c[cols] - c0) // factor), 0, shape[1])
            tiles[np.ix_(rows, cols)] |= _any_in(sums, lo_r, hi_r, lo_c, hi_c)
    return tiles


def _tile_extent(n: int, grid: TileGrid, size: int, scale: float, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (``ds`` pixels, end exclusive) of the ``n`` tiles along one axis, widened by ``pad``."""
    first = np.arange(n) * grid.stride - grid.halo
    start = np.clip(first, 0, size)
    end = np.clip(first + grid.tile_size, 0, size)
    return np.floor(start * scale).astype(np.int64) - pad, np.ceil(end * scale).astype(np.int64) + pad


def _block_edges(size: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, size, block)
    return starts, np.minimum(starts + block, size)


def _tile_span(
    edges: tuple[np.ndarray, np.ndarray], scale: float, margin: int, stride: int, halo: int, tile: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """For scene-grid intervals: the range of tiles (first, end exclusive) whose extent meets each, widened."""
    start, end = edges
    lo = np.floor(start / scale).astype(np.int64) - margin  # working-grid pixels
    hi = np.ceil(end / scale).astype(np.int64) + margin
    # tile i spans [i * stride - halo, i * stride - halo + tile): it meets [lo, hi) when both ends overlap
    first = np.floor_divide(lo + halo - tile, stride) + 1
    last = -np.floor_divide(-(hi + halo), stride)
    return np.clip(first, 0, n), np.clip(last, 0, n)


def _prefix_sums(a: np.ndarray) -> np.ndarray:
    """2-D inclusive prefix sums with a zero first row and column: sum of ``a[r0:r1, c0:c1]`` from four values."""
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.int64 if a.size >= 2**31 else np.int32)
    np.cumsum(a, axis=0, dtype=out.dtype, out=out[1:, 1:])
    np.cumsum(out[1:, 1:], axis=1, dtype=out.dtype, out=out[1:, 1:])
    return out


def _any_in(sums: np.ndarray, r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """(len(r0), len(c0)) bool: whether each rectangle ``[r0, r1) x [c0, c1)`` of the summed array holds a True."""
    total = sums[r1][:, c1] - sums[r0][:, c1] - sums[r1][:, c0] + sums[r0][:, c0]
    empty = (r1 <= r0)[:, None] | (c1 <= c0)[None, :]
    return (total > 0) & ~empty


def _any_blocks(a: np.ndarray, k: int) -> np.ndarray:
    """``a`` (2-D bool) OR-ed over ``k`` x ``k`` blocks (the last ones smaller)."""
    rows, cols = -(-a.shape[0] // k), -(-a.shape[1] // k)
    padded = np.zeros((rows * k, cols * k), bool)
    padded[: a.shape[0], : a.shape[1]] = a
    return np.asarray(padded.reshape(rows, k, cols, k).any(axis=(1, 3)))


def aoi_tiles(area_px: Any, grid: TileGrid, scale: tuple[float, float] = (1.0, 1.0), reach: int = 0) -> np.ndarray:
    """(tile rows, tile columns) bool: the tiles of ``grid`` whose extent meets an area of interest.

    ``area_px``: the area in the scene's pixel coordinates (``geounet.io.aoi.to_pixels``);
    ``grid`` is on a working grid of ``scale`` scene pixels per pixel. A tile's extent, on
    the scene's grid, is widened by ``reach`` scene pixels (a resampled working grid's
    reach back to the scene's grid). Exact: shapely, not a rasterization.
    """
    ny, nx = grid.shape_tiles
    if area_px.is_empty:
        return np.zeros((ny, nx), bool)
    r0, r1 = _tile_extent(ny, grid, grid.height, scale[0], reach)
    c0, c1 = _tile_extent(nx, grid, grid.width, scale[1], reach)
    boxes = shapely.box(c0[None, :], r0[:, None], c1[None, :], r1[:, None])
    shapely.prepare(area_px)
    return np.asarray(shapely.intersects(area_px, boxes), bool)
