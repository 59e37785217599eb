"""Test helpers, imported one way (``from tests.helpers import ...``): the repo's real demo
scene and default model, a tiny random model, small GeoTIFFs, and the larger shared scenes
(``../shared/data``), skipped with a reason when absent."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

REPO = Path(__file__).resolve().parent.parent
DEMO_SCENE = REPO / "data" / "demo" / "kampala_demo.tif"
DEFAULT_MODEL = REPO / "data" / "models" / "buildings.safetensors"
SHARED = Path(os.environ.get("GEOUNET_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(rel: str) -> Path:
    """A file under ../shared/data, or skip the test saying plainly what is missing."""
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (CI has ../shared/data beside the repo)")
    return path


def make_tiny_model(path: Path, resolution_m: float = 0.15) -> Path:
    """A small random-weight RGB building model (mechanics only, not accuracy)."""
    import torch

    from geounet.models.card import ClassInfo, ModelCard
    from geounet.models.network import build_network, save_model

    card = ModelCard(
        name="tiny-test",
        classes=[ClassInfo("background", (0, 0, 0), "background"), ClassInfo("building", (230, 60, 60), "building")],
        bands=[1, 2, 3],
        band_names=["red", "green", "blue"],
        mean=[0.45, 0.45, 0.45],
        std=[0.25, 0.25, 0.25],
        scale=255.0,
        input_dtypes=["uint8"],
        resolution_m=resolution_m,
        tile_size=128,
        overlap=32,
        encoder="resnet18",
        encoder_depth=3,
        decoder_channels=[32, 16, 8],
    )
    torch.manual_seed(0)
    save_model(path, build_network(card), card)
    return path


def write_scene(
    path: Path,
    data: np.ndarray,
    crs="EPSG:32633",
    res: float = 0.15,
    nodata=None,
    mask=None,
    origin=(500000.0, 5800000.0),
) -> Path:
    """Write a small GeoTIFF (bands, rows, cols) with an optional nodata value or mask."""
    count, h, w = data.shape
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=count,
        dtype=data.dtype.name,
        nodata=nodata,
        crs=crs,
        transform=Affine(res, 0, origin[0], 0, -res, origin[1]) if crs else None,
    )
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
    return path


def invoke(*args: object):
    """Run the ``geounet`` command in this process (typer's test runner); returns its result."""
    from typer.testing import CliRunner

    from geounet.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    """The ``error: ...`` lines a command wrote to stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def make_card(*kinds: tuple[str, str, tuple[int, int, int]]):
    """A one-band model card: ``background`` plus one class per ``(name, kind, colour)`` (no weights)."""
    from geounet.models.card import ClassInfo, ModelCard

    classes = [ClassInfo("background", (0, 0, 0), "background")] + [ClassInfo(n, col, k) for n, k, col in kinds]
    return ModelCard(
        name="test",
        classes=classes,
        bands=[1],
        band_names=["x"],
        mean=[0.0],
        std=[1.0],
        scale=1.0,
        input_dtypes=["uint8"],
        resolution_m=1.0,
    )


def sparse_vrt(path: Path, size: int, source: Path, row: int, col: int) -> Path:
    """A ``size`` x ``size`` VRT (nodata 0) on ``source``'s CRS and pixel size, holding ``source`` at pixel
    (row, col) and nothing else: the shape of a huge, mostly empty mosaic."""
    with rasterio.open(source) as src:
        t, w, h, crs, count = src.transform, src.width, src.height, src.crs.to_wkt(), src.count
    x0, y0 = t.c - col * t.a, t.f - row * t.e  # the VRT's upper-left corner
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue><SimpleSource>'
        f"<SourceFilename>{source}</SourceFilename><SourceBand>{b}</SourceBand>"
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
        f'<DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/></SimpleSource></VRTRasterBand>'
        for b in range(1, count + 1)
    )
    srs = crs.replace("&", "&amp;").replace("<", "&lt;")
    path.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{srs}</SRS>'
        f"<GeoTransform>{x0!r}, {t.a!r}, 0, {y0!r}, 0, {t.e!r}</GeoTransform>{bands}</VRTDataset>"
    )
    return path


class RangeServer:
    """A local HTTP server for the files of one folder, with ``Range:`` support; counts requests and bytes."""

    def __init__(self, folder: Path) -> None:
        self.requests = 0
        self.bytes = 0
        self.etag = '"v1"'
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _count(self, n: int) -> None:
                with server.lock:
                    server.bytes += n

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                with server.lock:
                    server.requests += 1
                path = folder / self.path.split("?")[0].lstrip("/")
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                size = len(data)
                rng = self.headers.get("Range")
                spans = []
                if rng:
                    for part in rng.split("=", 1)[1].split(","):
                        a, b = part.strip().split("-")
                        start = int(a) if a else size - int(b)
                        end = min(int(b), size - 1) if a and b else size - 1
                        spans.append((start, end))
                if not spans:
                    self.send_response(200)
                    self._headers("application/octet-stream", size)
                    if body:
                        self.wfile.write(data)
                        self._count(size)
                elif len(spans) == 1:
                    start, end = spans[0]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                    self._headers("application/octet-stream", end - start + 1)
                    if body:
                        self.wfile.write(data[start : end + 1])
                        self._count(end - start + 1)
                else:  # multipart/byteranges
                    parts = b""
                    for start, end in spans:
                        parts += (
                            b"--BOUNDARY\r\nContent-Type: application/octet-stream\r\n"
                            + f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n".encode()
                            + data[start : end + 1]
                            + b"\r\n"
                        )
                    parts += b"--BOUNDARY--\r\n"
                    self.send_response(206)
                    self._headers("multipart/byteranges; boundary=BOUNDARY", len(parts))
                    if body:
                        self.wfile.write(parts)
                        self._count(sum(e - s + 1 for s, e in spans))

            def _headers(self, ctype: str, length: int) -> None:
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", server.etag)
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_process(cmd: list[str], port: int, name: str, timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """Run a server program (``cmd``, listening on 127.0.0.1:``port``) until the block ends.

    Waits until the port accepts connections; fails with the program's own output if it
    exits first or does not listen within ``timeout`` seconds.
    """
    import socket
    import time

    if not Path(cmd[0]).exists():
        pytest.fail(f"{cmd[0]} missing: install the test extra (pip install -e '.[test]')")
    import tempfile

    log = tempfile.TemporaryFile()  # not a pipe: a chatty server would block on a full one
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    log.seek(0)
                    said = log.read().decode(errors="replace")
                    raise RuntimeError(f"{name} did not start: {said[-2000:]}") from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
