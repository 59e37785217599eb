"""STAC API searches and static catalogs as inputs, against a real STAC API server on loopback.

The API is ``rustac serve`` (stac-rs's server, in-memory backend; from PyPI, in the test
extra): it has item search with collections, bbox/intersects and datetime, but neither the
query nor the filter extension, so property conditions are checked here on the Items it
returns (the path an API without those extensions takes). Not tested against a live API:
the ``query`` and CQL2 ``filter`` requests sent to APIs that do conform to them.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pystac
import pytest
import rasterio
import shapely
from pyproj import Transformer
from typer.testing import CliRunner

from geounet.cli.main import app
from geounet.io.stac_search import Condition, StacSearch, parse_condition
from tests.helpers import RangeServer, free_port, server_process
from tests.io.test_stac_input import BANDS, _crops

RUSTAC = Path(sys.executable).parent / "rustac"


def test_conditions_parse_and_hold() -> None:
    c = parse_condition("eo:cloud_cover<20")
    assert c == Condition("eo:cloud_cover", "<", 20.0)
    assert c.holds({"eo:cloud_cover": 5}) and not c.holds({"eo:cloud_cover": 20}) and not c.holds({})
    s = parse_condition("platform = 'sentinel-2a'")
    assert s.holds({"platform": "sentinel-2a"}) and not s.holds({"platform": "sentinel-2b"})
    assert parse_condition("view:off_nadir>=2.5").holds({"view:off_nadir": "3"})
    with pytest.raises(Exception, match="expected PROPERTY<VALUE"):
        parse_condition("cloudy")
    assert StacSearch("ftp://x", max_items=0).problems() == [
        "stac_search: the API must be an http(s):// URL, got 'ftp://x'",
        "stac_search: max_items must be >= 1, got 0",
    ]


def _items(crops: dict[str, Path], base_url: str, folder: Path) -> list[pystac.Item]:
    """Three Items of the same Sentinel-2 crop, assets as http:// URLs: cloud cover 5, 60 and 10, days 16, 17, 28."""
    with rasterio.open(crops["B02"]) as src:
        bounds, crs = src.bounds, src.crs
    t = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    footprint = shapely.box(*t.transform_bounds(*bounds))
    out = []
    for item_id, cloud, day in (("S2_clear", 5, 16), ("S2_cloudy", 60, 17), ("S2_late", 10, 28)):
        item = pystac.Item(
            item_id,
            shapely.geometry.mapping(footprint),
            list(footprint.bounds),
            _dt.datetime(2017, 2, day, 10, 21, 1, tzinfo=_dt.timezone.utc),
            {"eo:cloud_cover": cloud},
            collection="s2-crops",
        )
        for name, path in crops.items():
            item.add_asset(
                name,
                pystac.Asset(
                    f"{base_url}/{path.relative_to(folder).as_posix()}",
                    media_type=pystac.MediaType.GEOTIFF,
                    roles=["data"],
                    extra_fields={"eo:bands": [{"name": name, "common_name": BANDS[name][0]}]},
                ),
            )
        out.append(item)
    return out


@pytest.fixture(scope="module")
def stac_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict[str, Path]]]:
    """A STAC API (rustac serve) over three Items whose band COGs an HTTP range server serves."""
    folder = tmp_path_factory.mktemp("stac")
    crops = _crops(folder)
    with RangeServer(folder) as www:
        items = _items(crops, www.url, folder)
        footprint = shapely.geometry.shape(items[0].geometry)
        collection = pystac.Collection(
            "s2-crops",
            "Sentinel-2 crops",
            pystac.Extent(
                pystac.SpatialExtent([list(footprint.bounds)]),
                pystac.TemporalExtent([[_dt.datetime(2017, 1, 1, tzinfo=_dt.timezone.utc), None]]),
            ),
        )
        (folder / "collection.json").write_text(json.dumps(collection.to_dict(include_self_link=False)))
        (folder / "items.json").write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
        port = free_port()
        cmd = [str(RUSTAC), "serve", "--addr", f"127.0.0.1:{port}"]
        with server_process([*cmd, str(folder / "collection.json"), str(folder / "items.json")], port, "rustac serve"):
            yield f"http://127.0.0.1:{port}", folder, crops


def _predict(args: list[str], out: Path) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["predict", *args, "--model", "landcover", "--out", str(out), "--workers", "1"])
    return res.exit_code, res.output


