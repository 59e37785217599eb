"""A damage run's files: ``change.tif`` (change measures on the pre grid) and ``damage.gpkg`` (the buildings).

``change.tif`` is written block by block to a tiled GeoTIFF, then made a COG.
``damage.gpkg`` holds layer ``buildings`` with its default QGIS style (categorized on
``damage``, in the grade colours).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import rasterio
from rasterio.io import DatasetWriter

from geounet.compute.change import GRADE_COLOURS
from geounet.compute.grid import GeoGrid
from geounet.damage.assess import CHANGE_BANDS, NODATA, SCALE
from geounet.io.rasters import tiled_profile, write_cog
from geounet.io.vectors import categorized_qml, write_layer_style

BUILDINGS_LAYER = "buildings"


@contextmanager
def change_raster(path: Path, pre: GeoGrid, model_name: str) -> Iterator[DatasetWriter]:
    """A tiled uint8 GeoTIFF on the pre grid for the CHANGE_BANDS (value = DN / SCALE, NODATA), open for writing."""
    profile = tiled_profile(pre.crs_wkt, pre.affine, pre.width, pre.height, len(CHANGE_BANDS), "uint8", NODATA)
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = CHANGE_BANDS
        dst.scales = (1.0 / SCALE,) * len(CHANGE_BANDS)
        dst.offsets = (0.0,) * len(CHANGE_BANDS)
        dst.update_tags(
            GEOUNET_CONTENT="damage change measures on the pre scene grid",
            GEOUNET_SCALE=f"value = DN / {SCALE}; {NODATA} = nodata (outside overlap or no data)",
            GEOUNET_MODEL=model_name,
        )
        yield dst


def publish_change_raster(tiled: Path, cog: Path) -> None:
    """The tiled change raster as a COG (overviews: average); the tiled file is removed."""
    write_cog(tiled, cog, "AVERAGE")
    tiled.unlink()


def write_buildings(table: gpd.GeoDataFrame, gpkg: Path) -> None:
    """Layer ``buildings`` of ``gpkg`` with its default QGIS style (outlines filled in the grade colours)."""
    table.to_file(gpkg, layer=BUILDINGS_LAYER, driver="GPKG")
    qml = categorized_qml("damage", [(g, g, rgb) for g, rgb in GRADE_COLOURS.items()])
    write_layer_style(gpkg, BUILDINGS_LAYER, qml, "geounet damage grades: buildings in the grade colours")
