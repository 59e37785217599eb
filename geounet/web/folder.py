"""The ``web/`` folder of one output folder: ``geounet predict`` scenes and ``geounet damage`` runs.

Each function writes ``<folder>/web/`` from the outputs already in ``folder`` (the staging
folder, before it is renamed into place): raster tiles of the scene and the classes
(``raster_tiles``), PMTiles of the polygons (``vector_tiles``) and ``index.html``
(``page``), whose panel shows the run's facts from its run.json record.
"""

from __future__ import annotations

import logging
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geounet import __version__
from geounet.compute.change import GRADE_COLOURS, GRADES, NOT_ASSESSED
from geounet.io.quicklook import display_bands
from geounet.io.remote import gdal_path
from geounet.models.card import ModelCard
from geounet.web.page import INDEX, write_page
from geounet.web.raster_tiles import Pyramid, RasterLayer, data_bounds, folder_bytes, write_pyramid, zoom_range
from geounet.web.vector_tiles import VectorTiles, vector_zooms, write_vector_tiles

log = logging.getLogger("geounet")

WEB = "web"
BACKGROUND = "#f0f0ec"  # the map's background, where no tile draws
FALLBACK_COLOUR = "#808080"  # features whose class or grade has no colour
CLASS_OPACITY = 0.5  # the classes raster over the scene
FILL_OPACITY = 0.45  # polygon fills (outlines are opaque)
VECTOR_SUFFIXES = (".fgb", ".parquet")  # features.<layer>.<format> (geounet predict --vector-format)


@dataclass(frozen=True)
class WebSummary:
    """What a ``web/`` folder holds: its page, bytes in all, raster tiles and vector features written."""

    index: Path
    bytes: int
    tiles: int
    features: int


