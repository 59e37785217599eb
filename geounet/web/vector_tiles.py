"""Vector tiles: one layer of a GeoPackage, FlatGeobuf or GeoParquet file -> a PMTiles archive (GDAL's driver).

Features stream through Arrow record batches into GDAL's PMTiles (MVT) writer, which
reprojects them to EPSG:3857, keeps every attribute, simplifies per zoom and stages the
features in a temporary SQLite file beside the output: memory holds one batch, whatever
the layer's size. Zooms are XYZ levels (``geounet.web.mercator``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

BATCH = 10_000  # features per Arrow batch
MAX_VECTOR_ZOOM = 17  # vector tiles stop here (4096 units a tile: about 7 cm at the equator); the map overzooms them
MIN_VECTOR_ZOOMS = 6  # at most this many vector zooms below the finest one; the raster classes show the rest


@dataclass
class VectorTiles:
    """What was written: the PMTiles file, its layer, zooms, features and the count per value of ``count_by``."""

    file: str
    layer: str
    minzoom: int
    maxzoom: int
    features: int
    counts: dict[str, int] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)


def vector_zooms(raster_zooms: tuple[int, int]) -> tuple[int, int]:
    """The vector tiles' (min, max) zoom for a map whose rasters span ``raster_zooms``."""
    zmax = min(raster_zooms[1], MAX_VECTOR_ZOOM)
    zmin = min(zmax, max(raster_zooms[0], zmax - MIN_VECTOR_ZOOMS))
    return zmin, zmax


def write_vector_tiles(
    source: Path, layer: str | None, out: Path, zooms: tuple[int, int], name: str, count_by: str | None = None
) -> VectorTiles:
    """``out`` (a ``.pmtiles`` file) with layer ``name``: the features of ``source``'s ``layer``, zooms ``zooms``.

    ``count_by``: an attribute whose values are counted (e.g. ``class``, ``damage``).
    """
    counts: Counter[str] = Counter()
    rows = [0]
    with _batches(source, layer) as (meta, reader):
        fields = [f.name for f in reader.schema if f.name != meta["geometry_name"]]

        def counted() -> Iterator[pa.RecordBatch]:
            for batch in reader:
                rows[0] += batch.num_rows
                if count_by is not None and count_by in batch.schema.names:
                    counts.update(str(v) for v in batch.column(count_by).to_pylist())
                yield batch

        stream = pa.RecordBatchReader.from_batches(reader.schema, counted())
        import pyogrio.raw  # here, not at import: pyogrio imports geopandas, which a command's start need not pay for

        pyogrio.raw.write_arrow(
            stream,
            out,
            driver="PMTiles",
            layer=name,
            crs=meta["crs"],
            geometry_type=meta["geometry_type"],
            geometry_name=meta["geometry_name"],
            dataset_options={"MINZOOM": zooms[0], "MAXZOOM": zooms[1], "NAME": name, "TYPE": "overlay"},
        )
    return VectorTiles(out.name, name, zooms[0], zooms[1], rows[0], dict(counts), fields)


@contextmanager
def _batches(source: Path, layer: str | None) -> Iterator[tuple[dict[str, Any], pa.RecordBatchReader]]:
    """(meta: crs, geometry_type, geometry_name; a reader of record batches) of one layer, any supported format."""
    if source.suffix.lower() == ".parquet":
        yield _parquet_batches(source)
        return
    import pyogrio.raw

    with pyogrio.raw.open_arrow(source, layer=layer, use_pyarrow=True, batch_size=BATCH) as (meta, reader):
        geometry_name = meta.get("geometry_name") or "wkb_geometry"
        yield {"crs": meta["crs"], "geometry_type": meta["geometry_type"], "geometry_name": geometry_name}, reader


def _parquet_batches(source: Path) -> tuple[dict[str, Any], pa.RecordBatchReader]:
    """A GeoParquet file's plain columns and WKB geometry as batches (the covering bbox struct left out)."""
    import json

    import pyarrow.parquet as pq

    pf = pq.ParquetFile(source)
    geo = json.loads((pf.schema_arrow.metadata or {}).get(b"geo", b"{}"))
    column = geo.get("primary_column", "geometry")
    info = geo.get("columns", {}).get(column, {})
    crs = info.get("crs")
    crs_text = json.dumps(crs) if isinstance(crs, dict) else (crs or "EPSG:4326")
    types = info.get("geometry_types") or ["Unknown"]
    keep = [f.name for f in pf.schema_arrow if not pa.types.is_struct(f.type)]
    schema = pa.schema([pf.schema_arrow.field(n) for n in keep])
    reader = pa.RecordBatchReader.from_batches(schema, pf.iter_batches(batch_size=BATCH, columns=keep))
    geometry_type = types[0] if len(types) == 1 else "Unknown"
    return {"crs": crs_text, "geometry_type": geometry_type, "geometry_name": column}, reader
