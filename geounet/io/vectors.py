"""GeoPackage output: layers created with their QGIS default style, rows appended in bounded batches.

QGIS reads a layer's default style from the ``layer_styles`` table of its GeoPackage,
as QGIS itself writes it: :func:`write_layer_style` adds one, and :func:`categorized_qml`
builds a categorized style (one colour per attribute value, fill or line symbols).
:func:`export_layers` copies the GeoPackage's layers to FlatGeobuf files, one per layer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio

from geounet.models.card import ModelCard

FILE_FORMATS = {  # format -> (OGR driver, or "geoparquet": written by geopandas/pyarrow; media type)
    "fgb": ("FlatGeobuf", "application/vnd.flatgeobuf"),
    "parquet": ("geoparquet", "application/vnd.apache.parquet"),
}


def layer_file_name(stem: str, layer: str, fmt: str) -> str:
    """The file of one layer in a one-file-per-layer format: ``features.buildings.fgb``."""
    return f"{stem}.{layer}.{fmt}"


def export_layers(gpkg: Path, fmt: str) -> dict[str, dict[str, int]]:
    """Copy each layer of ``gpkg`` to ``<stem>.<layer>.<fmt>`` beside it (same rows, attributes and CRS).

    Returns ``{file name: {layer: rows}}``. A layer is read whole (FlatGeobuf is written
    once, with its spatial index; GeoParquet 1.1 with a ``bbox`` covering column); empty
    layers give files with the schema and no rows.
    The GeoPackage itself is left in place: the caller removes it.
    """
    driver = FILE_FORMATS[fmt][0]
    files = {}
    for layer, geom_type in pyogrio.list_layers(gpkg):
        if geom_type is None:  # the layer_styles table (QGIS styles: a GeoPackage feature)
            continue
        gdf = pyogrio.read_dataframe(gpkg, layer=layer)
        name = layer_file_name(gpkg.stem, str(layer), fmt)
        if driver == "geoparquet":  # GeoParquet 1.1 with a bbox covering column (row-group filtering by area)
            gdf.to_parquet(gpkg.parent / name, write_covering_bbox=True, schema_version="1.1.0")
            files[name] = {str(layer): len(gdf)}
            continue
        pyogrio.write_dataframe(
            gdf,
            gpkg.parent / name,
            driver=driver,
            geometry_type=geom_type,
            promote_to_multi=True,
            layer_options={"SPATIAL_INDEX": "YES"},
        )
        files[name] = {str(layer): len(gdf)}
    return files


class LayerWriter:
    """Creates the GeoPackage's layers (with styles) and appends finished rows to them."""

    FLUSH_ROWS = 20_000  # rows buffered per layer between writes: few transactions, bounded memory

    def __init__(self, path: Path, crs: Any, metric: Any, card: ModelCard) -> None:
        """``crs``: the layers' CRS; ``metric``: an equal-area CRS in metres for lengths."""
        self.path, self.crs, self.metric, self.card = path, crs, metric, card
        self.counts: dict[str, int] = {}
        self.pending: dict[str, list[gpd.GeoDataFrame]] = {}

    def create(self, layer: str, kind: str) -> None:
        schemas: dict[str, dict[str, Any]] = {
            "buildings": {"class": "str", "score": float, "area_m2": float, "perimeter_m": float},
            "roads": {"class": "str", "score": float, "area_m2": float, "perimeter_m": float},
            "landcover": {"class": int, "class_name": "str", "area_m2": float, "score": float},
            "road_centerlines": {"length_m": float},
        }
        columns = schemas[layer]
        empty = gpd.GeoDataFrame(
            {k: np.array([], dtype=object if v == "str" else v) for k, v in columns.items()},
            geometry=gpd.GeoSeries([], crs=self.crs),
        )
        geom_type = "MultiLineString" if layer == "road_centerlines" else "MultiPolygon"
        pyogrio.write_dataframe(empty, self.path, layer=layer, driver="GPKG", geometry_type=geom_type)
        self.counts[layer] = 0
        write_layer_style(
            self.path, layer, class_style_qml(self.card, kind), f"geounet {self.card.name}: classes in model colours"
        )

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

    def add_centerlines(self, lines: list[Any]) -> None:
        if not lines:
            return
        gdf = gpd.GeoDataFrame(geometry=gpd.GeoSeries(lines, crs=self.crs))
        length = gdf.to_crs(self.metric).length.round(3).to_numpy()
        gdf = gdf.assign(length_m=length)[["length_m", "geometry"]]
        pyogrio.write_dataframe(
            gdf, self.path, layer="road_centerlines", driver="GPKG", append=True, promote_to_multi=True
        )
        self.counts["road_centerlines"] += len(gdf)