@pytest.mark.slow
@pytest.mark.shared
def test_stac_api_search_predicts_the_items_found(stac_api, tmp_path: Path) -> None:
    url, _, crops = stac_api
    out = tmp_path / "out"
    # collection + datetime + a property condition the API cannot filter: only S2_clear qualifies
    args = ["--stac-api", url, "--collection", "s2-crops", "--datetime", "2017-02-01/2017-02-20"]
    code, output = _predict([*args, "--query", "eo:cloud_cover<20", "--no-vector", "--quiet"], out)
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith((".", "_"))) == ["S2_clear"]
    with rasterio.open(out / "S2_clear" / "classes.tif") as a, rasterio.open(crops["B02"]) as ref:
        assert (a.crs, a.transform, a.shape) == (ref.crs, ref.transform, ref.shape)
    links = json.loads((out / "S2_clear" / "item.json").read_text())["links"]
    derived = [lk["href"] for lk in links if lk["rel"] == "derived_from"]
    assert derived == [f"{url}/collections/s2-crops/items/S2_clear"]  # the API's own Item

    # an area of interest that misses the crops: the search finds nothing, says so, exit 0
    code, output = _predict([*args, "--bbox", "0,0,0.1,0.1", "--no-vector"], tmp_path / "none")
    assert code == 0, output
    assert "the STAC search found no Items" in output
    # max_items, and the AOI in another CRS: the crop's own UTM box finds all three Items
    with rasterio.open(crops["B02"]) as src:
        box = ",".join(str(v) for v in src.bounds)
        crs = src.crs.to_string()
    search = ["--stac-api", url, "--bbox", box, "--bbox-crs", crs, "--max-items", "2", "--no-vector", "--quiet"]
    code, output = _predict(search, tmp_path / "two")
    assert code == 0, output
    assert len([p for p in (tmp_path / "two").iterdir() if (p / "classes.tif").exists()]) == 2


def test_stac_api_problems_are_one_line(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, output = _predict(["--stac-api", dead, "--no-vector"], tmp_path / "o")
    assert code == 1
    assert f"error: {dead}: cannot open it as a STAC API" in output and "Traceback" not in output
    code, output = _predict(["--query", "eo:cloud_cover<20"], tmp_path / "o")
    assert code == 2 and "give --stac-api too" in output
    code, output = _predict([], tmp_path / "o")
    assert code == 2 and "error: no scenes" in output
    code, output = _predict(["--stac-api", "http://x", "--query", "cloudy"], tmp_path / "o")
    assert code == 2 and "error: --query: expected PROPERTY<VALUE" in output
    code, output = _predict(["--stac-api", "ftp://x"], tmp_path / "o")
    assert code == 2 and "error: --stac-api: the API must be an http(s):// URL" in output


@pytest.mark.slow
@pytest.mark.shared
def test_a_static_catalog_is_walked(stac_api, tmp_path: Path) -> None:
    _, folder, crops = stac_api
    root = tmp_path / "catalog"
    catalog = pystac.Catalog("crops", "a static catalog of local crops")
    sub = pystac.Catalog("february", "one child catalog")
    catalog.add_child(sub)
    local = tmp_path / "bands"
    shutil.copytree(folder / "bands", local)
    for item in _items({k: local / p.name for k, p in crops.items()}, str(tmp_path), tmp_path)[:2]:
        sub.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()  # resolved against each Item's file when read
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    out = tmp_path / "out"
    code, output = _predict([str(root / "catalog.json"), "--no-vector", "--quiet"], out)
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir() if (p / "classes.tif").exists()) == ["S2_clear", "S2_cloudy"]
    empty = tmp_path / "empty" / "catalog.json"
    pystac.Catalog("empty", "nothing").normalize_and_save(str(empty.parent), pystac.CatalogType.SELF_CONTAINED)
    code, output = _predict([str(empty), "--no-vector", "--quiet"], tmp_path / "o2")
    assert code == 1 and f"error: {empty}: a STAC Catalog with no Items under it" in output


@pytest.mark.slow
@pytest.mark.shared
def test_geounet_run_searches_at_each_run_and_skips_what_is_done(stac_api, tmp_path: Path) -> None:
    url, _, _ = stac_api
    out = tmp_path / "out"
    cfg = tmp_path / "p.yaml"
    search = {"url": url, "collections": ["s2-crops"], "query": ["eo:cloud_cover<=10"], "max_items": 5}
    cfg.write_text(
        json.dumps({"model": "landcover", "inputs": {"stac_search": search}, "out": str(out), "vector": False})
    )
    for counts in ({"done": 2}, {"skipped_up_to_date": 2}):  # S2_clear (5) and S2_late (10)
        res = CliRunner().invoke(app, ["run", str(cfg), "--quiet"])
        assert res.exit_code == 0, res.output
        summary = json.loads(sorted((out / "_runs").glob("*.json"))[-1].read_text())
        assert {k: v for k, v in summary["counts"].items() if v} == counts
    assert sorted(p.name for p in out.iterdir() if (p / "classes.tif").exists()) == ["S2_clear", "S2_late"]
    bad = {"url": "ftp://x", "query": ["cloudy"], "max_items": 0}
    cfg.write_text(json.dumps({"model": "landcover", "inputs": {"stac_search": bad}, "out": str(out)}))
    res = CliRunner().invoke(app, ["run", str(cfg)])
    assert res.exit_code == 2
    assert "inputs.stac_search.query: expected PROPERTY<VALUE" in res.output
