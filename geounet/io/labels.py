"""Training labels: vector label files -> class-index rasters on a scene's grid.

A label raster holds one class index per pixel (0 .. n_classes-1) and ``ignore_index``
(255 by default) where the pixel has no usable label. Vector labels are read with
geopandas/pyogrio, reprojected to the scene CRS, line features are buffered to a
width given in metres (in a local UTM CRS, so geographic scenes are right), and each
feature's class attribute is mapped to a class index.

Errors about the label file are ``GeounetError(label_path, problem)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from geounet.errors import GeounetError

IGNORE_INDEX = 255
IGNORE_CLASS = "ignore"  # a value_map target that paints ignore_index instead of a class
RASTER_LABEL_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")  # label files read as class rasters
_LINES = ("LineString", "MultiLineString", "LinearRing")
_POLYGONS = ("Polygon", "MultiPolygon")


def rasterize_labels(
    geoms_with_class_values: Iterable[tuple[Any, int]],
    out_shape: tuple[int, int],
    transform: Affine,
    all_touched: bool = False,
    fill: int = 0,
) -> np.ndarray:
    """Burn ``(geometry, class value)`` pairs into a ``uint8`` array of ``out_shape`` (rows, cols).

    Geometries must be in the CRS of ``transform`` (the affine transform of the target
    grid, pixel -> CRS coordinates). Later pairs overwrite earlier ones where they
    overlap. Pixels no geometry touches get ``fill``. ``all_touched`` burns every pixel
    a geometry touches instead of those whose centre it contains.
    """
    from rasterio.features import rasterize

    shapes = [(g, int(v)) for g, v in geoms_with_class_values if g is not None and not g.is_empty]
    if not shapes:
        return np.full(out_shape, fill, dtype=np.uint8)
    return rasterize(
        shapes,
        out_shape=out_shape,
        transform=transform,
        fill=fill,
        all_touched=all_touched,
        dtype="uint8",
    )


def read_vector_labels(
    path: str | Path,
    scene_crs,
    scene_bounds: Sequence[float],
    class_names: Sequence[str],
    *,
    class_field: str | None = None,
    default_class: str | None = None,
    value_map: Mapping[str, str] | None = None,
    line_width_m: float = 3.0,
    layer: str | None = None,
    allow_empty: bool = False,
):
    """Read the label features that overlap a scene, ready to rasterize on its grid.

    ``scene_bounds`` is ``(left, bottom, right, top)`` in ``scene_crs``. Each feature's
    class comes from its ``class_field`` attribute (mapped through ``value_map``, else
    taken as a class name) or, without a field, is ``default_class``. A value mapped to
    ``"ignore"`` marks its area as unlabelled. Line features become polygons
    ``line_width_m`` metres wide. Returns a GeoDataFrame in ``scene_crs`` with columns
    ``geometry`` and ``class_value`` (class index, or ``IGNORE_INDEX``). No feature over the
    scene is an error (a wrong file or CRS, most often) unless ``allow_empty``: a training
    scene with no buildings is a fair negative example.
    """
    import geopandas as gpd
    from pyproj import CRS
    from rasterio.warp import transform_bounds
    from shapely.geometry import box

    path = Path(path)
    info, label_crs = _vector_info(path, layer)
    scene_crs = CRS.from_user_input(scene_crs)

    # Only read what can overlap the scene: its bounds in the label CRS (densified edges).
    left, bottom, right, top = transform_bounds(scene_crs, label_crs, *scene_bounds, densify_pts=21)
    gdf = gpd.read_file(path, layer=layer, bbox=(left, bottom, right, top), engine="pyogrio")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if not len(gdf) and _no_geometries(info.get("total_bounds")):
        raise GeounetError(path, f"label file has {info.get('features')} feature(s) but none has a geometry")
    if len(gdf):
        gdf = gdf.to_crs(scene_crs)
        gdf = gdf[gdf.geometry.intersects(box(*scene_bounds))]
    if not len(gdf) and allow_empty:
        return gpd.GeoDataFrame({"class_value": np.zeros(0, np.int64)}, geometry=[], crs=scene_crs)
    if not len(gdf):
        raise GeounetError(
            path,
            f"no labels overlap the scene (scene bounds {_fmt_bounds(scene_bounds)} in {scene_crs.to_string()}; "
            f"labels span {_fmt_bounds(info.get('total_bounds'))} in {label_crs.to_string()})",
        )

    values = _class_values(path, gdf, class_names, class_field, default_class, value_map or {})
    gdf = gdf.assign(class_value=values)[["class_value", "geometry"]]
    return _polygonize(path, gdf, line_width_m)


def _vector_info(path: Path, layer: str | None) -> tuple[dict[str, Any], Any]:
    """The label file's layer info and CRS (pyproj), or a one-line error naming what is wrong with it."""
    import pyogrio
    from pyproj import CRS

    if not path.is_file():
        raise GeounetError(path, "label file not found")
    if path.stat().st_size == 0:
        raise GeounetError(path, "label file is empty (0 bytes)")
    try:
        info = pyogrio.read_info(path, layer=layer)
    except Exception as exc:  # pyogrio raises DataSourceError / DataLayerError
        raise GeounetError(path, f"cannot read the label file ({_short(exc)})") from None
    if info.get("features") == 0:
        raise GeounetError(path, "label file has no features")
    if not info.get("crs"):
        raise GeounetError(path, "label file has no CRS")
    return info, CRS.from_user_input(info["crs"])


