"""Remote scenes: names and GDAL paths, and ``geounet predict`` reading a COG over HTTP range requests."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from geounet.batch.state import _remote_changed
from geounet.cli.main import app
from geounet.io.remote import gdal_path, is_remote, scene_name
from geounet.io.run_record import RunRecord
from tests.helpers import DEMO_SCENE, RangeServer, free_port, server_process


def test_remote_names_and_gdal_paths():
    assert is_remote("https://h/x.tif") and is_remote("s3://b/k.tif") and is_remote("/vsis3/b/k.tif")
    assert not is_remote("/data/x.tif") and not is_remote(Path("http.tif"))
    assert gdal_path("https://h/a/x.tif") == "/vsicurl/https://h/a/x.tif"
    assert gdal_path("s3://b/k/x.tif") == "/vsis3/b/k/x.tif"
    assert gdal_path("/vsicurl/http://h/x.tif") == "/vsicurl/http://h/x.tif"
    assert gdal_path(Path("/data/x.tif")) == "/data/x.tif"
    assert scene_name("https://h/a/x.2021.tif?sig=abc") == "x.2021.tif"
    assert scene_name("/vsicurl/http://h/a/x.tif") == "x.tif"
    assert scene_name("s3://b/k/x.tif") == "x.tif"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("www")
    with rasterio.open(DEMO_SCENE) as src:
        profile = src.profile | {"driver": "COG", "blocksize": 512}
        for key in ("blockxsize", "blockysize", "tiled", "interleave"):
            profile.pop(key, None)
        with rasterio.open(folder / "scene.2021-05-01.tif", "w", **profile) as dst:
            dst.write(src.read())
            if src.nodata is None:
                dst.write_mask(src.dataset_mask())
    return folder


def _predict(args, tiny_model, out):
    return CliRunner().invoke(
        app, ["predict", *args, "--out", str(out), "--model", str(tiny_model), "--no-vector", "--quiet"]
    )


def _classes(folder: Path):
    with rasterio.open(folder / "classes.tif") as src:
        return src.read(), src.transform, src.crs, src.shape


def test_predict_over_http_matches_the_local_file(served, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    local = _predict([str(served / "scene.2021-05-01.tif")], tiny_model, tmp_path / "local")
    assert local.exit_code == 0, local.output
    with RangeServer(served) as server:
        url = f"{server.url}/scene.2021-05-01.tif"
        res = _predict([url], tiny_model, tmp_path / "remote")
        requests, served_bytes = server.requests, server.bytes
        # batch reruns: a remote scene is unchanged while its size and ETag are
        record = RunRecord.read(tmp_path / "remote" / "scene.2021-05-01")
        assert _remote_changed(record, url) == ""
        server.etag = '"v2"'
        assert _remote_changed(record, url) == "input changed (ETag/Last-Modified)"
    assert res.exit_code == 0, res.output
    a, b = _classes(tmp_path / "local" / "scene.2021-05-01"), _classes(tmp_path / "remote" / "scene.2021-05-01")
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    size = (served / "scene.2021-05-01.tif").stat().st_size
    print(f"HTTP: {requests} requests, {served_bytes} bytes served for a {size}-byte file")
    assert served_bytes <= 1.5 * size  # each block once (GDAL_HTTP_MULTIRANGE=SERIAL through the curl cache)
    record = RunRecord.read(tmp_path / "remote" / "scene.2021-05-01")
    assert record.input.path == f"{server.url}/scene.2021-05-01.tif"
    assert record.input.bytes == size and record.input.etag == '"v1"' and record.input.sha256 == ""


def test_a_404_url_fails_alone_and_vsicurl_paths_work(served, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    with RangeServer(served) as server:
        res = _predict(
            [f"{server.url}/missing.tif", f"/vsicurl/{server.url}/scene.2021-05-01.tif"], tiny_model, tmp_path
        )
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {server.url}/missing.tif: HTTP 404 not found"], res.output
    assert (tmp_path / "scene.2021-05-01" / "classes.tif").exists()


def test_a_refused_connection_and_a_non_raster_say_so(served, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    (served / "notes.tif").write_text("not a raster " * 100)
    with RangeServer(served) as server:
        url = f"{server.url}/notes.tif"
        res = _predict([url, "http://127.0.0.1:1/x.tif"], tiny_model, tmp_path)
    assert res.exit_code == 1
    assert f"error: {url}: not a raster" in res.output
    assert re.search(r"error: http://127\.0\.0\.1:1/x\.tif: cannot connect", res.output), res.output


def test_geounet_run_reads_a_url_and_skips_it_while_unchanged(served, tiny_model, tmp_path, monkeypatch):
    import json

    from geounet.batch.config import load_config
    from geounet.batch.run import run_pipeline

    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    with RangeServer(served) as server:
        cfg = tmp_path / "p.yaml"
        config = {"model": str(tiny_model), "inputs": [f"{server.url}/scene.2021-05-01.tif"], "out": str(tmp_path)}
        cfg.write_text(json.dumps(config | {"vector": False, "workers": 1}))
        first = run_pipeline(load_config(cfg), quiet=True)
        second = run_pipeline(load_config(cfg), quiet=True)
        server.etag = '"v2"'
        third = run_pipeline(load_config(cfg), quiet=True)
    assert [r.status for r in first.scenes] == ["done"], first.scenes
    assert first.scenes[0].out_dir == str(tmp_path / "scene.2021-05-01")
    assert [r.status for r in second.scenes] == ["skipped_up_to_date"], second.scenes
    assert [r.status for r in third.scenes] == ["done"], third.scenes


@pytest.fixture()
def s3(monkeypatch):
    """A real S3-compatible server on loopback (moto in server mode), GDAL's AWS_* options pointed at it."""
    import sys

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with server_process(cmd, port, "moto_server"):
        env = {
            "AWS_S3_ENDPOINT": f"127.0.0.1:{port}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "GDAL_HTTP_MAX_RETRY": "0",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield f"http://127.0.0.1:{port}"


def test_predict_from_s3_matches_the_local_file(served, s3, tiny_model, tmp_path):
    import boto3

    client = boto3.client(
        "s3", endpoint_url=s3, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    client.create_bucket(Bucket="scenes")
    client.upload_file(str(served / "scene.2021-05-01.tif"), "scenes", "kampala/scene.2021-05-01.tif")
    local = _predict([str(served / "scene.2021-05-01.tif")], tiny_model, tmp_path / "local")
    assert local.exit_code == 0, local.output
    res = _predict(
        ["s3://scenes/kampala/scene.2021-05-01.tif", "s3://scenes/kampala/missing.tif"], tiny_model, tmp_path / "s3"
    )
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output  # GDAL's own words for a missing key, in one line
    assert re.fullmatch(
        r"error: s3://scenes/kampala/missing\.tif: (HTTP 404 not found|.*key does not exist.*)", errors[0]
    )
    a, b = _classes(tmp_path / "local" / "scene.2021-05-01"), _classes(tmp_path / "s3" / "scene.2021-05-01")
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    record = RunRecord.read(tmp_path / "s3" / "scene.2021-05-01")
    assert record.input.path == "s3://scenes/kampala/scene.2021-05-01.tif"
    # batch reruns: an S3 object is unchanged while its size and ETag are (one HeadObject, botocore)
    assert record.input.etag and record.input.bytes == (served / "scene.2021-05-01.tif").stat().st_size
    assert _remote_changed(record, record.input.path) == ""
    client.put_object(Bucket="scenes", Key="kampala/scene.2021-05-01.tif", Body=b"another file")
    assert _remote_changed(record, record.input.path).startswith("input changed")
