"""change.tif (tiled, then a COG) and damage.gpkg with its QGIS style."""

from __future__ import annotations

import sqlite3

import geopandas as gpd
import numpy as np
import rasterio
import shapely

from geounet.compute.grid import Box, GeoGrid
from geounet.damage.assess import CHANGE_BANDS, NODATA, SCALE
from geounet.damage.mosaic import as_window
from geounet.damage.outputs import change_raster, publish_change_raster, write_buildings

GRID = GeoGrid("EPSG:26915", (0.6, 0.0, 367000.0, 0.0, -0.6, 4104000.0), 300, 200)


def test_change_raster_is_described_and_becomes_a_cog(tmp_path):
    block = np.full((len(CHANGE_BANDS), 100, 50), 127, np.uint8)
    with change_raster(tmp_path / "tiled.tif", GRID, "tiny") as dst:
        dst.write(block, window=as_window(Box(20, 40, 120, 90)))
    publish_change_raster(tmp_path / "tiled.tif", tmp_path / "change.tif")
    assert not (tmp_path / "tiled.tif").exists()
    with rasterio.open(tmp_path / "change.tif") as src:
        assert (src.width, src.height, src.count, src.nodata) == (300, 200, len(CHANGE_BANDS), NODATA)
        assert src.crs == "EPSG:26915" and src.transform == GRID.affine
        assert src.descriptions == CHANGE_BANDS and src.scales[0] == 1.0 / SCALE
        assert src.tags()["GEOUNET_MODEL"] == "tiny"
        band = src.read(1)
    assert (band[20:120, 40:90] == 127).all()


def test_buildings_layer_carries_its_grade_style(tmp_path):
    table = gpd.GeoDataFrame(
        {"footprint_id": [0, 1], "damage": ["no-damage", "destroyed"]},
        geometry=[shapely.box(0, 0, 1, 1), shapely.box(2, 2, 3, 3)],
        crs="EPSG:26915",
    )
    write_buildings(table, tmp_path / "damage.gpkg")
    back = gpd.read_file(tmp_path / "damage.gpkg", layer="buildings")
    assert list(back["damage"]) == ["no-damage", "destroyed"]
    with sqlite3.connect(tmp_path / "damage.gpkg") as db:
        ((name, qml),) = db.execute("SELECT f_table_name, styleQML FROM layer_styles").fetchall()
    assert name == "buildings" and 'attr="damage"' in qml
    for grade in ("no-damage", "minor-damage", "major-damage", "destroyed", "not_assessed"):
        assert f'value="{grade}"' in qml