def instance_ids(gdf: Any, out_shape: tuple[int, int], transform: Affine, all_touched: bool = False) -> np.ndarray:
    """Each feature of ``gdf`` burnt with its own id (1, 2, ...) on a grid (rows, cols); 0 where none is.

    Where features overlap, the later one wins.
    """
    from rasterio.features import rasterize

    shapes = [(g, i) for i, g in enumerate(gdf.geometry, 1) if g is not None and not g.is_empty]
    if not shapes:
        return np.zeros(out_shape, np.int32)
    return rasterize(shapes, out_shape=out_shape, transform=transform, fill=0, dtype="int32", all_touched=all_touched)


def labels_to_raster(
    gdf,
    out_shape: tuple[int, int],
    transform: Affine,
    *,
    all_touched: bool = False,
    unlabelled: int = 0,
) -> np.ndarray:
    """Rasterize a ``read_vector_labels`` GeoDataFrame onto a grid (rows, cols; transform in its CRS).

    Pixels covered by no feature get ``unlabelled`` (the background class index, or
    ``IGNORE_INDEX`` when the labels cover only part of the scene). Where features
    overlap, ignore areas win over classes and higher class indexes over lower ones, so
    the result does not depend on the order of the file.
    """
    order = np.argsort(gdf["class_value"].to_numpy(), kind="stable")
    ordered = gdf.iloc[order]
    pairs = zip(ordered.geometry, ordered["class_value"].to_numpy())
    return rasterize_labels(pairs, out_shape, transform, all_touched=all_touched, fill=unlabelled)


