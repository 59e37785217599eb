"""``item.json``: a STAC Item (pystac) describing one scene's output folder.

The Item's footprint and bbox are the scene's extent in WGS84 (EPSG:4326, lon/lat); the
projection extension gives the outputs' own CRS, shape and transform. Assets are the
folder's files with relative hrefs (``./scores.tif`` ...), so the folder can be moved or
served as is: ``scores.tif`` and ``classes.tif`` (role ``data``, the class list in the
classification extension), ``features.gpkg`` (``data``), ``quicklook.png`` (``overview``)
and ``run.json`` (``metadata``). The Item's datetime is the scene's acquisition time when
its GeoTIFF carries one (``TIFFTAG_DATETIME``), else the processing time (said so in
``geounet:datetime_source``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path

import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from rasterio.warp import transform_bounds, transform_geom

from geounet.io.run_record import RunRecord
from geounet.models.card import ModelCard

log = logging.getLogger("geounet")

ASSETS = {  # file -> (media type, roles, title)
    "scores.tif": (pystac.MediaType.COG, ["data"], "Class probabilities (uint8, probability = DN / 254)"),
    "classes.tif": (pystac.MediaType.COG, ["data"], "Winning class per pixel (uint8)"),
    "features.gpkg": (pystac.MediaType.GEOPACKAGE, ["data"], "Vector map (GeoPackage, scene CRS)"),
    "quicklook.png": (pystac.MediaType.PNG, ["overview"], "Scene with classes overlaid"),
    "run.json": (pystac.MediaType.JSON, ["metadata"], "Provenance: input, model and settings"),
}


def _acquired(tags: dict) -> _dt.datetime | None:
    raw = tags.get("TIFFTAG_DATETIME") or tags.get("ACQUISITIONDATETIME")
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return _dt.datetime.strptime(str(raw).strip().rstrip("Z"), fmt).replace(tzinfo=_dt.timezone.utc)
        except (TypeError, ValueError):
            continue
    return None


def build_item(item_id: str, scene: str | Path, card: ModelCard, record: RunRecord, files: list[str]) -> pystac.Item:
    """A STAC Item for one output folder holding ``files`` (names relative to the folder)."""
    with rasterio.open(scene) as src:
        crs, transform, width, height, bounds = src.crs, src.transform, src.width, src.height, src.bounds
        acquired = _acquired(src.tags())
    left, bottom, right, top = bounds
    ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
    footprint = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}, precision=7)
    bbox = list(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))
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
        if name not in ASSETS:
            continue
        media, roles, title = ASSETS[name]
        asset = pystac.Asset(href=f"./{name}", media_type=media, roles=roles, title=title)
        item.add_asset(name.split(".")[0], asset)
        if name == "classes.tif":
            ClassificationExtension.ext(asset, add_if_missing=True).classes = classes
    item.add_link(
        pystac.Link(
            "derived_from", Path(scene).resolve().as_uri(), media_type=pystac.MediaType.GEOTIFF, title="input scene"
        )
    )
    return item


def finish_scene_folder(folder: Path, item_id: str, scene: str | Path, card: ModelCard, record: RunRecord) -> None:
    """Add ``quicklook.png`` and ``item.json`` to a (still temporary) output folder and list them in ``record``.

    A quicklook that cannot be drawn is a warning, not a lost scene.
    """
    from geounet.io.quicklook import write_quicklook

    folder = Path(folder)
    outputs = record.outputs
    classes_tif = folder / "classes.tif"
    try:
        rows, cols = write_quicklook(scene, classes_tif, card, folder / "quicklook.png")
        outputs["quicklook.png"] = {"width": cols, "height": rows}
    except Exception as exc:  # noqa: BLE001  (a picture must never cost the scene)
        log.warning("%s: no quicklook.png (%s)", scene, exc)
    files = [f for f in ASSETS if f == "run.json" or (folder / f).exists()]
    item = build_item(item_id, scene, card, record, files)
    tmp = folder / f".item.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2))
    os.replace(tmp, folder / "item.json")
    outputs["item.json"] = {"stac_version": pystac.get_stac_version(), "assets": sorted(item.assets)}
