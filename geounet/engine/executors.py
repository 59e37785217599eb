"""Local runs without ``--scheduler``: dask's threaded scheduler, dask.distributed only on demand.

The chunk tasks of a local run go through ``dask.threaded`` (see
``pipeline._run_chunks``): measured here (benchmarks/README.md, "local schedulers") it
is about 5 % faster per task than an in-process dask.distributed cluster, and a
command that never needs dask.distributed does not pay its import and cluster start
(0.5-0.6 s). Code that needs futures (the vector stage of small scenes, the damage
run's blocks) asks :class:`LocalThreads` for an in-process dask.distributed client,
which is started then (or in the background, :meth:`LocalThreads.start_distributed`)
and kept for the rest of the batch. Any attribute this object lacks is the
distributed client's (``submit``, ``run``, ...), so such code takes either.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from geounet.engine.tiles import cached_model, cpu_cores

log = logging.getLogger("geounet")


class LocalThreads:
    """``workers`` chunk tasks at once in this process, each model call on ``threads`` cores."""

    def __init__(self, workers: int, threads: int | None = None) -> None:
        self.workers = max(1, workers)
        self.threads = threads or max(1, cpu_cores() // self.workers)
        self._client = None
        self._starter: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def load_model(self, model_path: str | Path, device: str, backend: str) -> None:
        """Load the model now (once per process), as the chunk tasks will ask for it."""
        if backend == "torch":
            import torch

            torch.set_num_threads(self.threads)
            cached_model(model_path, device, backend)
        else:
            cached_model(model_path, device, backend, self.threads)

    # ------------------------------------------------------------------ dask.distributed, on demand
    def start_distributed(self) -> None:
        """Start the in-process dask.distributed client in a background thread (no-op if started)."""
        with self._lock:
            if self._client is None and self._starter is None:
                self._starter = threading.Thread(target=self._start, name="geounet-local-cluster", daemon=True)
                self._starter.start()

    def _start(self) -> None:
        try:
            import dask
            from distributed import Client, LocalCluster

            # Dask's statistical profiler samples every worker thread's stack 100 times a
            # second, holding the GIL (3-15 % of a chunk phase here); no dashboard shows it.
            dask.config.set({"distributed.worker.profile.enabled": False})
            cluster = LocalCluster(n_workers=1, threads_per_worker=self.workers, processes=False,
                                   dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
            self._client = Client(cluster)
        except BaseException as exc:  # noqa: BLE001 - raised by distributed()
            self._error = exc

    def distributed(self):
        """The in-process dask.distributed client (started now if it was not)."""
        self.start_distributed()
        self._starter.join()
        if self._error is not None:
            raise self._error
        return self._client

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.distributed(), name)

    def close(self) -> None:
        """Close the in-process distributed client and its cluster, if one was started."""
        if self._starter is not None:
            self._starter.join()
        if self._client is not None:
            cluster = self._client.cluster
            self._client.close()
            cluster.close()
            self._client = None
