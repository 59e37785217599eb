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


def setup_logging(quiet: bool) -> None:
    """geounet's own messages on stderr; Dask's cluster chatter only when it is an error."""
    log = logging.getLogger("geounet")
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("geounet: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    # dask.distributed sets its loggers' levels from Dask's config when it is imported,
    # which a local run does late or never (geounet.local): the config says them first.
    # distributed.client: a lost scheduler is reported once, as one line (pipeline.ClusterError),
    # not as its reconnect traceback.
    os.environ.setdefault("DASK_LOGGING", repr({"distributed": "error", "distributed.client": "critical"}))
    for noisy in ("distributed", "tornado", "bokeh"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
