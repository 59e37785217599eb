"""Vectorizing a scene's class raster into ``features.gpkg``, block by block on Dask.

Each task reads one window of ``classes.tif`` (and of ``scores.tif``) and returns its
polygons (``vectorize.polygonize_block``) or road centre-line pieces
(``centerlines.centerlines_block``, read with a halo). Polygons wholly inside their
block are final: they are cleaned (``postprocess``) and appended to the GeoPackage as
results arrive. Pieces that touch a block edge wait, and are joined at the end
(``vectorize.merge_across_blocks``). Layers follow the model's class kinds:
``buildings``, ``roads`` + ``road_centerlines``, ``landcover``; each carries the
scene's CRS, metric attributes, and a QGIS style in the ``layer_styles`` table.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import quoteattr

import geopandas as gpd
import pandas as pd
import numpy as np
import pyogrio
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.windows import Window

from geounet.compute.centerlines import centerlines_block, merge_centerlines
from geounet.errors import InputError
from geounet.models.card import ModelCard
from geounet.compute.postprocess import DEFAULT_RULES, ClassRules, clean_geometries, clean_polygons, metric_crs, repair_polygons
from geounet.io.scene import ground_pixel_size, ground_resolution
from geounet.compute.vectorize import Pieces, apply_affine, merge_across_blocks, polygonize_block, split_touching

log = logging.getLogger("geounet")

LAYER_FOR_KIND = {"building": "buildings", "road": "roads", "landcover": "landcover"}
NODATA = 255


@dataclass(frozen=True)
class BlockJob:
    index: tuple[int, int]
    window: tuple[int, int, int, int]  # row0, col0, row1, col1 (block core)
    inner_edges: tuple[bool, bool, bool, bool]


def block_jobs(height: int, width: int, block: int) -> list[BlockJob]:
    jobs = []
    for r in range(0, height, block):
        for c in range(0, width, block):
            r1, c1 = min(r + block, height), min(c + block, width)
            jobs.append(BlockJob((r // block, c // block), (r, c, r1, c1), (r > 0, r1 < height, c > 0, c1 < width)))
    return jobs


@dataclass(frozen=True)
class LayerContext:
    """What turning pixel pieces into finished layer rows needs (small; travels to tasks)."""

    card: ModelCard
    crs_wkt: str
    transform: tuple[float, ...]
    metric_wkt: str
    rules: dict[str, ClassRules]
    pixel_size_m: tuple[float, float] = (1.0, 1.0)  # ground size of a pixel step in x and y


def polygonize_task(
    classes_path: str, scores_path: str | None, job: BlockJob, class_ids: list[int], ctx: LayerContext
) -> tuple[dict[str, gpd.GeoDataFrame], Pieces]:
    """Dask task: one block's finished polygons (cleaned, by layer) and its raw seam pieces."""
    r0, c0, r1, c1 = job.window
    win = Window(c0, r0, c1 - c0, r1 - r0)
    with rasterio.open(classes_path) as src:
        classes = src.read(1, window=win)
    n = len(ctx.card.classes)
    unknown = np.unique(classes[(classes >= n) & (classes != NODATA)])
    if unknown.size:
        raise InputError(classes_path, f"class index {int(unknown[0])} is not one of the model's {n} classes "
                                       f"({', '.join(ctx.card.class_names)})")
    scores = None
    if scores_path is not None:
        with rasterio.open(scores_path) as s:
            all_scores = s.read(window=win)
        idx = np.where(classes == NODATA, 0, classes).astype(np.intp)
        if idx.max(initial=0) < all_scores.shape[0]:
            scores = np.take_along_axis(all_scores, idx[None], axis=0)[0]
    pieces = polygonize_block(classes, (r0, c0), class_ids, scores, job.inner_edges)
    return pieces_to_layers(pieces.take(~pieces.on_edge), ctx), pieces.take(pieces.on_edge)