def _symbol(n: int, rgb: tuple[int, int, int], geometry: Literal["fill", "line"]) -> str:
    colour = ",".join(map(str, rgb))
    if geometry == "line":
        layer = (
            f'<layer class="SimpleLine" enabled="1" pass="0" locked="0"><Option type="Map">'
            f'<Option name="line_color" type="QString" value="{colour},255"/>'
            f'<Option name="line_width" type="QString" value="0.8"/></Option></layer>'
        )
        return f'<symbol type="line" name="{n}" alpha="1" clip_to_extent="1" force_rhr="0">{layer}</symbol>'
    layer = (
        f'<layer class="SimpleFill" enabled="1" pass="0" locked="0"><Option type="Map">'
        f'<Option name="color" type="QString" value="{colour},150"/>'
        f'<Option name="outline_color" type="QString" value="{colour},255"/>'
        f'<Option name="outline_width" type="QString" value="0.3"/>'
        f'<Option name="style" type="QString" value="solid"/></Option></layer>'
    )
    return f'<symbol type="fill" name="{n}" alpha="1" clip_to_extent="1" force_rhr="0">{layer}</symbol>'


def _qgis(renderer: str) -> str:
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        f'<qgis version="3.28.0" styleCategories="Symbology">{renderer}</qgis>'
    )


def categorized_qml(
    attr: str, categories: Sequence[tuple[str, str, tuple[int, int, int]]], geometry: Literal["fill", "line"] = "fill"
) -> str:
    """A QGIS style: features coloured by ``attr``; ``categories`` are (value, label, RGB)."""
    cats = [
        f'<category value={quoteattr(value)} symbol="{n}" label={quoteattr(label)} render="true"/>'
        for n, (value, label, _) in enumerate(categories)
    ]
    syms = [_symbol(n, rgb, geometry) for n, (_, _, rgb) in enumerate(categories)]
    return _qgis(
        f'<renderer-v2 type="categorizedSymbol" attr="{attr}" enableorderby="0" symbollevels="0" '
        f'forceraster="0"><categories>{"".join(cats)}</categories><symbols>{"".join(syms)}</symbols>'
        "</renderer-v2>"
    )


def single_line_qml(rgb: tuple[int, int, int]) -> str:
    """A QGIS style: every line in one colour."""
    return _qgis(
        '<renderer-v2 type="singleSymbol" enableorderby="0" symbollevels="0" forceraster="0"><symbols>'
        f"{_symbol(0, rgb, 'line')}</symbols></renderer-v2>"
    )


def class_style_qml(card: ModelCard, kind: str) -> str:
    """The style of a geounet layer of ``kind``: the model's class colours on ``class``.

    ``landcover`` layers hold class indexes, the others class names; ``road_centerline``
    lines take the first road class's colour.
    """
    if kind == "road_centerline":
        road = next(c for c in card.classes if c.kind == "road")
        return single_line_qml(road.color)
    return categorized_qml(
        "class",
        [
            (str(card.class_names.index(c.name)) if kind == "landcover" else c.name, c.name, c.color)
            for c in card.classes
            if c.kind == kind
        ],
    )


def write_layer_style(gpkg: Path, layer: str, qml: str, description: str) -> None:
    """Add ``layer``'s default QGIS style to the ``layer_styles`` table (as QGIS itself does)."""
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
            (layer, f"geounet {layer}", qml, description),
        )
