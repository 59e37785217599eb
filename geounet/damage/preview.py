"""Small, decimated views of the pre/post pair: for the quicklook PNG and the radiometry match.

Both epochs are warped straight to a small grid over the overlap (average resampling;
GDAL reads overviews where the files have them), so no full-resolution array is read.
The quicklook is a plain picture, not a map: pre (left) and post on the pre grid
(right), footprint outlines coloured by grade.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT

from geounet.compute.change import GRADE_COLOURS
from geounet.compute.grid import Box, GeoGrid
from geounet.damage.mosaic import as_window
from geounet.io.quicklook import stretch

GAP = 8  # white pixels between the two panels
WHITE = 255


def read_pair_preview(
    pre_vrt: Path, post_vrt: Path, pre: GeoGrid, area: Box, size: int, bands: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre and post over ``area`` of the pre grid, at most ``size`` px a side: ``(pre, post, valid (2, h, w))``.

    ``bands`` are 1-based; one past a mosaic's band count reads its first band instead.
    """
    scale = max(1.0, area.width / size, area.height / size)
    w, h = max(1, round(area.width / scale)), max(1, round(area.height / scale))
    t = _small_grid(pre, area, w, h)
    out, ok = [], []
    for vrt in (pre_vrt, post_vrt):
        with (
            rasterio.open(vrt) as src,
            WarpedVRT(
                src, crs=pre.crs_wkt, transform=t, width=w, height=h, resampling=Resampling.average, add_alpha=True
            ) as v,
        ):
            out.append(v.read([b if b < v.count else 1 for b in bands]))
            ok.append(v.read(v.count) > 0)
    return out[0], out[1], np.stack(ok)


def _small_grid(pre: GeoGrid, area: Box, width: int, height: int) -> Affine:
    """The affine of ``area`` of the pre grid resampled to ``width`` x ``height`` pixels."""
    return rasterio.windows.transform(as_window(area), pre.affine) @ Affine.scale(
        area.width / width, area.height / height
    )


def write_quicklook(
    pre_vrt: Path, post_vrt: Path, pre: GeoGrid, area: Box, buildings: gpd.GeoDataFrame, path: Path, max_width: int
) -> None:
    """PNG, at most ``max_width`` px wide: pre and post over ``area``, footprint outlines coloured by ``damage``."""
    panel_w = max(32, (max_width - GAP) // 2)
    pre_rgb, post_rgb, ok = read_pair_preview(pre_vrt, post_vrt, pre, area, panel_w, [1, 2, 3])
    panels = [
        stretch(rgb, valid, per_band=False, keep_uint8=False, fill=WHITE)
        for rgb, valid in ((pre_rgb, ok[0]), (post_rgb, ok[1]))
    ]
    qh, qw = ok.shape[1:]
    codes = {g: i + 1 for i, g in enumerate(GRADE_COLOURS)}
    shapes = zip(buildings.geometry.values, buildings["damage"])
    outline = rasterize(
        ((shapely.boundary(g), codes[d]) for g, d in shapes if g is not None),
        out_shape=(qh, qw),
        transform=_small_grid(pre, area, qw, qh),
        fill=0,
        dtype="uint8",
        all_touched=True,
    )
    for rgb in panels:
        for g, code in codes.items():
            rgb[:, outline == code] = np.array(GRADE_COLOURS[g], np.uint8)[:, None]
    img = np.full((3, qh, 2 * qw + GAP), WHITE, np.uint8)
    img[:, :, :qw] = panels[0]
    img[:, :, qw + GAP :] = panels[1]
    with warnings.catch_warnings():  # a plain picture: no georeferencing on purpose
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=img.shape[2], height=qh, count=3, dtype="uint8") as dst:
            dst.write(img)
    path.with_name(path.name + ".aux.xml").unlink(missing_ok=True)