def pieces_to_layers(pieces: Pieces, ctx: LayerContext) -> dict[str, gpd.GeoDataFrame]:
    """Complete polygons (pixel coordinates) -> cleaned rows per layer, in the scene's CRS.

    Pixel coordinates go to the local equal-area CRS in one pass (affine, then pyproj),
    are cleaned there and measured in metres, and are projected back to the scene's CRS.
    """
    to_metric = _transformer(ctx.crs_wkt, ctx.metric_wkt)
    from_metric = _transformer(ctx.metric_wkt, ctx.crs_wkt)
    layers = {}
    for kind, layer in LAYER_FOR_KIND.items():
        ids = [i for i, c in enumerate(ctx.card.classes) if c.kind == kind]
        sel = np.isin(pieces.class_id, ids)
        if not sel.any():
            continue
        rules = ctx.rules[kind]
        p = split_touching(pieces.take(sel), ctx.pixel_size_m, rules.split_m)
        score = np.round(p.score_sum / np.maximum(p.pixels, 1) / 254.0, 4)
        metric_geoms = _reproject(p.geometry, to_metric, Affine(*ctx.transform))
        if rules.regularize:  # buildingregulariser works on GeoDataFrames; rows carry their attributes
            gdf = gpd.GeoDataFrame({"class_id": p.class_id, "score": score}, geometry=metric_geoms)
            gdf = clean_polygons(gdf, rules)
            class_id, score, geoms_m = gdf.class_id.to_numpy(), gdf.score.to_numpy(), np.asarray(gdf.geometry.values)
        else:
            geoms_m, keep = clean_geometries(metric_geoms, rules)
            class_id, score = p.class_id[keep], score[keep]
        if not len(geoms_m):
            continue
        data = {
            "class_id": class_id,
            "class_name": np.array(ctx.card.class_names, dtype=object)[class_id],
            "score": score,
            "area_m2": np.round(shapely.area(geoms_m), 3),
            "perimeter_m": np.round(shapely.length(geoms_m), 3),
        }
        geoms = repair_polygons(_reproject(geoms_m, from_metric))  # repair anything reprojection broke
        gdf = gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=ctx.crs_wkt))
        if layer == "landcover":
            layers[layer] = gdf.rename(columns={"class_id": "class"})[["class", "class_name", "area_m2", "score", "geometry"]]
        else:
            layers[layer] = gdf.rename(columns={"class_name": "class"})[["class", "score", "area_m2", "perimeter_m", "geometry"]]
    return layers


@lru_cache(maxsize=16)
def _transformer(src_wkt: str, dst_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(src_wkt), CRS.from_wkt(dst_wkt), always_xy=True)


def _reproject(geoms: np.ndarray, transformer: Transformer, pixel_to_crs: Affine | None = None) -> np.ndarray:
    """Reproject geometries' coordinates (first through ``pixel_to_crs`` when given)."""

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        if pixel_to_crs is not None:
            a, b, c, d, e, f = pixel_to_crs[:6]
            x, y = a * x + b * y + c, d * x + e * y + f
        return np.column_stack(transformer.transform(x, y))

    return shapely.transform(np.asarray(geoms, dtype=object), project)


def centerline_task(classes_path: str, job: BlockJob, road_ids: list[int], halo: int, spur_px: float) -> list:
    """Dask task: road centre-line pieces (whole-raster pixel coordinates) of one block."""
    r0, c0, r1, c1 = job.window
    with rasterio.open(classes_path) as src:
        R0, C0 = max(0, r0 - halo), max(0, c0 - halo)
        R1, C1 = min(src.height, r1 + halo), min(src.width, c1 + halo)
        classes = src.read(1, window=Window(C0, R0, C1 - C0, R1 - R0))
    return centerlines_block(np.isin(classes, road_ids), (R0, C0), job.window, spur_px)


