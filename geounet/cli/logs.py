"""geounet's console messages: one line each on stderr, Dask's chatter only when it is an error."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


DEBUG = {"on": False}  # set by ``geounet --debug``: DEBUG messages and tracebacks


def enable_debug() -> None:
    """``geounet --debug``: every later :func:`setup_logging` logs at DEBUG level (tracebacks included)."""
    DEBUG["on"] = True


def setup_logging(quiet: bool) -> None:
    """geounet's own messages on stderr; Dask's cluster chatter only when it is an error."""
    log = logging.getLogger("geounet")
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("geounet: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.DEBUG if DEBUG["on"] else logging.WARNING if quiet else logging.INFO)
    # dask.distributed sets its loggers' levels from Dask's config when it is imported,
    # which a local run does late or never (geounet.local): the config says them first.
    # distributed.client: a lost scheduler is reported once, as one line (pipeline.ClusterError),
    # not as its reconnect traceback.
    os.environ.setdefault("DASK_LOGGING", repr({"distributed": "error", "distributed.client": "critical"}))
    for noisy in ("distributed", "tornado", "bokeh"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # GDAL's messages reach Python logging through rasterio; with no handler, logging's last resort
    # printed each one bare on stderr (a full disk: one line per failed libtiff write). The errors
    # that matter come back as exceptions and are reported once; the messages only with --debug.
    gdal = logging.getLogger("rasterio")
    if not any(isinstance(h, logging.NullHandler) for h in gdal.handlers):
        gdal.addHandler(logging.NullHandler())
    gdal.setLevel(logging.DEBUG if DEBUG["on"] else logging.CRITICAL)
    if not DEBUG["on"]:
        _silence_libtiff()


def _silence_libtiff() -> None:
    """Stop libtiff printing its own error lines on stderr (GDAL still raises them as exceptions).

    rasterio's libtiff keeps its default handler, which writes straight to the process's
    stderr: a full disk gave a dozen ``_tiffWriteProc: No space left on device.`` lines
    before geounet's one. Linux only (the library is found in ``/proc/self/maps``).
    """
    import ctypes

    import rasterio  # noqa: F401 - loads its libtiff

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/libtiff" in line and ".so" in line})
    except OSError:
        return
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
            lib.TIFFSetErrorHandler(None)
        except (OSError, AttributeError):
            continue
