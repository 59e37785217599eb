"""``item.json``: a STAC Item (pystac) describing one scene's output folder.

The Item's footprint and bbox are the scene's extent in WGS84 (EPSG:4326, lon/lat), with
longitudes in [-180, 180]: a scene across the antimeridian gets a MultiPolygon cut at 180
degrees and a bbox whose west is greater than its east (RFC 7946 3.1.9 and 5.2, as the STAC
Item spec asks); the projection extension gives the outputs' own CRS, shape and transform. Assets are the
folder's files with relative hrefs (``./scores.tif`` ...), so the folder can be moved or
served as is: ``scores.tif`` and ``classes.tif`` (role ``data``, the class list in the
classification extension), ``features.gpkg`` (``data``; or one ``features_<layer>`` asset per
FlatGeobuf file ``features.<layer>.fgb``, ``application/vnd.flatgeobuf``), ``quicklook.png`` (``overview``)
and ``run.json`` (``metadata``). The Item's datetime is the scene's acquisition time when
its GeoTIFF carries one (``TIFFTAG_DATETIME``), else the processing time (said so in
``geounet:datetime_source``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from rasterio.warp import transform, transform_bounds, transform_geom

from geounet.io.remote import gdal_path, is_remote
from geounet.io.run_record import RunRecord
from geounet.models.card import ModelCard

log = logging.getLogger("geounet")

ASSETS = {  # file -> (media type, roles, title)
    "scores.tif": (pystac.MediaType.COG, ["data"], "Class probabilities (uint8, probability = DN / 254)"),
    "classes.tif": (pystac.MediaType.COG, ["data"], "Winning class per pixel (uint8)"),
    "features.gpkg": (pystac.MediaType.GEOPACKAGE, ["data"], "Vector map (GeoPackage, scene CRS)"),
    "quicklook.png": (pystac.MediaType.PNG, ["overview"], "Scene with classes overlaid"),
    "run.json": (pystac.MediaType.JSON, ["metadata"], "Provenance: input, model and settings"),
    "web/index.html": (pystac.MediaType.HTML, ["overview"], "Web map, offline (serve the folder: geounet view)"),
}
LAYER_FILES = {  # features.<layer>.<ext>: media type, format
    "fgb": (pystac.MediaType.FLATGEOBUF, "FlatGeobuf"),
    "parquet": (pystac.MediaType.VND_APACHE_PARQUET, "GeoParquet"),
}


def _asset(name: str) -> tuple[str, tuple[str, list[str], str]] | None:
    """``(asset key, (media type, roles, title))`` of an output file, or None for a file that is no asset."""
    if name in ASSETS:
        return name.split(".")[0].split("/")[0], ASSETS[name]
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "features" and parts[2] in LAYER_FILES:
        media, fmt = LAYER_FILES[parts[2]]
        return f"features_{parts[1]}", (media, ["data"], f"Vector layer {parts[1]} ({fmt}, scene CRS)")
    return None


def _acquired(tags: dict) -> _dt.datetime | None:
    raw = tags.get("TIFFTAG_DATETIME") or tags.get("ACQUISITIONDATETIME")
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return _dt.datetime.strptime(str(raw).strip().rstrip("Z"), fmt).replace(tzinfo=_dt.timezone.utc)
        except (TypeError, ValueError):
            continue
    return None


def footprint_and_bbox(crs, bounds, densify: int = 21) -> tuple[dict[str, Any], list[float]]:
    """The footprint (GeoJSON geometry) and bbox ``[west, south, east, north]`` in WGS84 degrees of ``bounds``.

    ``bounds``: ``(left, bottom, right, top)`` in ``crs`` units. Longitudes are in
    [-180, 180]. A footprint that crosses the antimeridian is cut there into a
    MultiPolygon and its bbox has west > east (e.g. ``[179.9, -17.1, -179.9, -16.9]``);
    one that goes all around the globe gets west -180 and east 180. The bbox follows the
    edges (``densify`` points each), the footprint joins the corners.
    """
    left, bottom, right, top = bounds
    corners = [(left, bottom), (right, bottom), (right, top), (left, top)]
    xs: list[float] = []
    ys: list[float] = []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        xs += [x0 + (x1 - x0) * i / densify for i in range(densify)]
        ys += [y0 + (y1 - y0) * i / densify for i in range(densify)]
    lons, lats = transform(crs, "EPSG:4326", xs, ys)
    unwrapped = [lons[0]]  # each step the short way round: a ring that crosses 180 goes past it
    for lon in lons[1:]:
        unwrapped.append(unwrapped[-1] + (lon - unwrapped[-1] + 180.0) % 360.0 - 180.0)
    shift = -360.0 * math.floor((min(unwrapped) + 180.0) / 360.0)  # the westmost point into [-180, 180)
    west, east = min(unwrapped) + shift, max(unwrapped) + shift
    south, north = min(lats), max(lats)
    if shift == 0 and east <= 180.0:  # the usual case: GDAL's own transforms (poles, curved edges)
        ring = [list(c) for c in corners + corners[:1]]
        footprint = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}, precision=7)
        return footprint, list(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))
    if east - west >= 360.0:
        box = [[-180.0, south], [180.0, south], [180.0, north], [-180.0, north], [-180.0, south]]
        return {"type": "Polygon", "coordinates": [box]}, [-180.0, south, 180.0, north]
    from shapely import affinity
    from shapely.geometry import Polygon, mapping
    from shapely.geometry import box as make_box
    from shapely.geometry.polygon import orient

    outline = orient(Polygon([(unwrapped[i * densify] + shift, lats[i * densify]) for i in range(4)]))  # CCW
    if east <= 180.0:
        return _rounded(mapping(outline)), _rounded_bbox(west, south, east, north)
    parts = [
        outline.intersection(make_box(-180.0, -90.0, 180.0, 90.0)),
        affinity.translate(outline.intersection(make_box(180.0, -90.0, 540.0, 90.0)), xoff=-360.0),
    ]
    pieces = [orient(p) for part in parts for p in getattr(part, "geoms", [part]) if p.area > 0]
    polygons = [[list(p.exterior.coords)] for p in pieces]
    footprint = _rounded({"type": "MultiPolygon", "coordinates": polygons})
    return footprint, _rounded_bbox(west, south, east - 360.0, north)


def _rounded_bbox(*values: float) -> list[float]:
    return [round(v, 7) for v in values]


def _rounded(geometry: dict[str, Any]) -> dict[str, Any]:
    """A GeoJSON geometry with its coordinates as lists of degrees rounded to 7 decimals (about 1 cm)."""

    def walk(c: Any) -> Any:
        return round(float(c), 7) if isinstance(c, (int, float)) else [walk(v) for v in c]

    return {"type": geometry["type"], "coordinates": walk(geometry["coordinates"])}


def build_item(item_id: str, scene: str | Path, card: ModelCard, record: RunRecord, files: list[str]) -> pystac.Item:
    """A STAC Item for one output folder holding ``files`` (names relative to the folder)."""
    with rasterio.open(gdal_path(scene)) as src:
        crs, transform, width, height, bounds = src.crs, src.transform, src.width, src.height, src.bounds
        tags = src.tags()
        acquired = _acquired(tags)
    footprint, bbox = footprint_and_bbox(crs, bounds)
    created = _dt.datetime.fromisoformat(record.created_utc)
    item = pystac.Item(
        id=item_id,
        geometry=footprint,
        bbox=bbox,
        datetime=acquired or created,
        properties={
            "created": created.isoformat(),
            "geounet:datetime_source": "acquisition" if acquired else "processing",
            "geounet:model": card.name,
            "geounet:model_sha256": record.model.sha256,
            "geounet:version": record.geounet_version,
            "gsd": record.input.ground_resolution_m,
        },
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    if epsg:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = crs.to_wkt()
    proj.shape = [height, width]
    proj.transform = list(transform)[:6]
    proj.bbox = list(bounds)
    classes = [
        Classification.create(
            value=i, name=c.name, description=c.kind, color_hint=f"{c.color[0]:02X}{c.color[1]:02X}{c.color[2]:02X}"
        )
        for i, c in enumerate(card.classes)
    ]
    for name in files:
        found = _asset(name)
        if found is None:
            continue
        key, (media, roles, title) = found
        asset = pystac.Asset(href=f"./{name}", media_type=media, roles=roles, title=title)
        item.add_asset(key, asset)
        if name == "classes.tif":
            ClassificationExtension.ext(asset, add_if_missing=True).classes = classes
    source_item = tags.get("STAC_ITEM")  # a STAC Item's VRT (geounet.io.stac_input): link the Item itself
    if source_item:
        href = source_item if is_remote(source_item) or "://" in source_item else Path(source_item).as_uri()
        item.add_link(pystac.Link("derived_from", href, media_type=pystac.MediaType.GEOJSON, title="input STAC item"))
    else:
        item.add_link(
            pystac.Link(
                "derived_from",
                str(scene) if is_remote(scene) else Path(scene).resolve().as_uri(),
                media_type=pystac.MediaType.GEOTIFF,
                title="input scene",
            )
        )
    return item


def write_scene_quicklook(folder: Path, scene: str | Path, card: ModelCard) -> dict[str, int] | None:
    """``quicklook.png`` in a (still temporary) output folder, from its ``classes.tif``: its size, or None.

    A quicklook that cannot be drawn is a warning, not a lost scene.
    """
    from geounet.io.quicklook import write_quicklook

    try:
        rows, cols = write_quicklook(scene, Path(folder) / "classes.tif", card, Path(folder) / "quicklook.png")
    except Exception as exc:  # noqa: BLE001  (a picture must never cost the scene)
        log.warning("%s: no quicklook.png (%s)", scene, exc)
        return None
    return {"width": cols, "height": rows}


def finish_scene_folder(folder: Path, item_id: str, scene: str | Path, card: ModelCard, record: RunRecord) -> None:
    """Add ``item.json`` to a (still temporary) output folder, its assets the files there, and list it in ``record``.

    The quicklook, drawn earlier (:func:`write_scene_quicklook`), is an asset when it exists.
    """
    folder = Path(folder)
    outputs = record.outputs
    layer_files = sorted(f for f in outputs if f not in ASSETS and _asset(f) and (folder / f).exists())
    files = [f for f in ASSETS if f == "run.json" or (folder / f).exists()] + layer_files
    item = build_item(item_id, scene, card, record, files)
    tmp = folder / f".item.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2))
    os.replace(tmp, folder / "item.json")
    outputs["item.json"] = {"stac_version": pystac.get_stac_version(), "assets": sorted(item.assets)}
