"""The two epochs on one grid: VRT mosaics of each epoch's tiles, their overlap, post warped onto pre.

The *analysis grid* is the pre mosaic's own grid (its CRS and pixel size). Each epoch's
tiles are mosaicked on the fly as a GDAL VRT (XML written here, nothing merged in
memory); the post mosaic is warped onto the pre grid window by window through a
``WarpedVRT``. Only the pre-grid pixels covered by both epochs (the *overlap*) are assessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geounet.compute.grid import Box, GeoGrid
from geounet.errors import GeounetError, InputError
from geounet.io.remote import gdal_path, is_remote, scene_name
from geounet.io.scene import check_scene, open_scene
from geounet.models.card import ModelCard

GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}  # others: Float32


@dataclass(frozen=True)
class _Tile:
    """One input tile as the mosaic places it: absolute path, CRS, affine, size in pixels, bands, data types."""

    path: str | Path  # absolute, or the GDAL path of a remote scene (/vsicurl/..., /vsis3/...)
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]


def mosaic_vrt(
    tiles: list[str | Path], card: ModelCard, epoch: str, coarsen: float = 1.0, rescale: bool = False
) -> tuple[str, GeoGrid]:
    """VRT XML mosaicking ``tiles`` (same CRS, bands and dtype; north-up), and its grid.

    The VRT takes the first tile's pixel size (times ``coarsen`` >= 1: pixels averaged down,
    e.g. to a much coarser post scene's resolution); each tile is placed by its bounds. Its
    per-dataset mask band is the union of the tiles' own masks (nodata, alpha or GDAL
    mask), so gaps between tiles and nodata inside them read as invalid. ``epoch``
    ("pre" or "post") names the tiles in errors.
    """
    infos = _read_tiles(tiles, card, epoch, rescale)
    first = infos[0]
    xres, yres = abs(first.transform.a) * coarsen, abs(first.transform.e) * coarsen
    kind = "ComplexSource" if coarsen > 1 else "SimpleSource"
    resample = ' resampling="average"' if coarsen > 1 else ""
    lefts, rights, tops, bottoms = [], [], [], []
    for t in infos:
        (x0, y0), (x1, y1) = t.transform @ (0, 0), t.transform @ (t.width, t.height)
        lefts.append(min(x0, x1))
        rights.append(max(x0, x1))
        tops.append(max(y0, y1))
        bottoms.append(min(y0, y1))
    left, top = min(lefts), max(tops)
    width = max(1, round((max(rights) - left) / xres))
    height = max(1, round((top - min(bottoms)) / yres))
    transform = Affine(xres, 0.0, left, 0.0, -yres, top)

    def source(t: _Tile, band: str) -> str:
        dx, dy = (t.transform.c - left) / xres, (top - t.transform.f) / yres
        dw, dh = t.width * abs(t.transform.a) / xres, t.height * abs(t.transform.e) / yres
        return (
            f'<{kind}{resample}><SourceFilename relativeToVRT="0">{escape(str(t.path))}</SourceFilename>'
            f'<SourceBand>{band}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{t.width}" ySize="{t.height}"/>'
            f'<DstRect xOff="{dx:.10g}" yOff="{dy:.10g}" xSize="{dw:.10g}" ySize="{dh:.10g}"/></{kind}>'
        )

    dtype = GDAL_TYPES.get(first.dtypes[0], "Float32")
    parts = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<SRS>{escape(first.crs.to_wkt())}</SRS>",
        "<GeoTransform>" + ", ".join(f"{v:.17g}" for v in transform.to_gdal()) + "</GeoTransform>",
    ]
    for b in range(1, first.count + 1):
        parts.append(f'<VRTRasterBand dataType="{dtype}" band="{b}">')
        parts += [source(t, str(b)) for t in infos]
        parts.append("</VRTRasterBand>")
    parts.append('<MaskBand><VRTRasterBand dataType="Byte">')
    parts += [source(t, "mask,1") for t in infos]
    parts.append("</VRTRasterBand></MaskBand></VRTDataset>")
    return "\n".join(parts), GeoGrid(first.crs.to_wkt(), tuple(transform)[:6], width, height)


def _read_tiles(tiles: list[str | Path], card: ModelCard, epoch: str, rescale: bool = False) -> list[_Tile]:
    """Each tile checked against the model card; all of one epoch must share CRS, bands and data type."""
    if not tiles:
        raise GeounetError(None, f"no {epoch} scene given")
    infos = []
    for path in tiles:
        with open_scene(path) as src:
            check_scene(src, card, rescale)
            infos.append(
                _Tile(_absolute(path), src.crs, src.transform, src.width, src.height, src.count, tuple(src.dtypes))
            )
    first = infos[0]
    for t in infos[1:]:
        if t.crs != first.crs:
            raise InputError(
                t.path,
                f"{epoch} tiles must share one CRS: {t.crs.to_string()} here, "
                f"{first.crs.to_string()} in {scene_name(first.path)}",
            )
        if t.count != first.count or t.dtypes != first.dtypes:
            raise InputError(
                t.path, f"{epoch} tiles must have the same bands and data type as {scene_name(first.path)}"
            )
    return infos


def _absolute(path: str | Path) -> str | Path:
    """What a VRT names a tile by: its absolute path, or the GDAL path of a remote scene."""
    return gdal_path(path) if is_remote(path) else Path(path).resolve()


def overlap_box(pre: GeoGrid, post: GeoGrid) -> Box | None:
    """The pre-grid pixels (whole pixels) covered by the post grid's footprint; None if disjoint."""
    a = pre.affine
    pb = rasterio.transform.array_bounds(post.height, post.width, post.affine)
    left, bottom, right, top = transform_bounds(post.crs_wkt, pre.crs_wkt, *pb, densify_pts=21)
    c0, r0 = ~a @ (left, top)
    c1, r1 = ~a @ (right, bottom)
    c0, c1 = sorted((c0, c1))
    r0, r1 = sorted((r0, r1))
    c0, r0 = max(0, math.floor(c0)), max(0, math.floor(r0))
    c1, r1 = min(pre.width, math.ceil(c1)), min(pre.height, math.ceil(r1))
    if c1 <= c0 or r1 <= r0:
        return None
    return Box(r0, c0, r1, c1)


def as_window(box: Box) -> Window:
    """The rasterio window of a pixel box."""
    return Window(box.col0, box.row0, box.width, box.height)


def post_on_pre(post_ds: DatasetReader, pre: GeoGrid) -> WarpedVRT:
    """The post mosaic warped onto the pre grid (bilinear); band ``count`` is alpha (valid = 255)."""
    return WarpedVRT(
        post_ds,
        crs=pre.crs_wkt,
        transform=pre.affine,
        width=pre.width,
        height=pre.height,
        resampling=Resampling.bilinear,
        add_alpha=True,
    )
