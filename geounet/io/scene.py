"""Reading scenes: validation, ground resolution, the working grid, padded window reads.

All windows are in pixel coordinates of the *working grid*: the scene's own grid,
or, when the scene's ground resolution differs much from the model's, the same
extent resampled to the model's resolution (read through a GDAL WarpedVRT, so only
the needed window is ever read).
"""

from __future__ import annotations

import math
import re
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
from geounet.io.radiometry import needs_byte_scale
from geounet.io.remote import cloud_defaults, gdal_path, is_remote
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
    Raises ``ValueError`` (one line) when the CRS cannot be related to longitude and
    latitude (an engineering or local CRS) or the centre lies outside the CRS's valid area.
    """
    from pyproj import Transformer
    from pyproj.exceptions import ProjError

    try:
        to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    except (ProjError, ValueError, TypeError) as exc:
        raise ValueError(
            f"its CRS ({_crs_name(crs)}) cannot be related to longitude and latitude (an engineering or local CRS?): "
            "outputs could not be placed on a map; assign the scene's real CRS (gdal_edit.py -a_srs EPSG:...)"
        ) from exc
    cr, cc = height / 2.0, width / 2.0
    x0, y0 = transform @ (cc, cr)
    x1, y1 = transform @ (cc + 1, cr)
    x2, y2 = transform @ (cc, cr + 1)
    try:
        (lon0, lon1, lon2), (lat0, lat1, lat2) = to_lonlat.transform([x0, x1, x2], [y0, y1, y2], errcheck=True)
        dx = _GEOD.inv(lon0, lat0, lon1, lat1)[2]
        dy = _GEOD.inv(lon0, lat0, lon2, lat2)[2]
    except ProjError:
        dx = dy = math.nan
    if not (math.isfinite(dx) and math.isfinite(dy)) or abs(lat0) > 90:
        raise ValueError(
            f"its centre ({x0:.6g}, {y0:.6g}) lies outside the valid area of its CRS ({_crs_name(crs)}): "
            "wrong CRS or wrong geotransform?"
        )
    return abs(dx), abs(dy)


def _crs_name(crs) -> str:
    try:
        from pyproj import CRS as ProjCRS

        c = ProjCRS.from_user_input(crs if isinstance(crs, str) else crs.to_wkt())
        auth = c.to_authority()
        return f"{auth[0]}:{auth[1]}" if auth else c.name
    except Exception:  # noqa: BLE001 - only for a message
        return str(crs)[:80]


MAX_ANISOTROPY = 4.0  # ground pixel width / height (or the inverse) beyond which a scene is refused


def scene_ground_size(src: rasterio.io.DatasetReaderBase) -> tuple[float, float]:
    """:func:`ground_pixel_size` of an open scene (m per pixel in x and y); one-line InputError when it has none.

    Also refuses pixels far from square on the ground (a geographic CRS near a pole):
    a model cannot make sense of them.
    """
    if src.crs is None:  # GCPs or RPCs only, or nothing: said as check_scene says it
        raise InputError(src.name, georeferencing_problem(src) or "raster has no CRS")
    try:
        dx, dy = ground_pixel_size(src.crs, src.transform, src.width, src.height)
    except ValueError as exc:
        raise InputError(src.name, str(exc)) from None
    if min(dx, dy) <= 0 or max(dx, dy) / min(dx, dy) > MAX_ANISOTROPY:
        raise InputError(
            src.name,
            f"its pixels measure {dx:.3g} m x {dy:.3g} m on the ground (x, y), far from square "
            "(degrees near a pole?): reproject it first (e.g. polar stereographic, EPSG:3413 or EPSG:3031)",
        )
    return dx, dy


@dataclass(frozen=True)
class WorkBudget:
    """Limits on a scene's working grid, checked before anything runs.

    ``max_upsample``: how many times finer (linear) than the scene the working grid may be;
    ``max_pixels``: the most pixels it may have.
    """

    max_upsample: float = 8.0
    max_pixels: int = 10**11


MIN_FIELD_OF_VIEW = 64  # working-grid side (pixels) below which a scene is too small for a U-Net to see context


def open_scene(path: str | Path) -> rasterio.io.DatasetReader:
    """Open a scene for reading, turning GDAL errors into a one-line InputError.

    A remote scene (``http(s)://``, ``s3://``, ``/vsi...``: :mod:`geounet.io.remote`) is
    opened through GDAL's network file systems, with the cloud read options set.
    """
    if is_remote(path):
        return _open_remote(str(path))
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not a raster file")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        missing = _missing_file(exc)
        if missing is not None and Path(missing).resolve() != path.resolve():
            raise InputError(path, _vrt_source_problem(missing)) from None
        raise InputError(path, f"not a readable raster ({_gdal_message(exc)})") from None


def _open_remote(scene: str) -> rasterio.io.DatasetReader:
    cloud_defaults()
    try:
        return rasterio.open(gdal_path(scene))
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(scene, _remote_problem(_gdal_message(exc))) from None


def _remote_problem(message: str) -> str:
    """GDAL's error on opening a remote file, in a few words (with GDAL's own text when unknown)."""
    m = re.search(r"HTTP response code: (\d+)", message)
    if m:
        code = int(m.group(1))
        words = {401: "unauthorized", 403: "forbidden", 404: "not found"}.get(code, "error")
        return f"HTTP {code} {words}"
    low = message.lower()
    if "not recognized as being in a supported file format" in low or "not recognised" in low:
        return "not a raster"
    if "could not connect" in low or "couldn't connect" in low or "failed to connect" in low:
        return "cannot connect"
    if "could not resolve" in low:
        return "cannot connect (unknown host)"
    return f"cannot open ({message})"


def check_scene(src: rasterio.io.DatasetReader, card: ModelCard, rescale: bool = False) -> None:
    """Raise InputError if the model cannot use this scene (CRS, transform, bands, dtype, bytes).

    ``rescale``: bands of another numeric type are accepted for a model that takes uint8
    (:func:`needs_byte_scale`: they are scaled to 8 bits on read).
    """
    path = src.name
    problem = georeferencing_problem(src)
    if problem is not None:
        raise InputError(path, problem)
    need = max(card.bands)
    if src.count < need:
        raise InputError(
            path,
            f"has {src.count} band(s) but model {card.name!r} needs bands {card.bands} ({', '.join(card.band_names)})",
        )
    if not (rescale and needs_byte_scale(src, card)):
        for b in card.bands:
            dtype = src.dtypes[b - 1]
            if dtype not in card.input_dtypes:
                raise InputError(
                    path, f"band {b} is {dtype} but model {card.name!r} expects {' or '.join(card.input_dtypes)} input"
                )
    missing = vrt_missing_source(src)
    if missing is not None:
        raise InputError(path, _vrt_source_problem(missing))
    # A truncated or corrupt file usually opens fine and fails on its last blocks:
    # read one pixel from each corner block so that fails now, not mid-run.
    h, w = src.height, src.width
    for r, c in {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2)}:
        try:
            src.read(card.bands, window=Window(c, r, 1, 1))
            src.read_masks(card.bands[0], window=Window(c, r, 1, 1))
        except rasterio.errors.RasterioIOError as exc:
            missing = _missing_file(exc)  # a source of a VRT the VRT's own source names (nested VRTs)
            if missing is not None:
                raise InputError(path, _vrt_source_problem(missing)) from None
            raise InputError(path, f"cannot read pixels, file truncated or corrupt ({_gdal_message(exc)})") from None


def working_grid(
    src: rasterio.io.DatasetReader, card: ModelCard, tolerance: float = 0.25, budget: WorkBudget | None = None
) -> WorkingGrid:
    """The scene's grid, or the same extent at the model's resolution if they differ by > ``tolerance``.

    Raises a one-line InputError when the scene has no usable ground resolution
    (:func:`scene_ground_size`) or the working grid would break ``budget`` (default limits).
    """
    budget = budget or WorkBudget()
    dx, dy = scene_ground_size(src)
    res = math.sqrt(dx * dy)
    factor = card.resolution_m / res  # > 1: scene finer than model, so we downsample
    if abs(math.log(factor)) <= math.log1p(tolerance):
        grid = WorkingGrid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height, False)
    else:
        width = max(1, round(src.width / factor))
        height = max(1, round(src.height / factor))
        if 1 / factor > budget.max_upsample:
            raise InputError(
                src.name,
                f"the scene is {res:.3g} m/px and model {card.name!r} works at {card.resolution_m:.3g} m/px: "
                f"its working grid would be {1 / factor:.3g} times finer ({width}x{height} px), more than the "
                f"limit of {budget.max_upsample:g} (max_upsample): use a model trained near {res:.3g} m/px",
            )
        t = src.transform @ Affine.scale(src.width / width, src.height / height)
        grid = WorkingGrid(src.crs.to_wkt(), tuple(t)[:6], width, height, True)
    if grid.width * grid.height > budget.max_pixels:
        raise InputError(
            src.name,
            f"its working grid at {card.resolution_m if grid.resampled else res:.3g} m/px would be "
            f"{grid.width}x{grid.height} px, more than the limit of {budget.max_pixels:.3g} pixels "
            "(max_working_pixels): cut the scene into parts or raise the limit",
        )
    return grid


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
    """GDAL's own words for ``exc``: the last line of the first message in its chain that says something.

    (rasterio raises "Read failed. See previous exception for details." with GDAL's
    message as its cause.)
    """
    texts = [t for t in _chain_texts(exc) if "see previous exception" not in t.lower()] or _chain_texts(exc)
    lines = texts[0].splitlines() if texts else []
    return lines[-1][:200] if lines else type(exc).__name__


def _chain_texts(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and of the exceptions it was raised from (at most 8), outermost first."""
    texts: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(texts) < 8:
        if str(e).strip():
            texts.append(str(e).strip())
        e = e.__cause__ or e.__context__
    return texts


