"""vectors: GeoPackage layers with their QGIS default style, as QGIS reads it from layer_styles."""

from __future__ import annotations

import sqlite3
from xml.etree import ElementTree

import pyogrio
import shapely

from geounet.io.vectors import LayerWriter, categorized_qml, class_style_qml, write_layer_style
from geounet.models.card import ModelCard
from tests.helpers import make_card


def _card() -> ModelCard:
    return make_card(("building", "building", (230, 60, 60)), ("road", "road", (250, 250, 20)))


def test_categorized_style_names_each_value_with_its_colour():
    root = ElementTree.fromstring(
        categorized_qml(
            "damage", [("destroyed", "destroyed", (230, 20, 20)), ("no-damage", "no-damage", (40, 200, 60))]
        ).split("\n", 1)[1]
    )
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("attr") == "damage"
    cats = [(c.get("value"), c.get("symbol")) for c in renderer.iter("category")]
    assert cats == [("destroyed", "0"), ("no-damage", "1")]
    colours = [o.get("value") for o in renderer.iter("Option") if o.get("name") == "color"]
    assert colours == ["230,20,20,150", "40,200,60,150"]


def test_layers_are_created_with_crs_rows_and_a_default_style(tmp_path):
    gpkg = tmp_path / "f.gpkg"
    writer = LayerWriter(gpkg, "EPSG:32633", "EPSG:32633", _card())
    writer.create("buildings", "building")
    writer.create("road_centerlines", "road_centerline")
    import geopandas as gpd

    rows = gpd.GeoDataFrame(
        {"class": ["building"], "score": [0.9], "area_m2": [100.0], "perimeter_m": [40.0]},
        geometry=gpd.GeoSeries([shapely.box(0, 0, 10, 10)], crs="EPSG:32633"),
    )
    writer.write({"buildings": rows})
    writer.flush()
    writer.add_centerlines([shapely.LineString([(0, 0), (30, 40)])])
    assert writer.counts == {"buildings": 1, "road_centerlines": 1}
    layers = dict(pyogrio.list_layers(gpkg))
    assert layers["buildings"] == "MultiPolygon" and layers["road_centerlines"] == "MultiLineString"
    lines = pyogrio.read_dataframe(gpkg, layer="road_centerlines")
    assert lines.crs.to_epsg() == 32633 and lines.length_m.tolist() == [50.0]
    with sqlite3.connect(gpkg) as db:
        styles = dict(db.execute("SELECT f_table_name, styleQML FROM layer_styles").fetchall())
    assert styles["buildings"] == class_style_qml(_card(), "building")
    assert 'type="singleSymbol"' in styles["road_centerlines"] and "250,250,20,255" in styles["road_centerlines"]


def test_write_layer_style_registers_the_table_for_qgis(tmp_path):
    gpkg = tmp_path / "g.gpkg"
    import geopandas as gpd

    gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(0, 0)], crs="EPSG:4326").to_file(gpkg, layer="pts")
    write_layer_style(gpkg, "pts", "<qgis/>", "test")
    with sqlite3.connect(gpkg) as db:
        assert db.execute("SELECT data_type FROM gpkg_contents WHERE table_name='layer_styles'").fetchone() == (
            "attributes",
        )
        assert db.execute("SELECT useAsDefault, styleQML FROM layer_styles").fetchall() == [(1, "<qgis/>")]
