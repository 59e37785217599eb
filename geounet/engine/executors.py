"""Where the tasks of a run execute: one :class:`Executor` interface, a threaded and a dask.distributed one.

- :class:`ThreadedExecutor` (local runs, no ``--scheduler``): chunk tasks go through
  dask's threaded scheduler in this process, sharing one copy of the model; work that
  needs futures (the vector stage, the damage run's blocks) goes to a
  ``concurrent.futures`` thread pool of as many threads. A local run never imports
  dask.distributed nor starts a cluster (an in-process one cost the vector stage memory
  and CPU time: benchmarks/README.md, "Vectors on a thread pool").
- :class:`DistributedExecutor`: a dask.distributed client, either connected to a
  ``--scheduler`` cluster or over local worker processes (:class:`VectorPool`, for the
  pure-Python building regulariser). Futures are bounded in flight; a chunk whose worker
  dies is recomputed by the scheduler; a lost scheduler becomes a one-line
  :class:`ClusterError`.

Only paths and small geometry objects travel to tasks; each process loads the model
once (``geounet.models.registry.cached_model``).
"""

from __future__ import annotations

import importlib
import itertools
import logging
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geounet.models.hardware import cpu_cores, threads_per_task
from geounet.models.registry import cached_model, release_models

log = logging.getLogger("geounet")

CONNECT_TIMEOUT = "20s"  # to reach a --scheduler
VECTOR_STAGE = "geounet.engine.vector_stage"  # what vector worker processes import when they start
# Vector worker processes pay for themselves only with cores to spare: blocks are polygonized
# while the chunks run, and on fewer cores the model keeps them all busy, so the processes'
# start-up, copies and memory add CPU time that threads in this process do not
# (benchmarks/README.md, "vectors while predicting").
VECTOR_PROCESS_MIN_CORES = 4


class ClusterError(RuntimeError):
    """The Dask cluster failed under a run (scheduler lost or unreachable, workers dying).

    Not a :class:`~geounet.errors.GeounetError`: it is not about one scene, so a batch
    stops at once (the scene that was running leaves no output folder). ``str()`` is one line.
    """

    def __init__(self, address: str | None, problem: str) -> None:
        self.address, self.problem = address, problem
        super().__init__(f"{address}: {problem}" if address else problem)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.address, self.problem))

    @classmethod
    def lost(cls, address: str | None, label: str, exc: BaseException) -> ClusterError:
        """The scheduler (or the connection to it) lost while predicting the scene ``label``."""
        return cls(
            address or "local cluster",
            f"lost the Dask scheduler while predicting {label} ({type(exc).__name__}); no output written for this scene",
        )


def lost_cluster(exc: BaseException) -> bool:
    """Whether ``exc`` is how dask.distributed reports a lost scheduler or connection (outside the chunk loop)."""
    if isinstance(exc, (CancelledError, TimeoutError)):
        return True
    comm = sys.modules.get("distributed.comm.core")  # never imported by a local run
    return comm is not None and isinstance(exc, comm.CommClosedError)


