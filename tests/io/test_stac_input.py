"""stac_input: a STAC Item (or ItemCollection) file as a scene, its assets stacked as a VRT."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from typer.testing import CliRunner

from geounet.cli.main import app
from geounet.io.stac_input import AssetBand, asset_bands, match_bands
from tests.helpers import shared_file

S2 = "brandenburg_s2/IMG_DATA/T33UUU_20170216T102101_{}.jp2"
BANDS = {  # name -> (common name, 10 m?)
    "B02": ("blue", True),
    "B03": ("green", True),
    "B04": ("red", True),
    "B08": ("nir", True),
    "B05": ("rededge", False),
    "B06": ("rededge", False),
    "B07": ("rededge", False),
    "B8A": ("nir08", False),
    "B11": ("swir16", False),
    "B12": ("swir22", False),
}
LANDCOVER = [
    "B02 blue",
    "B03 green",
    "B04 red",
    "B08 nir",
    "B05 red edge 1",
    "B06 red edge 2",
    "B07 red edge 3",
    "B8A narrow nir",
    "B11 swir 1",
    "B12 swir 2",
]


def test_match_by_name_common_name_and_key() -> None:
    by_name = [AssetBand(f"k{i}", "x", 1, n, None) for i, n in enumerate(BANDS)]
    matched, missing = match_bands(LANDCOVER, by_name)
    assert missing == [] and [m.name for m in matched if m] == [n.split()[0] for n in LANDCOVER]
    # common names only (Earth Search style keys); the red edges told apart by key
    keys = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B05": "rededge1", "B06": "rededge2"}
    keys |= {"B07": "rededge3", "B8A": "nir08", "B11": "swir16", "B12": "swir22"}
    by_common = [AssetBand(keys[n], f"/{n}", 1, None, c) for n, (c, _) in BANDS.items()]
    matched, missing = match_bands(LANDCOVER, by_common)
    assert missing == ["B05 red edge 1", "B06 red edge 2", "B07 red edge 3"]  # three "rededge": ambiguous
    assert [m.href for m in matched[:4]] == ["/B02", "/B03", "/B04", "/B08"]
    assert [m.href for m in matched[7:]] == ["/B8A", "/B11", "/B12"]
    # asset keys only; RGB model against a three-band asset with common names
    by_key = [AssetBand(n, f"/{n}", 1) for n in BANDS]
    assert match_bands(LANDCOVER, by_key)[1] == []
    rgb = [AssetBand("visual", "/v", i, None, c, False) for i, c in enumerate(["red", "green", "blue"], 1)]
    matched, missing = match_bands(["red", "green", "blue"], rgb)
    assert missing == [] and [m.band for m in matched if m] == [1, 2, 3]


def test_asset_bands_stac_10_and_11() -> None:
    item = pystac.Item("i", None, None, _dt.datetime(2017, 2, 16), {})
    item.add_asset(
        "b04",
        pystac.Asset(
            "/d/B04.tif", media_type=pystac.MediaType.COG, roles=["data"], extra_fields={"eo:bands": [{"name": "B04"}]}
        ),
    )
    item.add_asset(
        "nir",
        pystac.Asset("/d/B08.jp2", media_type="image/jp2", extra_fields={"bands": [{"eo:common_name": "nir"}]}),
    )
    item.add_asset("thumb", pystac.Asset("/d/t.png", media_type=pystac.MediaType.PNG, roles=["thumbnail"]))
    bands = asset_bands(item)
    assert [(b.key, b.name, b.common_name) for b in bands] == [("b04", "B04", None), ("nir", None, "nir")]
    matched, missing = match_bands(["B04 red", "B08 nir", "B11 swir 1"], bands)
    assert [m.key for m in matched if m] == ["b04", "nir"] and missing == ["B11 swir 1"]


def _crops(tmp_path: Path) -> dict[str, Path]:
    """256x256 10 m crops and the matching 128x128 20 m crops of each band, as GeoTIFFs."""
    out = {}
    for name, (_, fine) in BANDS.items():
        window = Window(512, 256, 256, 256) if fine else Window(256, 128, 128, 128)  # same ground
        with rasterio.open(shared_file(S2.format(name))) as src:
            data = src.read(1, window=window)
            profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype)
            profile |= {"crs": src.crs, "transform": src.window_transform(window)}
            assert src.window_bounds(window) == (335120, 5816920, 337680, 5819480)
        assert data.shape == (window.height, window.width) and (data > 0).all()
        out[name] = tmp_path / "bands" / f"{name}.tif"
        out[name].parent.mkdir(exist_ok=True)
        with rasterio.open(out[name], "w", **profile) as dst:
            dst.write(data, 1)
    return out


def _item(item_id: str, crops: dict[str, Path], folder: Path, drop: tuple[str, ...] = ()) -> pystac.Item:
    item = pystac.Item(item_id, None, None, _dt.datetime(2017, 2, 16, 10, 21, 1), {})
    for name, path in crops.items():
        if name in drop:
            continue
        common, _ = BANDS[name]
        href = Path("..") / path.relative_to(folder.parent) if folder != path.parent else path.name
        item.add_asset(
            name,
            pystac.Asset(
                str(href),
                media_type=pystac.MediaType.GEOTIFF,
                roles=["data"],
                extra_fields={"eo:bands": [{"name": name, "common_name": common}]},
            ),
        )
    return item


def _write(item: pystac.Item, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False)))
    return path


def _stack(crops: dict[str, Path], path: Path) -> Path:
    """The plain 10-band GeoTIFF of the same crops, 20 m bands resampled bilinearly to 10 m."""
    with rasterio.open(crops["B02"]) as ref:
        profile = dict(ref.profile, count=len(crops))
    with rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate(BANDS, 1):
            with rasterio.open(crops[name]) as src:
                dst.write(src.read(1, out_shape=(256, 256), resampling=Resampling.bilinear), i)
    return path


@pytest.mark.slow
@pytest.mark.shared
def test_predict_stac_item(tmp_path: Path) -> None:
    crops = _crops(tmp_path)
    items = tmp_path / "items"
    good = _write(_item("S2_crop", crops, items), items / "good.json")
    bad = _write(_item("S2_noswir", crops, items, drop=("B11", "B12")), items / "bad.json")
    collection = pystac.ItemCollection([_item("S2_a", crops, items), _item("S2_b", crops, items)])
    coll = items / "collection.json"
    coll.write_text(json.dumps(collection.to_dict(transform_hrefs=False)))
    notstac = items / "notstac.json"
    notstac.write_text('{"hello": 1}')
    stack = _stack(crops, tmp_path / "stack.tif")
    out = tmp_path / "out"
    args = ["predict", str(bad), str(good), str(notstac), str(coll), str(stack), "--model", "landcover"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--workers", "1", "--quiet"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert f"error: {bad}: no asset for band(s) B11 swir 1, B12 swir 2 (assets: B02, B03, B04, B08, B05" in (
        result.output
    )
    assert any(str(notstac) in e and "not a STAC Item" in e for e in errors)
    assert len(errors) == 2
    for name in ("S2_crop", "S2_a", "S2_b", "stack"):
        assert (out / name / "classes.tif").exists(), name
    with rasterio.open(out / "S2_crop" / "classes.tif") as a, rasterio.open(crops["B02"]) as ref:
        assert (a.crs, a.transform, a.width, a.height) == (ref.crs, ref.transform, 256, 256)
        classes = a.read(1)
    with rasterio.open(out / "stack" / "classes.tif") as b:
        expected = b.read(1)
    with rasterio.open(out / ".S2_crop.vrt") as vrt, rasterio.open(stack) as plain:  # the VRT: same pixels
        assert vrt.count == 10 and (vrt.read() == plain.read()).all()
    assert (classes == expected).mean() >= 0.99
    with rasterio.open(out / "S2_crop" / "scores.tif") as a, rasterio.open(out / "stack" / "scores.tif") as b:
        assert np.abs(a.read().astype(int) - b.read().astype(int)).mean() < 1.0
    links = json.loads((out / "S2_crop" / "item.json").read_text())["links"]
    derived = [lk for lk in links if lk["rel"] == "derived_from"]
    assert [lk["href"] for lk in derived] == [good.resolve().as_uri()]
    assert json.loads((out / "S2_crop" / "item.json").read_text())["properties"]["datetime"].startswith("2017-02-16")


@pytest.mark.slow
@pytest.mark.shared
def test_run_config_with_stac_items_reruns_skip(tmp_path: Path) -> None:
    crops = _crops(tmp_path)
    items = tmp_path / "items"
    good = _write(_item("S2_run", crops, items), items / "good.json")
    bad = _write(_item("S2_noswir", crops, items, drop=("B11", "B12")), items / "bad.json")
    out = tmp_path / "out"
    cfg = tmp_path / "p.yaml"
    inputs = [str(good), str(bad)]
    cfg.write_text(json.dumps({"model": "landcover", "inputs": inputs, "out": str(out), "workers": 1}))
    for counts in ({"done": 1, "failed": 1}, {"skipped_up_to_date": 1, "failed": 1}):
        res = CliRunner().invoke(app, ["run", str(cfg)])
        assert res.exit_code == 1, res.output
        assert f"error: {bad}: no asset for band(s) B11 swir 1, B12 swir 2" in res.output
        summary = json.loads(sorted((out / "_runs").glob("*.json"))[-1].read_text())
        assert {k: v for k, v in summary["counts"].items() if v} == counts
    assert (out / "S2_run" / "item.json").is_file()
