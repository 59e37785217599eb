"""Footprints from a vector file: reprojected to the pre grid's CRS, repaired, counted; one-line errors."""

from __future__ import annotations

import geopandas as gpd
import pytest
import shapely
from rasterio.crs import CRS

from geounet.damage.footprints import read_footprints
from geounet.errors import InputError


def test_footprints_are_reprojected_repaired_and_counted(pair, tmp_path):
    x0, y0 = pair.origin
    square = shapely.box(x0 + 10, y0 - 20, x0 + 20, y0 - 10)
    bowtie = shapely.Polygon([(x0, y0 - 10), (x0 + 10, y0), (x0 + 10, y0 - 10), (x0, y0)])
    line = shapely.LineString([(x0, y0), (x0 + 5, y0 - 5)])
    gdf = gpd.GeoDataFrame(
        {"kind": ["square", "bowtie", "line", "none"]}, geometry=[square, bowtie, line, None], crs=pair.crs
    ).to_crs("EPSG:4326")
    gdf.to_file(tmp_path / "fp.geojson")
    wkt = CRS.from_user_input(pair.crs).to_wkt()
    out, counts = read_footprints(tmp_path / "fp.geojson", wkt)
    assert counts == {
        "read": 4,
        "crs": "EPSG:4326",
        "reprojected": True,
        "repaired": 1,
        "skipped_invalid": 0,
        "skipped_not_polygon": 1,
        "skipped_empty": 1,
        "used": 2,
    }
    assert list(out.columns) == ["geometry", "footprint_id"]
    assert list(out["footprint_id"]) == [0, 1]  # row numbers in the file
    assert out.is_valid.all() and CRS.from_user_input(out.crs) == CRS.from_wkt(wkt)
    assert out.geometry[0].area == pytest.approx(100, rel=1e-3)  # back in metres


@pytest.mark.parametrize(
    "case, problem",
    [
        ("missing", "footprints file not found"),
        ("not_vector", "not a readable vector file"),
        ("only_lines", "no usable footprint: 1 read"),
    ],
)
def test_unusable_footprint_files_are_one_line_errors(pair, tmp_path, case, problem):
    path = tmp_path / "fp.geojson"
    if case == "not_vector":
        path.write_text("no geojson here")
    elif case == "only_lines":
        gpd.GeoDataFrame(geometry=[shapely.LineString([(0, 0), (1, 1)])], crs=pair.crs).to_file(path)
    with pytest.raises(InputError, match=problem) as info:
        read_footprints(path, CRS.from_user_input(pair.crs).to_wkt())
    assert "\n" not in str(info.value)