def read_label_raster(
    path: str | Path,
    crs,
    transform: Affine,
    out_shape: tuple[int, int],
    class_names: Sequence[str],
    value_map: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Read a label raster onto a target grid (nearest neighbour) as class indexes.

    The target grid is ``out_shape`` (rows, cols) with ``transform`` in ``crs``. Band 1
    holds class indexes ``0 .. n_classes-1`` or, with ``value_map`` (raster value as a
    string -> class name or ``"ignore"``, e.g. ``{"0": "background", "255": "road"}``),
    values to map. Its nodata value, pixels outside its own mask or extent and, without
    a value map, the value ``IGNORE_INDEX`` become ``IGNORE_INDEX``.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    path = Path(path)
    if not path.is_file():
        raise GeounetError(path, "label raster not found")
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise GeounetError(path, "label raster has no CRS")
            with WarpedVRT(
                src,
                crs=crs,
                transform=transform,
                width=out_shape[1],
                height=out_shape[0],
                resampling=Resampling.nearest,
                add_alpha=src.nodata is None,  # mark the area outside the raster as not valid
            ) as vrt:
                values = vrt.read(1)
                valid = vrt.dataset_mask() > 0
    except rasterio.errors.RasterioError as exc:
        raise GeounetError(path, f"cannot read the label raster ({_short(exc)})") from None
    if not valid.any():
        raise GeounetError(path, "the label raster does not overlap the scene")
    if value_map:
        return _mapped_raster(path, values, valid, class_names, value_map)
    out = np.full(out_shape, IGNORE_INDEX, dtype=np.uint8)
    n_classes = len(class_names)
    bad = valid & (values != IGNORE_INDEX) & ((values < 0) | (values >= n_classes))
    if bad.any():
        shown = sorted(np.unique(values[bad]).tolist())[:10]
        raise GeounetError(
            path,
            f"label raster has values {shown} that are not class indexes 0..{n_classes - 1} (map them with value_map)",
        )
    out[valid] = values[valid]
    return out


def _mapped_raster(
    path: Path, values: np.ndarray, valid: np.ndarray, class_names: Sequence[str], value_map: Mapping[str, str]
) -> np.ndarray:
    """Raster values -> class indexes through ``value_map``; every value present must be mapped."""
    out = np.full(values.shape, IGNORE_INDEX, dtype=np.uint8)
    index = {name: i for i, name in enumerate(class_names)}
    index[IGNORE_CLASS] = IGNORE_INDEX
    unknown = sorted({n for n in value_map.values() if n not in index})
    if unknown:
        raise GeounetError(path, f"value_map names classes not in the config's classes {list(class_names)}: {unknown}")
    present = np.unique(values[valid])
    unmapped = [v for v in present.tolist() if _key(v) not in value_map]
    if unmapped:
        raise GeounetError(path, f"label raster values {unmapped[:10]} are not in value_map {dict(value_map)}")
    for v in present.tolist():
        out[valid & (values == v)] = index[value_map[_key(v)]]
    return out


def _key(value) -> str:
    """A raster or attribute value as a value_map key: integers without a decimal point."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _class_values(
    path: Path,
    gdf,
    class_names: Sequence[str],
    class_field: str | None,
    default_class: str | None,
    value_map: Mapping[str, str],
) -> np.ndarray:
    """Class index (or IGNORE_INDEX) per feature; unknown class names are an error."""
    index = {name: i for i, name in enumerate(class_names)}
    index[IGNORE_CLASS] = IGNORE_INDEX
    if class_field is None:
        if default_class is None:
            raise GeounetError(path, "no class_field and no default_class: cannot tell the features' class")
        if default_class not in index:
            raise GeounetError(path, f"class {default_class!r} is not in the config's classes {list(class_names)}")
        return np.full(len(gdf), index[default_class], dtype=np.int64)
    if class_field not in gdf.columns:
        fields = [c for c in gdf.columns if c != "geometry"]
        raise GeounetError(path, f"label file has no field {class_field!r} (fields: {fields})")
    raw = gdf[class_field]
    names = []
    for v in raw:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            names.append(default_class if default_class is not None else None)
            continue
        key = _key(v)
        names.append(value_map.get(key, key))
    unknown = sorted({str(n) for n in names if n not in index})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise GeounetError(
            path,
            f"field {class_field!r} has class names not in the config's classes {list(class_names)}: {shown} "
            f"(map them with value_map, to 'ignore' to leave them unlabelled)",
        )
    return np.array([index[str(n)] for n in names], dtype=np.int64)  # no None left: unknown names raised above


def _polygonize(path: Path, gdf, line_width_m: float):
    """Buffer line features to ``line_width_m`` metres (in a local UTM CRS); reject points."""
    types = gdf.geometry.geom_type
    bad = sorted(set(types) - set(_LINES) - set(_POLYGONS) - {"GeometryCollection"})
    if bad:
        raise GeounetError(path, f"unsupported label geometry types {bad}: use polygons or lines")
    is_line = types.isin(_LINES).to_numpy()
    if is_line.any():
        if line_width_m <= 0:
            raise GeounetError(path, "line labels need a positive line_width_m")
        scene_crs = gdf.crs
        lines = gdf[is_line]
        metric = lines.estimate_utm_crs()
        buffered = lines.to_crs(metric).buffer(line_width_m / 2.0, cap_style="flat").to_crs(scene_crs)
        gdf = gdf.copy()
        gdf.loc[is_line, "geometry"] = buffered.to_numpy()
    return gdf


def _no_geometries(bounds) -> bool:
    """True when pyogrio's total bounds say the layer has no geometry at all."""
    return bounds is None or not np.all(np.isfinite(np.asarray(bounds, dtype=float)))


def _fmt_bounds(bounds) -> str:
    if bounds is None:
        return "unknown"
    return "(" + ", ".join(f"{b:.6g}" for b in bounds) + ")"


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
