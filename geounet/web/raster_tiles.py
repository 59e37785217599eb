"""An XYZ tile pyramid of one raster in EPSG:3857: ``<id>/{z}/{x}/{y}.webp`` (an image) or ``.png`` (classes).

The finest zoom is warped from the source, ``BLOCK_TILES`` x ``BLOCK_TILES`` tiles at a
time through a GDAL warped VRT, so memory holds one block whatever the raster's size.
Each coarser zoom comes from the source's overview nearest to (and not coarser than) its
pixel size (the COG outputs have them) or, for a source without overviews (a scene), from
the four tiles below it: the full raster is read once. Tiles with nothing to draw (outside
the raster, nodata, a class drawn transparent) are not written: the map shows nothing
there. Images are lossy WebP with alpha; classes are paletted PNGs, the model's colours.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geounet.io.radiometry import scene_byte_scale
from geounet.web.mercator import (
    HALF_WORLD,
    MERCATOR,
    TILE,
    TileRange,
    lonlat_bounds,
    resolution,
    zoom_for_extent,
    zoom_for_resolution,
)

BLOCK_TILES = 4  # tiles a side read per warp: a 1024 x 1024 px block
WEBP_QUALITY = 75  # lossy WebP of the imagery (0-100)
WEBP_METHOD = 2  # WebP's effort, 0-6: faster than the default 4 for a few % more bytes (benchmarks/README.md)
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class RasterLayer:
    """One raster drawn as tiles.

    ``bands``: 1-based band indexes shown as red, green, blue (an image) or the one band of
    class values (``palette`` given). ``palette[v]``: the RGB colour of value ``v``, None
    for values drawn transparent (background, nodata). ``path``: a file or a GDAL path.
    """

    id: str
    label: str
    path: str
    bands: tuple[int, ...]
    palette: tuple[RGB | None, ...] | None = None
    visible: bool = True

    @property
    def ext(self) -> str:
        return "webp" if self.palette is None else "png"


@dataclass(frozen=True)
class Pyramid:
    """What was written: zooms, the layer's bounds (west, south, east, north, degrees), tiles and bytes."""

    id: str
    minzoom: int
    maxzoom: int
    bounds: tuple[float, float, float, float]
    tiles: int
    bytes: int


def mercator_footprint(src: rasterio.io.DatasetReader) -> tuple[tuple[float, float, float, float], float]:
    """The raster's bounds in EPSG:3857 (metres, y clamped to the projection's limits) and its pixel size there."""
    minx, miny, maxx, maxy = transform_bounds(src.crs, MERCATOR, *src.bounds, densify_pts=21)
    miny, maxy = max(miny, -HALF_WORLD), min(maxy, HALF_WORLD)
    res = math.sqrt(max(maxx - minx, 1e-9) * max(maxy - miny, 1e-9) / (src.width * src.height))
    return (minx, miny, maxx, maxy), res


def data_bounds(path: str) -> tuple[float, float, float, float] | None:
    """EPSG:3857 box (metres) of a raster's valid pixels, from its coarsest overview's mask (one of its
    pixels of margin); None when no pixel is valid."""
    with rasterio.open(path) as full:
        factors = full.overviews(1)
    with rasterio.open(path, **({"overview_level": len(factors) - 1} if factors else {})) as src:
        valid = src.dataset_mask() > 0
        rows, cols = np.nonzero(valid.any(axis=1))[0], np.nonzero(valid.any(axis=0))[0]
        if not len(rows):
            return None
        r0, r1 = max(0, rows[0] - 1), min(src.height, rows[-1] + 2)
        c0, c1 = max(0, cols[0] - 1), min(src.width, cols[-1] + 2)
        box = rasterio.windows.bounds(Window(c0, r0, c1 - c0, r1 - r0), src.transform)
        minx, miny, maxx, maxy = transform_bounds(src.crs, MERCATOR, *box, densify_pts=21)
    return minx, max(miny, -HALF_WORLD), maxx, min(maxy, HALF_WORLD)


def zoom_range(path: str) -> tuple[int, int]:
    """(min, max) zoom of a raster's pyramid: max nearest its own pixel size, min where it fits one tile."""
    with rasterio.open(path) as src:
        (minx, miny, maxx, maxy), res = mercator_footprint(src)
    zmax = zoom_for_resolution(res)
    return min(zoom_for_extent(max(maxx - minx, maxy - miny)), zmax), zmax