def vectorize_scene(
    classes_path: Path,
    scores_path: Path | None,
    gpkg_path: Path,
    card: ModelCard,
    client,
    rules: dict[str, ClassRules] | None = None,
    block: int = 1024,
) -> dict:
    """Write ``gpkg_path`` from a class raster; returns counts per layer and the rules used."""
    from distributed import as_completed

    from geounet.engine.predict import cluster_threads

    rules = {**DEFAULT_RULES, **(rules or {})}
    with rasterio.open(classes_path) as src:
        crs, transform, height, width, bounds = src.crs, src.transform, src.height, src.width, src.bounds
    res_m = ground_resolution(crs, transform, width, height)
    metric = metric_crs(crs, tuple(bounds))
    kinds = {k: [i for i, c in enumerate(card.classes) if c.kind == k] for k in LAYER_FOR_KIND}
    poly_ids = [i for k in LAYER_FOR_KIND for i in kinds[k]]
    jobs = block_jobs(height, width, block)
    ctx = LayerContext(card, crs.to_wkt(), tuple(transform)[:6], metric.to_wkt(), rules,
                       ground_pixel_size(crs, transform, width, height))
    writer = _LayerWriter(gpkg_path, crs, metric, card)
    for kind, ids in kinds.items():
        if ids:
            writer.create(LAYER_FOR_KIND[kind], kind)
    if kinds["road"]:
        writer.create("road_centerlines", "road_centerline")

    edge_pieces: list[Pieces] = []
    queue = iter(jobs)
    submit = lambda j: client.submit(  # noqa: E731
        polygonize_task, str(classes_path), str(scores_path) if scores_path else None, j, poly_ids, ctx,
        pure=False, retries=2,
    )
    in_flight = max(4, 2 * cluster_threads(client, 1))  # bounded: memory follows the block size, not the raster
    futures = as_completed([submit(j) for _, j in zip(range(in_flight), queue)])
    for fut in futures:
        layers, seam = fut.result()
        fut.release()
        edge_pieces.append(seam)
        writer.write(layers)
        nxt = next(queue, None)
        if nxt is not None:
            futures.add(submit(nxt))
    # Pieces that touched a block edge, joined, then cleaned as tasks too (regularising
    # buildings is the costly part), in groups, one per worker thread.
    merged = merge_across_blocks(Pieces.concat(edge_pieces))
    groups = np.array_split(np.arange(len(merged)), max(1, min(cluster_threads(client, 1), len(merged) // 50)))
    seam_futures = [client.submit(pieces_to_layers, merged.take(g), ctx, pure=False, retries=2) for g in groups]
    for fut in seam_futures:
        writer.write(fut.result())
        fut.release()
    writer.flush()

    if kinds["road"]:
        r = rules["road"]
        spur_px = r.spur_m / res_m
        halo = int(max(64, 2 * spur_px))
        line_futs = [client.submit(centerline_task, str(classes_path), j, kinds["road"], halo, spur_px, pure=False)
                     for j in jobs]
        pieces = [line for f in line_futs for line in f.result()]
        lines = merge_centerlines(pieces, r.min_length_m / res_m)
        writer.add_centerlines(list(apply_affine(lines, transform)))
    return {"layers": writer.counts, "rules": {k: v.to_dict() for k, v in rules.items()},
            "block_pixels": block, "metric_crs": metric.srs}


class _LayerWriter:
    """Creates the GeoPackage's layers (with styles) and appends finished rows to them."""

    FLUSH_ROWS = 20_000  # rows buffered per layer between writes: few transactions, bounded memory

    def __init__(self, path: Path, crs, metric, card: ModelCard) -> None:
        self.path, self.crs, self.metric, self.card = path, crs, metric, card
        self.counts: dict[str, int] = {}
        self.pending: dict[str, list[gpd.GeoDataFrame]] = {}

    def create(self, layer: str, kind: str) -> None:
        columns = {
            "buildings": {"class": "str", "score": float, "area_m2": float, "perimeter_m": float},
            "roads": {"class": "str", "score": float, "area_m2": float, "perimeter_m": float},
            "landcover": {"class": int, "class_name": "str", "area_m2": float, "score": float},
            "road_centerlines": {"length_m": float},
        }[layer]
        empty = gpd.GeoDataFrame({k: np.array([], dtype=object if v == "str" else v) for k, v in columns.items()},
                                 geometry=gpd.GeoSeries([], crs=self.crs))
        geom_type = "MultiLineString" if layer == "road_centerlines" else "MultiPolygon"
        pyogrio.write_dataframe(empty, self.path, layer=layer, driver="GPKG", geometry_type=geom_type)
        self.counts[layer] = 0
        _write_style(self.path, layer, self.card, kind)

    def write(self, layers: dict[str, gpd.GeoDataFrame]) -> None:
        for layer, gdf in layers.items():
            if len(gdf):
                self.pending.setdefault(layer, []).append(gdf)
                if sum(len(g) for g in self.pending[layer]) >= self.FLUSH_ROWS:
                    self.flush(layer)

    def flush(self, layer: str | None = None) -> None:
        for name in [layer] if layer else list(self.pending):
            parts = self.pending.pop(name, [])
            if parts:
                gdf = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
                pyogrio.write_dataframe(gdf, self.path, layer=name, driver="GPKG", append=True, promote_to_multi=True)
                self.counts[name] += len(gdf)

    def add_centerlines(self, lines: list) -> None:
        if not lines:
            return
        gdf = gpd.GeoDataFrame(geometry=gpd.GeoSeries(lines, crs=self.crs))
        length = gdf.to_crs(self.metric).length.round(3).to_numpy()
        gdf = gdf.assign(length_m=length)[["length_m", "geometry"]]
        pyogrio.write_dataframe(gdf, self.path, layer="road_centerlines", driver="GPKG", append=True, promote_to_multi=True)
        self.counts["road_centerlines"] += len(gdf)


def _qml(card: ModelCard, kind: str) -> str:
    """A QGIS categorized style on ``class`` with the model's colours."""
    line = kind == "road_centerline"
    classes = [c for c in card.classes if c.kind == ("road" if line else kind)]
    cats, syms = [], []
    for n, (i, c) in enumerate((card.class_names.index(c.name), c) for c in classes):
        value = str(i) if kind == "landcover" else c.name
        rgb = ",".join(map(str, c.color))
        cats.append(f'<category value={quoteattr(value)} symbol="{n}" label={quoteattr(c.name)} render="true"/>')
        if line:
            layer = (f'<layer class="SimpleLine" enabled="1" pass="0" locked="0"><Option type="Map">'
                     f'<Option name="line_color" type="QString" value="{rgb},255"/>'
                     f'<Option name="line_width" type="QString" value="0.8"/></Option></layer>')
            syms.append(f'<symbol type="line" name="{n}" alpha="1" clip_to_extent="1" force_rhr="0">{layer}</symbol>')
        else:
            layer = (f'<layer class="SimpleFill" enabled="1" pass="0" locked="0"><Option type="Map">'
                     f'<Option name="color" type="QString" value="{rgb},150"/>'
                     f'<Option name="outline_color" type="QString" value="{rgb},255"/>'
                     f'<Option name="outline_width" type="QString" value="0.3"/>'
                     f'<Option name="style" type="QString" value="solid"/></Option></layer>')
            syms.append(f'<symbol type="fill" name="{n}" alpha="1" clip_to_extent="1" force_rhr="0">{layer}</symbol>')
    if line:  # one colour for all centre lines
        cats = ['<category value="" symbol="0" label="centre line" render="true"/>']
        syms = syms[:1]
        renderer = f'<renderer-v2 type="singleSymbol" enableorderby="0" symbollevels="0" forceraster="0"><symbols>{"".join(syms)}</symbols></renderer-v2>'
    else:
        renderer = (f'<renderer-v2 type="categorizedSymbol" attr="class" enableorderby="0" symbollevels="0" forceraster="0">'
                    f'<categories>{"".join(cats)}</categories><symbols>{"".join(syms)}</symbols></renderer-v2>')
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            f'<qgis version="3.28.0" styleCategories="Symbology">{renderer}</qgis>')


def _write_style(gpkg: Path, layer: str, card: ModelCard, kind: str) -> None:
    """Add the layer's default QGIS style to the ``layer_styles`` table (as QGIS itself does)."""
    with sqlite3.connect(gpkg) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS layer_styles (id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), "
            "f_table_schema TEXT(256), f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), "
            "styleQML TEXT, styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30), "
            "update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
        )
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description, last_change) "
            "VALUES ('layer_styles', 'attributes', 'layer_styles', 'QGIS layer styles', strftime('%Y-%m-%dT%H:%M:%fZ','now'))"
        )
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
            "styleQML, styleSLD, useAsDefault, description, owner, ui) VALUES ('', '', ?, 'geom', ?, ?, '', 1, ?, '', '')",
            (layer, f"geounet {layer}", _qml(card, kind), f"geounet {card.name}: classes in model colours"),
        )