_NO_FILE = (
    re.compile(r"^(?P<path>.+?): No such file or directory", re.M),
    re.compile(r"'(?P<path>.+?)' does not exist in the file system", re.M),
)


def _missing_file(exc: BaseException) -> str | None:
    """The file GDAL says does not exist in ``exc`` (or the errors it was raised from), if it says so."""
    for text in _chain_texts(exc):
        for pattern in _NO_FILE:
            m = pattern.search(text)
            if m:
                return m["path"]
    return None


def _vrt_source_problem(missing: str) -> str:
    return f"VRT source {missing} not found: restore that file, or rebuild the VRT from files that exist (gdalbuildvrt)"


def vrt_missing_source(src: rasterio.io.DatasetReaderBase) -> str | None:
    """The first source file of a VRT scene that does not exist on disk (None: all there, or not a VRT).

    GDAL opens a VRT without opening its sources, so a missing one would only fail
    the first read of its pixels. Sources that are not plain files (``/vsi...``, URLs,
    ``DRIVER:...`` names) are not checked.
    """
    if src.driver != "VRT":
        return None
    for name in src.files[1:]:  # the first is the VRT itself
        plain = not name.startswith("/vsi") and "://" not in name and not re.match(r"^[A-Za-z][A-Za-z0-9_]+:", name)
        if plain and not Path(name).exists():
            return name
    return None


def georeferencing_problem(src: rasterio.io.DatasetReaderBase) -> str | None:
    """Why the scene's pixels cannot be placed on a map by a north-up grid (None: they can).

    Ground control points or RPCs alone, no CRS, no geotransform, a rotated or sheared one:
    each with what to do about it.
    """
    gridless = src.crs is None or src.transform.is_identity
    gcps, _ = src.gcps
    if gridless and gcps:
        return (
            f"georeferenced by {len(gcps)} ground control points only, not by a grid: warp it onto one first "
            "(gdalwarp -r bilinear IN OUT.tif)"
        )
    if gridless and src.rpcs is not None:
        return (
            "georeferenced by RPCs only (a raw satellite image): orthorectify it first "
            "(gdalwarp -rpc -r bilinear -t_srs EPSG:<utm zone> IN OUT.tif)"
        )
    if src.crs is None:
        return "raster has no CRS: cannot georeference outputs (set one with gdal_edit.py -a_srs)"
    if src.transform.is_identity or src.transform.determinant == 0:
        return "raster has no geotransform: cannot georeference outputs"
    if abs(src.transform.b) > 1e-12 or abs(src.transform.d) > 1e-12:
        return "rotated geotransforms are not supported: warp the scene to a north-up grid first"
    return None
