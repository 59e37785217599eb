"""The loopback server of ``geounet view``: an output folder's files, with byte ranges (PMTiles reads them).

Binds 127.0.0.1 only. ``GET`` with ``Range: bytes=a-b`` (or ``a-``, ``-n``) answers 206
with that part of the file; other requests are answered as by ``http.server``.
"""

from __future__ import annotations

import logging
import os
import re
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from geounet.errors import GeounetError
from geounet.io.run_record import RUN_JSON
from geounet.web.folder import WEB
from geounet.web.page import INDEX

log = logging.getLogger("geounet")
LOOPBACK = "127.0.0.1"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
HOW_TO_MAKE = (
    "make one with geounet predict --web or geounet run (web: true in the config), "
    "or geounet damage (on unless --no-web)"
)


def map_page(folder: Path) -> Path:
    """``folder/web/index.html`` of a geounet output folder; :class:`GeounetError` saying what is wrong otherwise."""
    if not folder.exists():
        raise GeounetError(folder, "no such folder")
    if not folder.is_dir():
        raise GeounetError(folder, "not a folder: give a geounet output folder (the one that holds run.json)")
    index = folder / WEB / INDEX
    if not (folder / RUN_JSON).is_file():
        maps = sorted(p.parent.parent.name for p in folder.glob(f"*/{WEB}/{INDEX}"))
        if maps:
            return_hint = f"{folder / maps[0]}" + (
                f" (or one of {len(maps)} such folders here)" if len(maps) > 1 else ""
            )
            raise GeounetError(
                folder, f"holds output folders, not one output: view one, e.g. geounet view {return_hint}"
            )
        raise GeounetError(
            folder,
            f"not a geounet output folder (no {RUN_JSON}): give a folder written by geounet predict, run or damage",
        )
    if not index.is_file():
        raise GeounetError(folder, f"has no web map ({WEB}/{INDEX} missing): {HOW_TO_MAKE}")
    return index


class _Part:
    """The first ``length`` bytes of an open file, from where it is (what a 206 answer sends)."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        self.f, self.left = f, length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n) if n > 0 else b""
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files of one folder, with single byte ranges."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".pmtiles": "application/octet-stream",
        ".webp": "image/webp",
    }

    def send_head(self) -> Any:
        spec = self.headers.get("Range")
        path = self.translate_path(self.path)
        m = _RANGE.fullmatch(spec.strip()) if spec else None
        if m is None or os.path.isdir(path) or not (m.group(1) or m.group(2)):
            return super().send_head()
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the server after sending
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # the last n bytes
            start, end = max(0, size - int(m.group(2))), size - 1
        if start >= size or start > end:
            f.close()
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(os.fstat(f.fileno()).st_mtime)))
        self.end_headers()
        f.seek(start)
        return _Part(f, end - start + 1)

    def end_headers(self) -> None:
        if not self.headers.get("Range"):
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("view: " + format, *args)


def serve(folder: Path, port: int = 0) -> ThreadingHTTPServer:
    """A server of ``folder``'s files on 127.0.0.1:``port`` (0: a free port; ``server.server_port`` says which).

    Call ``serve_forever()`` on it; :class:`GeounetError` when the port cannot be had.
    """
    handler = partial(RangeHandler, directory=str(folder))
    try:
        return ThreadingHTTPServer((LOOPBACK, port), handler)
    except OSError as exc:
        raise GeounetError(f"{LOOPBACK}:{port}", f"cannot listen: {exc.strerror or exc}") from None