def write_pyramid(
    layer: RasterLayer, out: Path, zooms: tuple[int, int], clip: tuple[float, float, float, float] | None = None
) -> Pyramid:
    """Write ``out/<layer.id>/{z}/{x}/{y}.<ext>`` for zooms ``zooms[0]..zooms[1]``; returns what was written.

    ``clip``: only the tiles meeting this box (EPSG:3857 metres), e.g. where the run has data.
    """
    folder = out / layer.id
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(layer.path) as base:
        bounds, native = mercator_footprint(base)
        if clip is not None:
            bounds = (
                max(bounds[0], clip[0]),
                max(bounds[1], clip[1]),
                min(bounds[2], clip[2]),
                min(bounds[3], clip[3]),
            )
            if bounds[0] >= bounds[2] or bounds[1] >= bounds[3]:
                return Pyramid(layer.id, zooms[0], zooms[1], lonlat_bounds(clip), 0, 0)
        factors = base.overviews(layer.bands[0])
        scale = None if layer.palette is not None or base.dtypes[0] == "uint8" else _stretch(base, layer.bands)
        has_alpha = ColorInterp.alpha in base.colorinterp
    lut = _palette_lut(layer.palette) if layer.palette is not None else None
    n_tiles = n_bytes = 0
    written: set[tuple[int, int]] = set()  # (x, y) of the tiles of the zoom done last
    for z in range(zooms[1], zooms[0] - 1, -1):
        if z < zooms[1] and not factors:  # no overviews: each tile from its four children, not the full raster
            written, size = _from_children(folder, z, written, layer, lut)
            n_tiles, n_bytes = n_tiles + len(written), n_bytes + size
            continue
        written = set()
        level = _overview_level(factors, native, resolution(z))
        rng = TileRange.covering(bounds, z)
        kwargs = {} if level is None else {"overview_level": level}
        with rasterio.open(layer.path, **kwargs) as src:
            vrt_options = dict(crs=MERCATOR, transform=rng.transform, width=rng.width, height=rng.height)
            if layer.palette is not None:
                vrt = WarpedVRT(src, resampling=Resampling.nearest, nodata=_nodata(src), **vrt_options)
            else:
                vrt = WarpedVRT(src, resampling=Resampling.average, add_alpha=not has_alpha, **vrt_options)
            with vrt:
                for bx in range(rng.x0, rng.x1 + 1, BLOCK_TILES):
                    for by in range(rng.y0, rng.y1 + 1, BLOCK_TILES):
                        nx, ny = min(BLOCK_TILES, rng.x1 + 1 - bx), min(BLOCK_TILES, rng.y1 + 1 - by)
                        window = Window((bx - rng.x0) * TILE, (by - rng.y0) * TILE, nx * TILE, ny * TILE)
                        if lut is not None:
                            block = vrt.read(layer.bands[0], window=window)
                        else:
                            block = _image_block(vrt, layer.bands, window, scale, has_alpha)
                        for i in range(nx):
                            for j in range(ny):
                                tile = block[..., j * TILE : (j + 1) * TILE, i * TILE : (i + 1) * TILE]
                                data = _encode_classes(tile, lut, layer.palette) if lut is not None else _encode(tile)
                                if data is None:
                                    continue
                                _write_tile(folder, z, bx + i, by + j, layer.ext, data)
                                written.add((bx + i, by + j))
                                n_tiles += 1
                                n_bytes += len(data)
    return Pyramid(layer.id, zooms[0], zooms[1], lonlat_bounds(bounds), n_tiles, n_bytes)


