"""Vector tiles: a layer of any vector output format -> PMTiles with every feature, attribute and zoom."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely

from geounet.web.vector_tiles import vector_zooms, write_vector_tiles


def _buildings(n: int = 40) -> gpd.GeoDataFrame:
    """``n`` 10 m squares on a row in EPSG:32633 with the predict attributes."""
    x0, y0 = 500000.0, 5800000.0
    geoms = [shapely.box(x0 + 20 * i, y0, x0 + 20 * i + 10, y0 + 10) for i in range(n)]
    return gpd.GeoDataFrame(
        {
            "class": ["building" if i % 4 else "shed" for i in range(n)],
            "score": np.round(np.linspace(0.5, 0.99, n), 4),
            "area_m2": [100.0 + i for i in range(n)],
        },
        geometry=geoms,
        crs="EPSG:32633",
    )


@pytest.mark.parametrize("fmt", ["gpkg", "fgb", "parquet"])
def test_every_feature_and_attribute_reaches_the_pmtiles(tmp_path, fmt):
    gdf = _buildings()
    src = tmp_path / f"features.buildings.{fmt}"
    if fmt == "parquet":
        gdf.to_parquet(src, write_covering_bbox=True, schema_version="1.1.0")  # as geounet writes it
    else:
        gdf.to_file(src, layer="buildings", driver={"gpkg": "GPKG", "fgb": "FlatGeobuf"}[fmt])
    out = tmp_path / "buildings.pmtiles"
    tiles = write_vector_tiles(src, "buildings", out, (14, 17), "buildings", count_by="class")
    assert (tiles.minzoom, tiles.maxzoom, tiles.features) == (14, 17, len(gdf))
    assert tiles.counts == {"building": 30, "shed": 10}
    assert {"class", "score", "area_m2"} <= set(tiles.fields)
    meta = pyogrio.read_info(out, layer="buildings")["dataset_metadata"]
    assert (meta["minzoom"], meta["maxzoom"]) == ("14", "17")
    back = pyogrio.read_dataframe(out, layer="buildings")  # the finest zoom; a feature cut by tiles comes in parts
    assert sorted(set(back["area_m2"])) == sorted(gdf["area_m2"])
    for _, row in back.drop_duplicates("area_m2").iterrows():
        orig = gdf[gdf["area_m2"] == row["area_m2"]].iloc[0]
        assert (row["class"], row["score"]) == (orig["class"], pytest.approx(orig["score"]))
    # where they are: the union of the tiles' pieces is the original square, within a few centimetres
    merged = back.to_crs(gdf.crs).dissolve("area_m2")
    for area, geom in merged.geometry.items():
        orig = gdf[gdf["area_m2"] == area].geometry.iloc[0]
        assert geom.symmetric_difference(orig).area < 0.05 * orig.area, area


def test_vector_zooms_follow_the_rasters_and_stop_at_17():
    assert vector_zooms((18, 21)) == (17, 17)  # a drone scene: vectors at 17, overzoomed beyond
    assert vector_zooms((8, 14)) == (8, 14)
    assert vector_zooms((2, 14)) == (8, 14)  # at most six zooms below the finest