@dataclass(frozen=True)
class ChunkTask:
    """One task of a chunk graph: ``fn(*args)``, named ``name`` (raster order sorts by name)."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]


class Executor(ABC):
    """Runs a run's tasks; see the module docstring for the two kinds."""

    description: str  # where the tasks ran, for run.json
    task_threads: int | None = None  # CPU threads per model call; None: each worker decides (threads_per_task)

    @property
    @abstractmethod
    def workers(self) -> int:
        """Task threads that run at once (this process's, or summed over the cluster's workers)."""

    @abstractmethod
    def run_chunks(self, tasks: Sequence[ChunkTask], take: Callable[[Any], None], label: str) -> None:
        """Run ``tasks``; hand each result to ``take`` (one call at a time per result) as it completes.

        Memory holds a few results, whatever the number of tasks. ``label`` names the work
        (the scene) in keys and errors.
        """

    def imap_unordered(
        self, fn: Callable[..., Any], items: Iterable[Any], *args: Any, in_flight: int | None = None, retries: int = 2
    ) -> Iterator[Any]:
        """``fn(item, *args)`` for every item, at most ``in_flight`` at once, results as they complete.

        Built on :meth:`submit`, :meth:`wait_first` and :meth:`result`; if the caller stops
        early (an error), the tasks not started yet are cancelled.
        """
        queue = iter(items)
        n = in_flight or max(4, 2 * self.workers)
        pending = {self.submit(fn, i, *args, retries=retries) for _, i in zip(range(n), queue)}
        try:
            while pending:
                for fut in self.wait_first(pending):
                    pending.discard(fut)
                    yield self.result(fut)
                    for nxt in itertools.islice(queue, 1):
                        pending.add(self.submit(fn, nxt, *args, retries=retries))
        finally:
            for fut in pending:
                fut.cancel()

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any, retries: int = 2) -> list[Any]:
        """``[fn(item, *args) for item in items]``, all submitted at once, results in order."""
        futures = [self.submit(fn, i, *args, retries=retries) for i in items]
        try:
            return [self.result(f) for f in futures]
        finally:
            for f in futures:
                f.cancel()

    @abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any, retries: int = 2) -> Any:
        """``fn(*args)`` started now; a future (``done()``; its answer through :meth:`result`)."""

    def wait_first(self, pending: set[Any]) -> set[Any]:
        """Wait until one of ``pending`` (futures of :meth:`submit`) is done; returns the done ones."""
        from concurrent.futures import FIRST_COMPLETED, wait

        return set(wait(pending, return_when=FIRST_COMPLETED).done)

    def result(self, future: Any) -> Any:
        """A done future's answer (its error raised); the executor lets go of it."""
        return future.result()

    def run_on_workers(self, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        """``fn(*args)`` on each worker process of a cluster: ``{worker address: answer}``; ``{}`` locally."""
        return {}

    @abstractmethod
    def load_model(self, model_path: str | Path, device: str, backend: str, precision: str = "fp32") -> None:
        """Load the model where tasks will run, now (its start-up is not part of the first scene)."""

    def vector_executor(self, n_blocks: int, processes: bool | None) -> Executor:
        """Where a scene's vector tasks run: this executor, or local worker processes (:class:`VectorPool`)."""
        return self

    def release_model(self) -> None:
        """No more chunks for now: free the memory of the models this executor's own process holds.

        A later chunk loads its model again. Executors whose models live on other workers keep them.
        """
        return None

    @abstractmethod
    def close(self) -> None:
        """Release threads, clients and clusters this executor started."""


# ---------------------------------------------------------------------------------------- distributed


class DistributedExecutor(Executor):
    """A dask.distributed client; ``owns_cluster``: its local cluster is closed with it."""

    def __init__(self, client: Any, description: str = "dask cluster", owns_cluster: bool = False) -> None:
        self.client = client
        self.description = description
        self.owns_cluster = owns_cluster

    @classmethod
    def connect(cls, address: str) -> DistributedExecutor:
        """A client of the scheduler at ``address`` (``tcp://HOST:PORT``); its dashboard link is logged."""
        from distributed import Client

        try:
            client = Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(address, f"cannot connect to the Dask scheduler ({exc})") from None
        link = dashboard_link(client)
        if link:
            log.info("Dask dashboard: %s", link)
        return cls(client)

    @property
    def workers(self) -> int:
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - no workers yet, or scheduler busy
            return 1

    @property
    def address(self) -> str | None:
        try:
            return str(self.client.scheduler.address)
        except AttributeError:
            return None

    def run_chunks(self, tasks: Sequence[ChunkTask], take: Callable[[Any], None], label: str) -> None:
        in_flight = max(2, 2 * self.workers)
        with self.cluster_errors(label):
            for result in self._bounded(
                tasks,
                in_flight,
                2,
                lambda t: (t.fn, *t.args),
                lambda t: f"chunk-{label}-{t.name}-{time.monotonic_ns()}",
            ):
                take(result)

    def imap_unordered(
        self, fn: Callable[..., Any], items: Iterable[Any], *args: Any, in_flight: int | None = None, retries: int = 2
    ) -> Iterator[Any]:
        yield from self._bounded(items, in_flight or max(4, 2 * self.workers), retries, lambda i: (fn, i, *args))

    def submit(self, fn: Callable[..., Any], *args: Any, retries: int = 2) -> Any:
        return self.client.submit(fn, *args, pure=False, retries=retries)

    def wait_first(self, pending: set[Any]) -> set[Any]:
        from distributed import wait

        wait(list(pending), return_when="FIRST_COMPLETED")
        return {f for f in pending if f.done()}

    def result(self, future: Any) -> Any:
        answer = future.result()
        future.release()
        return answer

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any, retries: int = 2) -> list[Any]:
        futures = [self.client.submit(fn, i, *args, pure=False, retries=retries) for i in items]
        out = []
        for fut in futures:
            out.append(fut.result())
            fut.release()
        return out

    def _bounded(
        self,
        items: Iterable[Any],
        in_flight: int,
        retries: int,
        call: Callable[[Any], tuple[Any, ...]],
        key: Callable[[Any], str] | None = None,
    ) -> Iterator[Any]:
        from distributed import as_completed

        def submit(item: Any) -> Any:
            fn, *args = call(item)
            kw = {"key": key(item)} if key else {}
            return self.client.submit(fn, *args, pure=False, retries=retries, **kw)

        queue = iter(items)
        futures = as_completed([submit(i) for _, i in zip(range(in_flight), queue)])
        for fut in futures:
            result = fut.result()
            fut.release()
            yield result
            nxt = next(queue, None)
            if nxt is not None:
                futures.add(submit(nxt))

    def run_on_workers(self, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        return dict(self.client.run(fn, *args))

    def load_model(self, model_path: str | Path, device: str, backend: str, precision: str = "fp32") -> None:
        """Best effort: a worker that cannot load the model says so in the chunk task's own error."""
        try:
            self.client.run(_load_model_here, str(Path(model_path).resolve()), device, backend, precision)
        except Exception as exc:  # noqa: BLE001 - the chunk tasks report real problems
            log.debug("warming the workers failed: %s", exc)

    @contextmanager
    def cluster_errors(self, label: str) -> Iterator[None]:
        """Turn the ways a cluster fails (not a task's own error) into one-line :class:`ClusterError`."""
        from distributed import KilledWorker
        from distributed.comm.core import CommClosedError

        try:
            yield
        except KilledWorker as exc:
            raise ClusterError(
                self.address,
                f"{label}: a chunk task killed "
                f"{exc.args[1] if len(exc.args) > 1 else 'its'} workers several times "
                "(out of memory?); no output written for this scene",
            ) from None
        except (CancelledError, CommClosedError, OSError, TimeoutError) as exc:
            if isinstance(exc, OSError) and self.client.status == "running" and not isinstance(exc, ConnectionError):
                raise  # a file error of this scene, not the cluster
            raise ClusterError.lost(self.address, label, exc) from None

    def close(self) -> None:
        cluster = getattr(self.client, "cluster", None) if self.owns_cluster else None
        self.client.close()
        if cluster is not None:
            cluster.close()


def _load_model_here(
    model_path: str, device: str, backend: str = "torch", precision: str = "fp32", dask_worker: Any = None
) -> None:
    threads = threads_per_task(dask_worker) if backend == "onnx" else None  # as the chunk tasks will ask
    cached_model(model_path, device, backend, threads, precision)


def dashboard_link(client: Any) -> str | None:
    """The scheduler's dashboard URL (``http://HOST:PORT/status``), or None when it has no HTTP server."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return str(client.dashboard_link)
    except Exception:  # noqa: BLE001 - a link is a convenience, never a failure
        return None


# ---------------------------------------------------------------------------------------- local


class _Background:
    """Starts a :class:`DistributedExecutor` in a background thread; :meth:`get` waits for it."""

    def __init__(self, start: Callable[[], DistributedExecutor], name: str) -> None:
        self.executor: DistributedExecutor | None = None
        self.error: BaseException | None = None
        self._start = start
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.executor = self._start()
        except BaseException as exc:  # noqa: BLE001 - reported by get()
            self.error = exc

    def get(self) -> DistributedExecutor:
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.executor is not None
        return self.executor

    def close(self) -> None:
        self._thread.join()
        if self.executor is not None:
            self.executor.close()


def _retrying(fn: Callable[..., Any], args: tuple[Any, ...], retries: int) -> Any:
    """``fn(*args)``, run up to ``retries`` more times while it raises ``OSError``."""
    for _ in range(retries):
        try:
            return fn(*args)
        except OSError:
            pass
    return fn(*args)


class ThreadedExecutor(Executor):
    """``workers`` tasks at once in this process, each model call on ``threads`` cores."""

    description = "in-process threads"

    def __init__(self, workers: int, threads: int | None = None) -> None:
        self._workers = max(1, workers)
        self.threads = threads or max(1, cpu_cores() // self._workers)
        self.task_threads = self.threads
        self._tasks: ThreadPoolExecutor | None = None  # for futures; started with the first
        self._pools: list[VectorPool] = []
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        return self._workers

    def load_model(self, model_path: str | Path, device: str, backend: str, precision: str = "fp32") -> None:
        """Load the model now (once per process), as the chunk tasks will ask for it."""
        if backend == "torch":
            import torch

            torch.set_num_threads(self.threads)
            cached_model(model_path, device, backend)
        else:
            cached_model(model_path, device, backend, self.threads, precision)

    def release_model(self) -> None:
        release_models()

    def run_chunks(self, tasks: Sequence[ChunkTask], take: Callable[[Any], None], label: str) -> None:
        """One task per chunk, each followed by a task handing its result to ``take``.

        Dask runs a chunk's ``take`` task as soon as the chunk is done and then drops the
        chunk's result, so memory holds a few results. Keys sort by task name, which
        dask's ordering follows (raster order for zero-padded chunk indexes).
        """
        import dask
        import dask.threaded

        taken = []
        for t in tasks:
            part = dask.delayed(t.fn, pure=False)(*t.args, dask_key_name=f"geounet-chunk-{t.name}")
            taken.append(dask.delayed(take, pure=False)(part, dask_key_name=f"geounet-stitch-{t.name}"))
        # the scheduler as a function: by name, dask would import dask.distributed to look for a client
        dask.compute(*taken, scheduler=dask.threaded.get, num_workers=self._workers)

    def _task_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._tasks is None:
                self._tasks = ThreadPoolExecutor(self._workers, thread_name_prefix="geounet-task")
            return self._tasks

    def submit(self, fn: Callable[..., Any], *args: Any, retries: int = 2) -> Any:
        """``fn(*args)`` on the pool; ``retries``: times it is run again after an ``OSError`` (a remote read).

        In one process any other error would only repeat itself.
        """
        return self._task_pool().submit(_retrying, fn, args, retries)

    def vector_executor(self, n_blocks: int, processes: bool | None) -> Executor:
        """Local worker processes for scenes of 4 vector blocks or more on ``VECTOR_PROCESS_MIN_CORES`` cores or more.

        (``processes=None``; True or False decides.) Otherwise this process's thread pool.
        """
        use_processes = (
            processes if processes is not None else n_blocks >= 4 and cpu_cores() >= VECTOR_PROCESS_MIN_CORES
        )
        if not use_processes:
            return self
        with self._lock:
            if not self._pools:
                self._pools.append(VectorPool(min(cpu_cores(), 8), fallback=self))
            return self._pools[0]

    def close(self) -> None:
        for pool in self._pools:
            pool.close()
        self._pools.clear()
        if self._tasks is not None:
            self._tasks.shutdown(wait=True, cancel_futures=True)
            self._tasks = None


def _process_cluster(workers: int) -> DistributedExecutor:
    import dask
    from distributed import Client, LocalCluster

    # forkserver: workers are forked from a clean helper process, so they neither copy
    # this process's torch threads (fork) nor re-run the caller's __main__ (spawn;
    # which fails for code from stdin or a notebook).
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
    executor = DistributedExecutor(Client(cluster), "local worker processes", owns_cluster=True)
    executor.client.run(importlib.import_module, VECTOR_STAGE)  # imports paid now, not by the first block
    return executor


class VectorPool(Executor):
    """Local Dask worker processes for the vector stage, started in the background on first use.

    Part of the vector stage holds the GIL (the per-outline loop of building
    regularisation, contact splits): worker processes run it on every core, threads one
    at a time (benchmarks/README.md).
    The pool is kept for the rest of the batch and closed with the executor that made it.
    When the processes cannot start, the work runs on ``fallback`` (logged once).
    """

    def __init__(self, workers: int, fallback: Executor) -> None:
        self._pool = _Background(lambda: _process_cluster(workers), "geounet-vector-pool")
        self.fallback = fallback
        self._warned = False

    def _target(self) -> Executor:
        try:
            return self._pool.get()
        except BaseException as exc:  # noqa: BLE001 - the fallback does the work
            if not self._warned:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("local vector worker processes did not start (%s); vectorizing in this process", first)
                self._warned = True
            return self.fallback

    @property
    def description(self) -> str:  # type: ignore[override]
        return self._target().description

    @property
    def workers(self) -> int:
        return self._target().workers

    def run_chunks(self, tasks: Sequence[ChunkTask], take: Callable[[Any], None], label: str) -> None:
        self._target().run_chunks(tasks, take, label)

    def imap_unordered(
        self, fn: Callable[..., Any], items: Iterable[Any], *args: Any, in_flight: int | None = None, retries: int = 2
    ) -> Iterator[Any]:
        yield from self._target().imap_unordered(fn, items, *args, in_flight=in_flight, retries=retries)

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *args: Any, retries: int = 2) -> list[Any]:
        return self._target().map(fn, items, *args, retries=retries)

    def submit(self, fn: Callable[..., Any], *args: Any, retries: int = 2) -> Any:
        return self._target().submit(fn, *args, retries=retries)

    def wait_first(self, pending: set[Any]) -> set[Any]:
        return self._target().wait_first(pending)

    def result(self, future: Any) -> Any:
        return self._target().result(future)

    def load_model(self, model_path: str | Path, device: str, backend: str, precision: str = "fp32") -> None:
        pass  # vector tasks need no model

    def close(self) -> None:
        self._pool.close()