def _write_tile(folder: Path, z: int, x: int, y: int, ext: str, data: bytes) -> None:
    path = folder / str(z) / str(x) / f"{y}.{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _from_children(
    folder: Path, z: int, children: set[tuple[int, int]], layer: RasterLayer, lut: np.ndarray | None
) -> tuple[set[tuple[int, int]], int]:
    """Tiles of zoom ``z`` from their written children of zoom ``z + 1`` (``children``); returns (tiles, bytes).

    Images: the alpha-weighted mean of each 2 x 2 pixels; classes: the top-left one (as
    nearest-neighbour overviews). Four tiles in memory at a time.
    """
    written: set[tuple[int, int]] = set()
    size = 0
    for x, y in sorted({(cx // 2, cy // 2) for cx, cy in children}):
        if lut is not None:
            blank = int(np.flatnonzero(lut == 0)[0]) if (lut == 0).any() else 0
            canvas = np.full((2 * TILE, 2 * TILE), blank, np.uint8)
        else:
            canvas = np.zeros((4, 2 * TILE, 2 * TILE), np.uint8)
        for i in (0, 1):
            for j in (0, 1):
                if (2 * x + i, 2 * y + j) not in children:
                    continue
                with Image.open(folder / str(z + 1) / str(2 * x + i) / f"{2 * y + j}.{layer.ext}") as img:
                    if lut is not None:
                        canvas[j * TILE : (j + 1) * TILE, i * TILE : (i + 1) * TILE] = np.asarray(img)
                    else:
                        rgba = np.moveaxis(np.asarray(img.convert("RGBA")), -1, 0)
                        canvas[:, j * TILE : (j + 1) * TILE, i * TILE : (i + 1) * TILE] = rgba
        data = _encode_classes(canvas[::2, ::2], lut, layer.palette) if lut is not None else _encode(_halve(canvas))
        if data is not None:
            _write_tile(folder, z, x, y, layer.ext, data)
            written.add((x, y))
            size += len(data)
    return written, size


def _halve(rgba: np.ndarray) -> np.ndarray:
    """(4, 2h, 2w) uint8 RGBA -> (4, h, w): each 2 x 2 pixels' colour weighted by their alpha, and their mean alpha."""
    _, h2, w2 = rgba.shape
    h, w = h2 // 2, w2 // 2
    alpha = rgba[3].astype(np.float32)
    weight = alpha.reshape(h, 2, w, 2).sum(axis=(1, 3))
    colour = (rgba[:3] * alpha).reshape(3, h, 2, w, 2).sum(axis=(2, 4)) / np.maximum(weight, 1.0)
    out = np.empty((4, h, w), np.uint8)
    out[:3] = np.clip(np.rint(colour), 0, 255)
    out[3] = np.rint(weight / 4.0)
    return out


def _overview_level(factors: list[int], native: float, target: float) -> int | None:
    """Index of the coarsest overview whose pixels are no coarser than ``target`` (metres); None: full resolution."""
    level = None
    for i, f in enumerate(factors):
        if native * f <= target * 1.001:
            level = i
    return level


def _nodata(src: rasterio.io.DatasetReader) -> float:
    return src.nodata if src.nodata is not None else 255


def _stretch(src: rasterio.io.DatasetReader, bands: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per band (2nd, 98th) percentiles of the valid pixels of a decimated read: the image's display range."""
    scale = scene_byte_scale(src, bands, target=(0.0, 255.0))
    return np.asarray(scale.low), np.asarray(scale.high)


def _image_block(
    vrt: WarpedVRT,
    bands: tuple[int, ...],
    window: Window,
    scale: tuple[np.ndarray, np.ndarray] | None,
    has_alpha: bool,
) -> np.ndarray:
    """(4, rows, cols) uint8 RGBA of one block: the bands stretched to 0-255, alpha 0 where there is no data."""
    alpha_band = [i + 1 for i, c in enumerate(vrt.colorinterp) if c == ColorInterp.alpha]
    rgb = vrt.read(list(bands), window=window)
    alpha = vrt.read(alpha_band[0], window=window) if alpha_band else vrt.dataset_mask(window=window)
    if scale is not None:
        lo, hi = scale
        rgb = np.clip(np.rint((rgb - lo[:, None, None]) / (hi - lo)[:, None, None] * 255.0), 0, 255)
    out = np.empty((4, *alpha.shape), np.uint8)
    out[:3] = rgb
    out[3] = alpha
    return out


def _encode(rgba: np.ndarray) -> bytes | None:
    """Lossy WebP of a (4, TILE, TILE) uint8 tile; None when nothing in it is drawn."""
    alpha = rgba[3]
    if not alpha.any():
        return None
    buf = io.BytesIO()
    if alpha.min() == 255:
        Image.fromarray(np.moveaxis(rgba[:3], 0, -1), "RGB").save(buf, "WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)
    else:
        Image.fromarray(np.moveaxis(rgba, 0, -1), "RGBA").save(buf, "WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)
    return buf.getvalue()


def _palette_lut(palette: tuple[RGB | None, ...]) -> np.ndarray:
    """Opacity (0 or 255) of each of the 256 values: 255 for the values with a colour."""
    lut = np.zeros(256, np.uint8)
    for v, c in enumerate(palette[:256]):
        if c is not None:
            lut[v] = 255
    return lut


def _encode_classes(values: np.ndarray, lut: np.ndarray, palette: tuple[RGB | None, ...] | None) -> bytes | None:
    """Paletted PNG of a (TILE, TILE) tile of class values; None when every pixel is transparent."""
    if not lut[values].any():
        return None
    img = Image.fromarray(values.astype(np.uint8), "P")
    colours = [c or (0, 0, 0) for c in (palette or ())][:256]
    img.putpalette([v for c in colours + [(0, 0, 0)] * (256 - len(colours)) for v in c])
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=lut.tobytes())
    return buf.getvalue()


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(e.stat().st_size for e in _walk(folder))


def _walk(folder: Path):
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        else:
            yield entry
