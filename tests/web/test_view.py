"""``geounet view``: byte ranges on loopback, and one clear line for a folder it cannot show."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from geounet.errors import GeounetError
from geounet.web.server import map_page, serve
from tests.helpers import error_lines, invoke


@pytest.fixture
def server(tmp_path):
    (tmp_path / "data.bin").write_bytes(bytes(range(256)) * 4)  # 1024 bytes
    srv = serve(tmp_path, 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def _get(url: str, rng: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Range": rng} if rng else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_byte_ranges_as_pmtiles_reads_them(server):
    data = bytes(range(256)) * 4
    status, headers, body = _get(f"{server}/data.bin")
    assert (status, body, headers["Accept-Ranges"]) == (200, data, "bytes")
    status, headers, body = _get(f"{server}/data.bin", "bytes=10-19")
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], "bytes 10-19/1024")
    status, headers, body = _get(f"{server}/data.bin", "bytes=1000-")  # to the end
    assert (status, body, headers["Content-Range"]) == (206, data[1000:], "bytes 1000-1023/1024")
    status, _, body = _get(f"{server}/data.bin", "bytes=-24")  # the last 24
    assert (status, body) == (206, data[-24:])
    status, _, body = _get(f"{server}/data.bin", "bytes=1000-5000")  # past the end: cut at the end
    assert (status, body) == (206, data[1000:])
    status, headers, _ = _get(f"{server}/data.bin", "bytes=2000-2010")
    assert (status, headers["Content-Range"]) == (416, "bytes */1024")
    assert _get(f"{server}/missing.bin", "bytes=0-10")[0] == 404


def test_the_server_listens_on_loopback_only(tmp_path):
    srv = serve(tmp_path, 0)
    try:
        assert srv.server_address[0] == "127.0.0.1"
    finally:
        srv.server_close()


def _output(folder: Path, web: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"record_version": 1}))
    if web:
        (folder / "web").mkdir()
        (folder / "web" / "index.html").write_text("<html></html>")
    return folder


def test_map_page_says_what_is_wrong_with_a_folder(tmp_path):
    ok = _output(tmp_path / "runs" / "scene_a", web=True)
    assert map_page(ok) == ok / "web" / "index.html"
    cases = {
        tmp_path / "nowhere": "no such folder",
        tmp_path / "runs" / "scene_a" / "run.json": "not a folder",
        _output(
            tmp_path / "noweb", web=False
        ): "has no web map (web/index.html missing): make one with geounet predict --web",
        tmp_path / "runs": f"view one, e.g. geounet view {ok}",
        _empty(tmp_path / "plain"): "not a geounet output folder (no run.json)",
    }
    for folder, problem in cases.items():
        with pytest.raises(GeounetError) as err:
            map_page(folder)
        assert err.value.path == str(folder) and problem in err.value.problem, (folder, err.value.problem)


def _empty(folder: Path) -> Path:
    folder.mkdir()
    return folder


@pytest.mark.parametrize("web", [False, None])
def test_geounet_view_refuses_a_folder_without_a_map_in_one_line(tmp_path, web):
    folder = _output(tmp_path / "out", web=False) if web is False else _empty(tmp_path / "out")
    result = invoke("view", folder)
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}: "), result.stderr
    assert ("geounet predict --web" if web is False else "no run.json") in lines[0]
