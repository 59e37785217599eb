"""Label rasterization: known pixel counts, reprojection, line buffering, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from shapely.geometry import LineString, box, mapping

from geounet.errors import GeounetError
from geounet.io.labels import IGNORE_INDEX, labels_to_raster, rasterize_labels, read_label_raster, read_vector_labels

# A 100 x 100 m scene at 1 m / px in UTM zone 36N (Kampala), top-left at (450000, 40100).
CRS = "EPSG:32636"
TRANSFORM = Affine(1.0, 0.0, 450000.0, 0.0, -1.0, 40100.0)
SHAPE = (100, 100)
BOUNDS = (450000.0, 40000.0, 450100.0, 40100.0)
CLASSES = ["background", "building", "road"]


def write_geojson(path: Path, geoms, crs: str = CRS, props: list[dict] | None = None) -> Path:
    """GeoJSON with an explicit CRS member (RFC 7946 files are WGS84; GDAL reads the member)."""
    to = Transformer.from_crs(CRS, crs, always_xy=True).transform
    features = [
        {
            "type": "Feature",
            "properties": (props[i] if props else {}),
            "geometry": mapping(shapely.transform(g, lambda xy: np.column_stack(to(xy[:, 0], xy[:, 1])))),
        }
        for i, g in enumerate(geoms)
    ]
    doc = {"type": "FeatureCollection", "features": features}
    if crs != "EPSG:4326":
        doc["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{crs.split(':')[1]}"}}
    path.write_text(json.dumps(doc))
    return path


def test_rasterize_known_square_count() -> None:
    square = box(450010, 40050, 450030, 40070)  # 20 x 20 m, on pixel edges
    out = rasterize_labels([(square, 1)], SHAPE, TRANSFORM)
    assert out.dtype == np.uint8
    assert int((out == 1).sum()) == 400
    rows, cols = np.nonzero(out)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (30, 49, 10, 29)


def test_rasterize_all_touched_and_fill() -> None:
    square = box(450010.25, 40050.25, 450020.25, 40060.25)  # 10 x 10 m, off the pixel grid
    centres = rasterize_labels([(square, 2)], SHAPE, TRANSFORM, fill=7)
    touched = rasterize_labels([(square, 2)], SHAPE, TRANSFORM, all_touched=True)
    assert int((centres == 2).sum()) == 100
    assert int((touched == 2).sum()) == 121
    assert int((centres == 7).sum()) == 100 * 100 - 100


def test_labels_in_another_crs_are_reprojected(tmp_path: Path) -> None:
    square = box(450020, 40020, 450060, 40060)  # 40 x 40 m = 1600 px
    path = write_geojson(tmp_path / "wgs84.geojson", [square], crs="EPSG:4326")
    gdf = read_vector_labels(path, CRS, BOUNDS, CLASSES, default_class="building")
    assert gdf.crs.to_epsg() == 32636
    out = labels_to_raster(gdf, SHAPE, TRANSFORM)
    assert abs(int((out == 1).sum()) - 1600) <= 8  # reprojection moves edges by far less than a pixel
    rows, cols = np.nonzero(out)
    assert abs(rows.min() - 40) <= 1 and abs(cols.min() - 20) <= 1


def test_class_field_and_value_map(tmp_path: Path) -> None:
    geoms = [box(450000, 40000, 450050, 40050), box(450040, 40040, 450080, 40080), box(450090, 40090, 450100, 40100)]
    props = [{"kind": "building"}, {"kind": "highway"}, {"kind": "parking"}]
    path = write_geojson(tmp_path / "l.geojson", geoms, props=props)
    gdf = read_vector_labels(
        path, CRS, BOUNDS, CLASSES, class_field="kind", value_map={"highway": "road", "parking": "ignore"}
    )
    assert sorted(gdf["class_value"]) == [1, 2, IGNORE_INDEX]
    # Write the road first: the higher class index still wins where they overlap.
    out = labels_to_raster(gdf.iloc[::-1], SHAPE, TRANSFORM, unlabelled=0)
    assert out[55, 45] == 2  # inside both the building and the road
    assert out[5, 95] == IGNORE_INDEX
    assert int((out == 1).sum()) == 2500 - 100


def test_lines_are_buffered_in_metres(tmp_path: Path) -> None:
    line = LineString([(450020, 40050), (450080, 40050)])  # 60 m long, horizontal
    path = write_geojson(tmp_path / "line.geojson", [line], crs="EPSG:4326")
    gdf = read_vector_labels(path, CRS, BOUNDS, CLASSES, default_class="road", line_width_m=4.0)
    assert gdf.geometry.iloc[0].geom_type == "Polygon"
    out = labels_to_raster(gdf, SHAPE, TRANSFORM)
    assert abs(int((out == 2).sum()) - 240) <= 12  # 60 m x 4 m, flat caps


def test_empty_label_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(GeounetError, match="no features") as err:
        read_vector_labels(path, CRS, BOUNDS, CLASSES, default_class="building")
    assert err.value.path == str(path)


def test_zero_byte_and_geometry_less_label_files(tmp_path: Path) -> None:
    zero = tmp_path / "zero.geojson"
    zero.write_bytes(b"")
    with pytest.raises(GeounetError, match=r"label file is empty \(0 bytes\)"):
        read_vector_labels(zero, CRS, BOUNDS, CLASSES, default_class="building")
    nulls = tmp_path / "nulls.geojson"
    nulls.write_text(
        json.dumps(
            {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": None}] * 2}
        )
    )
    with pytest.raises(GeounetError, match="2 feature.* none has a geometry"):
        read_vector_labels(nulls, CRS, BOUNDS, CLASSES, default_class="building")


def test_labels_not_overlapping_scene(tmp_path: Path) -> None:
    far = box(460000, 50000, 460020, 50020)  # 10 km away
    path = write_geojson(tmp_path / "far.geojson", [far], crs="EPSG:4326")
    with pytest.raises(GeounetError, match="no labels overlap the scene"):
        read_vector_labels(path, CRS, BOUNDS, CLASSES, default_class="building")


def test_unknown_class_name(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "l.geojson", [box(450000, 40000, 450010, 40010)], props=[{"kind": "church"}])
    with pytest.raises(GeounetError, match="'church'") as err:
        read_vector_labels(path, CRS, BOUNDS, CLASSES, class_field="kind")
    assert "background" in str(err.value)  # lists the config's classes
    with pytest.raises(GeounetError, match="not in the config's classes"):
        read_vector_labels(path, CRS, BOUNDS, CLASSES, default_class="tree")
    with pytest.raises(GeounetError, match="no field 'class'"):
        read_vector_labels(path, CRS, BOUNDS, CLASSES, class_field="class")


def test_label_raster_value_map_and_reprojection(tmp_path: Path) -> None:
    # A 0/200 mask at 0.5 m covering the left half of the scene; read onto the 1 m grid.
    path = tmp_path / "mask.tif"
    data = np.zeros((200, 200), np.uint8)
    data[:, :100] = 200
    profile = dict(
        driver="GTiff",
        width=200,
        height=200,
        count=1,
        dtype="uint8",
        crs=CRS,
        transform=Affine(0.5, 0, 450000.0, 0, -0.5, 40100.0),
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
    out = read_label_raster(path, CRS, TRANSFORM, SHAPE, CLASSES, {"0": "background", "200": "road"})
    assert int((out == 2).sum()) == 50 * 100 and int((out == 0).sum()) == 50 * 100
    with pytest.raises(GeounetError, match="not class indexes"):
        read_label_raster(path, CRS, TRANSFORM, SHAPE, CLASSES)
    # Where the label raster does not reach, pixels are ignored.
    shifted = Affine(1.0, 0.0, 450050.0, 0.0, -1.0, 40100.0)
    out = read_label_raster(path, CRS, shifted, SHAPE, CLASSES, {"0": "background", "200": "road"})
    assert (out[:, 50:] == IGNORE_INDEX).all() and (out[:, :50] == 0).all()