def hex_colour(rgb: tuple[int, int, int] | list[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def write_scene_web(
    folder: Path, scene: str | Path, card: ModelCard, record: dict[str, Any], title: str | None = None
) -> WebSummary:
    """``folder/web/``: the scene, ``classes.tif`` and the features (``features.gpkg`` or per-layer files).

    ``record``: the scene's run.json record (``RunRecord.to_dict()``) for the page's facts;
    ``title``: the output folder's name (default: ``folder``'s, which a staging folder's is not).
    """
    web = _fresh(folder / WEB)
    zooms = zoom_range(str(folder / "classes.tif"))
    palette = tuple(None if c.kind == "background" else tuple(c.color) for c in card.classes)
    layers = [
        RasterLayer("scene", "Scene", gdal_path(scene), _scene_bands(card)),
        RasterLayer("classes", "Classes (raster)", str(folder / "classes.tif"), (1,), palette),  # type: ignore[arg-type]
    ]
    # only where the run has data: an --aoi run or a sparse mosaic does not tile its whole scene
    pyramids = _pyramids(layers, web, zooms, data_bounds(str(folder / "classes.tif")))
    colours = {c.name: hex_colour(c.color) for c in card.classes if c.kind != "background"}
    vectors = []
    colour_fields: list[str | None] = []
    for source, source_layer, layer in _feature_layers(folder):
        field = _class_field(source, source_layer)  # landcover: class_name (class is the index); centre lines: none
        out = web / f"{layer}.pmtiles"
        vectors.append(write_vector_tiles(source, source_layer, out, vector_zooms(zooms), layer, count_by=field))
        colour_fields.append(field)
    counts: dict[str, int] = {}
    for v in vectors:
        for k, n in v.counts.items():
            counts[k] = counts.get(k, 0) + n
    model = record["model"]
    variant = Path(model["path"]).stem
    inp = record["input"]
    facts = [
        ["scene", Path(str(inp["path"])).name],
        ["model", model["name"] + (f" (variant {variant})" if model.get("requested") else "")],
        ["created", record["created_utc"].replace("T", " ").replace("+00:00", " UTC")],
        ["grid", f"{inp['width']} x {inp['height']} px, {inp['ground_resolution_m']:.3g} m/px, {inp['crs']}"],
        ["features", ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) if vectors else "not written"],
        ["geounet", str(record.get("geounet_version", __version__))],
    ]
    legend = [
        {"label": c.name, "color": hex_colour(c.color), "count": counts.get(c.name) if vectors else None}
        for c in card.classes
        if c.kind != "background"
    ]
    config = _config(title or folder.name, facts, "Classes", legend, pyramids, layers, vectors, colours, "class", zooms)
    roads = [hex_colour(c.color) for c in card.classes if c.kind == "road"]
    for v, field in zip(config["vectors"], colour_fields):
        v["color_by"] = field
        if field is None and roads:  # road centre lines: the road class's colour
            v["fallback_color"] = roads[0]
    return _summary(web, write_page(web, config, __version__), pyramids, vectors)


def _class_field(source: Path, layer: str | None) -> str | None:
    """The attribute holding a feature's class name: ``class_name`` (landcover), ``class``, or None (none)."""
    if source.suffix == ".parquet":
        import pyarrow.parquet as pq

        names = set(pq.ParquetFile(source).schema_arrow.names)
    else:
        import pyogrio  # here, not at import: it imports geopandas, which a command's start need not pay for

        names = {str(f) for f in pyogrio.read_info(source, layer=layer)["fields"]}
    return "class_name" if "class_name" in names else "class" if "class" in names else None


def write_damage_web(
    folder: Path, pre: str | Path, post: str | Path, record: dict[str, Any], title: str | None = None
) -> WebSummary:
    """``folder/web/`` of a damage run: the pre and post scenes and ``damage.gpkg``'s buildings by grade.

    ``pre``/``post``: the two mosaics (``pre.vrt``, ``post.vrt``, shown with bands 1-3 as
    RGB); ``record``: the run's run.json record (``DamageRecord.to_dict()``); ``title``: the
    output folder's name (default: ``folder``'s).
    """
    web = _fresh(folder / WEB)
    zooms = zoom_range(str(pre))
    layers = [
        RasterLayer("pre", "Pre-event scene", str(pre), _rgb_bands(pre), visible=False),
        RasterLayer("post", "Post-event scene", str(post), _rgb_bands(post)),
    ]
    change = folder / "change.tif"  # nodata outside the overlap of pre and post: tile that only
    pyramids = _pyramids(layers, web, zooms, data_bounds(str(change)) if change.is_file() else None)
    grades = (*GRADES, NOT_ASSESSED)
    colours = {g: hex_colour(GRADE_COLOURS[g]) for g in grades}
    tiles = write_vector_tiles(
        folder / "damage.gpkg", "buildings", web / "buildings.pmtiles", vector_zooms(zooms), "buildings", "damage"
    )
    per_grade = record.get("buildings", {}).get("per_grade", {})
    inputs = record.get("inputs", {})
    facts = [
        ["pre", ", ".join(Path(p["path"]).name for p in inputs.get("pre", []))],
        ["post", ", ".join(Path(p["path"]).name for p in inputs.get("post", []))],
        ["model", str(record.get("model", {}).get("name", "?"))],
        ["created", str(record.get("created_utc", "")).replace("T", " ").replace("+00:00", " UTC")],
        ["buildings", str(record.get("buildings", {}).get("total", tiles.features))],
        ["geounet", str(record.get("geounet_version", __version__))],
    ]
    legend = [{"label": g, "color": colours[g], "count": per_grade.get(g, tiles.counts.get(g, 0))} for g in grades]
    config = _config(
        "damage: " + (title or folder.name),
        facts,
        "Damage grade",
        legend,
        pyramids,
        layers,
        [tiles],
        colours,
        "damage",
        zooms,
    )
    weight = float(record.get("settings", {}).get("prob_weight", 1.0))
    config["vectors"][0]["damage_driver"] = {"prob_weight": weight}
    return _summary(web, write_page(web, config, __version__), pyramids, [tiles])


def _scene_bands(card: ModelCard) -> tuple[int, ...]:
    """Scene bands shown as red, green, blue: the card's red/green/blue, Sentinel-2's B04/B03/B02, else as the quicklook."""
    names = [n.lower() for n in card.band_names]
    for rgb in (("red", "green", "blue"), ("b04", "b03", "b02"), ("b4", "b3", "b2")):
        if all(c in names for c in rgb):
            return tuple(card.bands[names.index(c)] for c in rgb)
    return tuple(display_bands(card))


def _fresh(web: Path) -> Path:
    if web.exists():
        shutil.rmtree(web)
    web.mkdir(parents=True)
    return web


def _rgb_bands(path: str | Path) -> tuple[int, ...]:
    """Bands 1, 2, 3 as red, green, blue; a one- or two-band raster's first band as grey."""
    import rasterio

    with rasterio.open(path) as src:
        return (1, 2, 3) if src.count >= 3 else (1, 1, 1)


def _pyramids(
    layers: list[RasterLayer], web: Path, zooms: tuple[int, int], clip: tuple[float, float, float, float] | None = None
) -> list[Pyramid | None]:
    """Each layer's pyramid under ``web/tiles/``, side by side in threads (GDAL's warps and the image
    encoders release the GIL; docs/web.md has the measurement); None (said in the log) for a scene
    that cannot be read now."""

    def one(layer: RasterLayer) -> Pyramid | None:
        try:
            return write_pyramid(layer, web / "tiles", zooms, clip)
        except Exception as exc:  # noqa: BLE001 - the map goes without that layer, as the log says
            if layer.palette is not None:
                raise
            log.warning("%s: not in the web map: %s", layer.path, str(exc).splitlines()[0] if str(exc) else exc)
            shutil.rmtree(web / "tiles" / layer.id, ignore_errors=True)
            return None

    with ThreadPoolExecutor(min(len(layers), 2), thread_name_prefix="geounet-web") as pool:
        return list(pool.map(one, layers))


def _feature_layers(folder: Path) -> list[tuple[Path, str | None, str]]:
    """(file, its layer or None for its only one, layer name) of each feature layer of a predict folder:
    ``features.gpkg``'s layers, or the ``features.<layer>.<fmt>`` files."""
    gpkg = folder / "features.gpkg"
    found: list[tuple[Path, str | None, str]] = []
    if gpkg.is_file():
        import pyogrio

        found += [(gpkg, str(name), str(name)) for name, geom in pyogrio.list_layers(gpkg) if geom is not None]
    for f in sorted(folder.glob("features.*")):
        if f.suffix in VECTOR_SUFFIXES and f.name.count(".") == 2:
            found.append((f, None, f.name.split(".")[1]))
    return found


def _config(
    title: str,
    facts: list[list[str]],
    legend_title: str,
    legend: list[dict[str, Any]],
    pyramids: list[Pyramid | None],
    layers: list[RasterLayer],
    vectors: list[VectorTiles],
    colours: dict[str, str],
    colour_by: str | None,
    zooms: tuple[int, int],
) -> dict[str, Any]:
    """The settings ``static/app.js`` draws the map from (``window.GEOUNET_MAP``)."""
    shown = [p for p in pyramids if p is not None]
    bounds = shown[0].bounds if shown else None
    rasters = [
        {
            "id": p.id,
            "label": layer.label,
            "tiles": f"tiles/{p.id}/{{z}}/{{x}}/{{y}}.{layer.ext}",
            "minzoom": p.minzoom,
            "maxzoom": p.maxzoom,
            "bounds": list(p.bounds),
            "visible": layer.visible,
            "classes": layer.palette is not None,
            "opacity": CLASS_OPACITY if layer.palette is not None else 1.0,
        }
        for p, layer in zip(pyramids, layers)
        if p is not None
    ]
    return {
        "title": title,
        "folder_hint": title.split(": ")[-1],
        "facts": facts,
        "legend_title": legend_title,
        "legend": legend,
        "background": BACKGROUND,
        "bounds": list(bounds) if bounds and all(math.isfinite(b) for b in bounds) else [-180, -85, 180, 85],
        "zooms": list(zooms),
        "rasters": rasters,
        "vectors": [
            {
                "id": f"features-{v.layer}",
                "label": f"{v.layer} ({v.features})",
                "file": v.file,
                "layer": v.layer,
                "fields": v.fields,
                "color_by": colour_by,
                "colors": colours,
                "fallback_color": FALLBACK_COLOUR,
                "opacity": FILL_OPACITY,
                "visible": True,
            }
            for v in vectors
        ],
    }


def _summary(web: Path, index: Path, pyramids: list[Pyramid | None], vectors: list[VectorTiles]) -> WebSummary:
    assert index.name == INDEX
    tiles = sum(p.tiles for p in pyramids if p is not None)
    return WebSummary(index, folder_bytes(web), tiles, sum(v.features for v in vectors))
