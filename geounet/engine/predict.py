"""Predicting a scene end to end: chunks on Dask, seams stitched, rasters written block by block.

The path of one tile: ``scene.read_box`` reads its chunk's window, ``infer.predict_chunk``
runs the model and blends the chunk's tiles, and here the chunk buffers are stitched:
every rectangle of :meth:`TileGrid.regions` is written as soon as all chunks that
overlap it have arrived. No full-scene array is ever held: memory is the chunks in
flight plus the pending seam strips. When the model runs on the scene's own grid, a
region goes straight to the uint8 scores and classes (argmax, scene mask). When the
scene is resampled for the model, regions go to a stage-1 raster (working grid,
uint16) that stage 2 reads back warped onto the scene's grid. GDAL then turns both
results into COGs, and ``features.vectorize_scene`` polygonizes the classes. Everything
is written in a temporary folder that is renamed to ``OUTDIR/<scene stem>`` only when
complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import sys
import time
from collections import defaultdict
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geounet import __version__
from geounet.errors import GeounetError, OutputError
from geounet.compute.grid import Box, TileGrid
from geounet.engine.tiles import (ChunkResult, cached_model, cpu_cores, default_batch_size, default_chunk_pixels, default_workers,
                    predict_chunk, resolve_backend, resolve_device, resolve_precision, threads_per_task)
from geounet.engine.executors import LocalThreads
from geounet.models.card import ModelCard, file_sha256, read_card
from geounet.io.rasters import (
    NODATA, STAGE_SCALE, describe_classes, describe_scores, finalize_block, tiled_profile, write_cog,
)
from geounet.io.scene import WorkingGrid, check_scene, ground_resolution, open_scene, working_grid

log = logging.getLogger("geounet")

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "data" / "models" / "buildings.safetensors"


@dataclass
class PredictSettings:
    """Everything that changes the outputs or how they are computed (recorded in run.json)."""

    tile_size: int | None = None  # pixels on the working grid; None: the model card's
    overlap: int | None = None
    batch_size: int | None = None  # tiles per model call; None: infer.default_batch_size
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"  # auto, torch or onnx (ONNX Runtime: fp32 on the CPU; infer.resolve_backend)
    workers: int | None = None  # chunk tasks at once in a local run; None: infer.default_workers
    chunk_pixels: int | None = None  # target chunk side; a chunk is whole tiles; None: infer.default_chunk_pixels
    resample_tolerance: float = 0.25  # resample when scene / model resolution differ by more
    scheduler: str | None = None  # address of an existing dask.distributed scheduler
    vector: bool = True  # also write features.gpkg
    vector_block: int = 1024  # polygonize block side, pixels of the scene grid
    # Local vector stage in worker processes (True), in this process's threads (False), or
    # None: processes for scenes of 4 vector blocks or more. Worker processes import the
    # caller's __main__ module (multiprocessing), so a script needs the usual
    # ``if __name__ == "__main__":`` guard; the CLI, whose __main__ has it, uses None.
    vector_processes: bool | None = False
    postprocess: dict | None = None  # per kind ('building', ...) overrides of postprocess.DEFAULT_RULES fields
    quiet: bool = False

    def resolved(self, card: ModelCard) -> "PredictSettings":
        """Every ``auto``/``None`` settled for this machine: tiling, device, precision, backend, their defaults."""
        s = self.tiling_resolved(card)
        s.device = resolve_device(s.device)
        s.precision = resolve_precision(s.device, s.precision)
        try:
            s.backend = resolve_backend(s.device, s.precision, s.backend)
        except ValueError as exc:
            raise GeounetError(None, str(exc)) from None
        s.workers = s.workers or default_workers(s.device, s.backend)
        s.batch_size = s.batch_size or default_batch_size(s.device, s.backend)
        s.chunk_pixels = s.chunk_pixels or default_chunk_pixels(s.device, s.backend, s.tile_size - s.overlap)
        return s

    def tiling_resolved(self, card: ModelCard) -> "PredictSettings":
        """A copy with tile size and overlap settled from the model card, and the sizes checked.

        Nothing here asks the hardware: a cluster's client uses it alone (``agree_on_settings``).
        """
        s = PredictSettings(**asdict(self))
        s.tile_size = s.tile_size or card.tile_size
        s.overlap = card.overlap if s.overlap is None else s.overlap
        if s.tile_size % 32:
            raise GeounetError(None, f"--tile-size must be a multiple of 32 (the U-Net's stride), got {s.tile_size}")
        if s.overlap % 2 or not 0 <= s.overlap < s.tile_size:
            raise GeounetError(None, f"--overlap must be even and smaller than the tile size, got {s.overlap}")
        if any(v is not None and v < 1 for v in (s.batch_size, s.workers, s.chunk_pixels)):
            raise GeounetError(None, "--batch-size, --workers and chunk_pixels must be at least 1")
        return s


# settings each worker of a cluster settles for itself (its GPUs, its CPU, its onnxruntime)
WORKER_RESOLVED = ("device", "precision", "backend", "batch_size", "chunk_pixels")


def resolve_settings(settings: PredictSettings, card: ModelCard, client=None) -> PredictSettings:
    """``settings.resolved(card)``, with ``auto`` settled where the model will run.

    On a ``--scheduler`` cluster, device, precision, backend, batch size and chunk size
    are settled by the workers (``client.run``), not by the client: a laptop without a
    GPU sends ``--device auto`` work to GPU workers as CUDA work, and an explicit
    ``--device cuda`` is checked there. Workers that settle differently (a mixed
    cluster) are an error naming them; name the settings explicitly then.
    """
    if not settings.scheduler or client is None or isinstance(client, LocalThreads):
        return settings.resolved(card)
    try:
        answers = client.run(_resolve_here, settings, card)
    except Exception as exc:  # noqa: BLE001 - no answer: the client's own view, as before
        log.debug("workers could not settle the settings (%s); using the client's", exc)
        answers = {}
    if not answers:
        return settings.resolved(card)
    return agree_on_settings(settings, answers, card)


def agree_on_settings(settings: PredictSettings, answers: dict, card: ModelCard) -> PredictSettings:
    """The settings every worker settled on (``answers``: worker address -> dict or error text)."""
    errors = {w: a for w, a in answers.items() if isinstance(a, str)}
    if errors:
        worker, problem = sorted(errors.items())[0]
        raise GeounetError(None, f"Dask worker {worker}: {problem}")
    views = {tuple(a[k] for k in WORKER_RESOLVED) for a in answers.values()}
    if len(views) > 1:
        seen = "; ".join(f"{w}: {'/'.join(str(a[k]) for k in WORKER_RESOLVED[:3])}" for w, a in sorted(answers.items()))
        raise GeounetError(None, f"the cluster's workers settle device/precision/backend differently ({seen}); "
                                 "give --device, --precision and --backend explicitly")
    from dataclasses import replace

    s = replace(settings.tiling_resolved(card), **dict(zip(WORKER_RESOLVED, views.pop())))
    s.workers = s.workers or default_workers(s.device, s.backend)  # not used on a cluster; recorded in run.json
    return s


def _resolve_here(settings: PredictSettings, card: ModelCard) -> dict | str:
    """On a worker: its own resolution of ``settings`` (or the one-line problem)."""
    try:
        s = settings.resolved(card)
    except (GeounetError, RuntimeError, ValueError) as exc:
        return str(exc)
    return {k: getattr(s, k) for k in WORKER_RESOLVED}


@dataclass
class SceneReport:
    scene: str
    out_dir: str | None = None
    ok: bool = False
    error: str | None = None
    seconds: float = 0.0
    tiles: dict = field(default_factory=dict)


def output_dir_for(scene: str | Path, out_root: str | Path) -> Path:
    """``OUTDIR/<scene stem>``: the stem is a bare file name, so it cannot leave OUTDIR."""
    stem = Path(scene).name.split(".")[0] or "scene"
    return Path(out_root) / stem


class _Stitcher:
    """Collects chunk buffers and hands each region of the grid to ``sink`` once all its chunks are in."""

    def __init__(self, grid: TileGrid, sink: "_Stage1Sink | _FinalSink") -> None:
        self.sink = sink
        self.by_chunk: dict[tuple[int, int], list] = defaultdict(list)
        for region in grid.regions():
            for c in region.chunks:
                self.by_chunk[c].append(region)
        self.pending: dict = {}  # region -> {chunk index: (probabilities, valid) cut to the region}

    def add(self, result: ChunkResult) -> None:
        for region in self.by_chunk.pop(result.index):
            rows, cols = region.box.relative_to(result.box)
            if len(region.chunks) == 1:  # only this chunk covers it: final now, no copy
                probs = None if result.probabilities is None else result.probabilities[:, rows, cols]
                self.sink.write(region.box, probs, None if result.valid is None else result.valid[rows, cols])
                continue
            probs = None if result.probabilities is None else result.probabilities[:, rows, cols].copy()
            valid = None if result.valid is None else result.valid[rows, cols].copy()
            parts = self.pending.setdefault(region, {})
            parts[result.index] = (probs, valid)
            if len(parts) == len(region.chunks):
                del self.pending[region]
                total, valid = None, None
                for key in sorted(parts):  # fixed order: identical sums whatever order chunks finished in
                    p, v = parts[key]
                    if p is not None:
                        total = p if total is None else total + p
                    valid = v if valid is None else valid  # every chunk read the same scene mask here
                self.sink.write(region.box, total, valid)


class _Stage1Sink:
    """Regions -> the stage-1 raster (working grid, uint16 probabilities); used when resampling."""

    def __init__(self, dst: rasterio.io.DatasetWriter) -> None:
        self.dst = dst

    def write(self, box: Box, probabilities: np.ndarray | None, valid: np.ndarray | None) -> None:
        if probabilities is None:
            return  # all nodata: leave the sparse stage-1 blocks empty
        dn = np.rint(np.clip(probabilities, 0.0, 1.0) * STAGE_SCALE).astype(np.uint16)
        self.dst.write(dn, window=Window(box.col0, box.row0, box.width, box.height))


class _FinalSink:
    """Regions -> the final uint8 scores and classes, directly (working grid = scene grid)."""

    def __init__(self, scores: rasterio.io.DatasetWriter, classes: rasterio.io.DatasetWriter) -> None:
        self.scores, self.classes = scores, classes

    def write(self, box: Box, probabilities: np.ndarray | None, valid: np.ndarray | None) -> None:
        window = Window(box.col0, box.row0, box.width, box.height)
        if probabilities is None:  # every tile here was nodata
            self.scores.write(np.full((self.scores.count, box.height, box.width), NODATA, np.uint8), window=window)
            self.classes.write(np.full((box.height, box.width), NODATA, np.uint8), 1, window=window)
            return
        scores, classes = finalize_block(probabilities, valid)
        self.scores.write(scores, window=window)
        self.classes.write(classes, 1, window=window)


def _write_cogs(folder: Path, rasters: tuple[tuple[str, str], ...]) -> None:
    """``NAME.tiled.tif`` -> ``NAME.tif`` COGs, one thread each (GDAL releases the GIL).

    Building overviews is single-threaded in GDAL, so the rasters run side by side.
    Measured on a 4096^2 scene's scores and classes (4 runs, same files): 0.58-0.83 s
    one after the other with the COG driver's own overviews, 0.38-0.61 s like this.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str, resampling: str) -> None:
        write_cog(folder / f"{name}.tiled.tif", folder / f"{name}.tif", resampling)
        (folder / f"{name}.tiled.tif").unlink()

    with ThreadPoolExecutor(max(1, len(rasters) - 1), thread_name_prefix="geounet-cog") as pool:
        others = [pool.submit(one, *r) for r in rasters[1:]]
        one(*rasters[0])
        for f in others:
            f.result()


def _blocks(width: int, height: int, size: int = 1024) -> Iterator[Window]:
    for r in range(0, height, size):
        for c in range(0, width, size):
            yield Window(c, r, min(size, width - c), min(size, height - r))


def _fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "sha256": file_sha256(path)}


def predict_scene(scene: str | Path, out_root: str | Path, model_path: str | Path, settings: PredictSettings, client) -> SceneReport:
    """Predict one scene into ``OUTDIR/<stem>/`` (scores.tif, classes.tif, run.json)."""

    t_start = time.perf_counter()
    scene = Path(scene)
    card = read_card(model_path)
    s = resolve_settings(settings, card, client)
    final_dir = output_dir_for(scene, out_root)
    with open_scene(scene) as src:
        check_scene(src, card)
        working = working_grid(src, card, s.resample_tolerance)
        scene_res = ground_resolution(src.crs, src.transform, src.width, src.height)
        scene_crs, scene_transform, width, height = src.crs, src.transform, src.width, src.height
    if working.resampled:
        log.info(
            "%s: ground resolution %.3g m/px differs from the model's %.3g m/px: resampling to a %dx%d working grid "
            "on read and back to the scene's %dx%d grid on output",
            scene, scene_res, card.resolution_m, working.width, working.height, width, height,
        )
    chunk_tiles = max(1, s.chunk_pixels // (s.tile_size - s.overlap))
    grid = TileGrid(working.height, working.width, s.tile_size, s.overlap, chunk_tiles)

    tmp = final_dir.parent / f".{final_dir.name}.partial-{os.getpid()}"
    try:
        tmp.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise OutputError(final_dir.parent, f"cannot write output folder ({exc.strerror or exc})") from None
    try:
        timings: dict[str, float] = {}
        scene_grid = (scene_crs, scene_transform, width, height)
        vector_client = None
        if s.vector:  # worker processes start in the background while the chunks run
            vector_client = _vector_client(client, s, -(-width // s.vector_block) * -(-height // s.vector_block))
        t0 = time.perf_counter()
        if working.resampled:  # stage 1 on the working grid, then warped back to the scene's grid
            stage1 = tmp / "stage1_probabilities.tif"
            tiles = _run_chunks(scene, working, grid, card, Path(model_path), s, client, _stage1_writer(stage1, working, card))
            timings["predict_and_stitch_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            _finalize(scene, stage1, working, card, tmp, scene_grid)
            stage1.unlink()
            timings["finalize_s"] = time.perf_counter() - t0
        else:  # the stitched regions are final: straight to uint8 scores and classes
            tiles = _run_chunks(scene, working, grid, card, Path(model_path), s, client, _final_writer(tmp, card, scene_grid))
            timings["predict_and_stitch_s"] = time.perf_counter() - t0
            timings["finalize_s"] = 0.0

        t0 = time.perf_counter()
        _write_cogs(tmp, (("scores", "AVERAGE"), ("classes", "NEAREST")))
        timings["cog_s"] = time.perf_counter() - t0

        vector = None
        if s.vector:
            from geounet.engine.vector_stage import vectorize_scene

            t0 = time.perf_counter()
            pool = vector_client if isinstance(vector_client, VectorPool) else None
            vector_client = pool.get(client) if pool else vector_client
            vector = vectorize_scene(tmp / "classes.tif", tmp / "scores.tif", tmp / "features.gpkg", card, vector_client,
                                     rules=rules_with_overrides(s.postprocess), block=s.vector_block)
            vector["ran_on"] = ("dask cluster" if s.scheduler else
                                "local worker processes" if vector_client is not client else "in-process threads")
            timings["vectorize_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        run = {
            "geounet_version": __version__,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "input": _fingerprint(scene) | {
                "crs": scene_crs.to_string(), "transform": list(scene_transform)[:6], "width": width, "height": height,
                "ground_resolution_m": scene_res,
            },
            "model": {"path": str(Path(model_path).resolve()), "name": card.name, "sha256": file_sha256(model_path),
                      "classes": card.class_names, "resolution_m": card.resolution_m},
            "settings": asdict(s) | {"chunk_tiles": chunk_tiles},
            "working_grid": {"resampled": working.resampled, "width": working.width, "height": working.height,
                             "resolution_m": card.resolution_m if working.resampled else scene_res},
            "tiles": tiles,
            "vector": vector,
            "timings": timings,
            "outputs": {
                "scores.tif": {"dtype": "uint8", "probability": "DN / 254", "nodata": NODATA, "bands": card.class_names},
                "classes.tif": {"dtype": "uint8", "values": dict(enumerate(card.class_names)), "nodata": NODATA},
            } | ({"features.gpkg": vector["layers"]} if vector else {}),
        }
        from geounet.io.stac import finish_scene_folder  # quicklook.png + item.json in tmp, listed in run["outputs"]
        finish_scene_folder(tmp, final_dir.name, scene, card, run)
        (tmp / "run.json").write_text(json.dumps(run, indent=2))
        _replace_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s: done in %.1f s (%d tiles run, %d nodata tiles skipped) -> %s", scene, timings["total_s"],
             tiles["run"], tiles["skipped"], final_dir)
    return SceneReport(str(scene), str(final_dir), True, None, timings["total_s"], tiles)


def rules_with_overrides(overrides: dict | None) -> dict:
    """``DEFAULT_RULES`` with per-kind field overrides, e.g. ``{"building": {"split_m": 3.0}}``."""
    from dataclasses import replace as _replace

    from geounet.compute.postprocess import DEFAULT_RULES

    rules = dict(DEFAULT_RULES)
    for kind, fields in (overrides or {}).items():
        if kind not in rules:
            raise GeounetError(None, f"postprocess: unknown class kind {kind!r} (one of {', '.join(rules)})")
        try:
            rules[kind] = _replace(rules[kind], **fields)
        except TypeError as exc:
            raise GeounetError(None, f"postprocess.{kind}: {exc}") from None
    return rules


@contextmanager
def _stage1_writer(stage1: Path, working: WorkingGrid, card: ModelCard) -> Iterator[_Stage1Sink]:
    profile = tiled_profile(working.crs_wkt, working.affine, working.width, working.height, len(card.classes), "uint16")
    with rasterio.open(stage1, "w", **profile) as dst:
        yield _Stage1Sink(dst)


@contextmanager
def _final_writer(tmp: Path, card: ModelCard, scene_grid) -> Iterator[_FinalSink]:
    crs, transform, width, height = scene_grid
    n = len(card.classes)
    with rasterio.open(
        tmp / "scores.tiled.tif", "w", **tiled_profile(crs, transform, width, height, n, "uint8", NODATA)
    ) as scores_ds, rasterio.open(
        tmp / "classes.tiled.tif", "w", **tiled_profile(crs, transform, width, height, 1, "uint8", NODATA)
    ) as classes_ds:
        describe_scores(scores_ds, card)
        describe_classes(classes_ds, card)
        yield _FinalSink(scores_ds, classes_ds)


@contextmanager
def _stitching(scene, grid: TileGrid, s: PredictSettings, writer) -> Iterator["_Tally"]:
    """Open the writer and a progress bar; yield the :class:`_Tally` chunk results go to."""
    from tqdm import tqdm

    with writer as sink, tqdm(
        total=grid.n_tiles, unit="tile", desc=Path(scene).name, disable=True if s.quiet else None, leave=False,
    ) as bar:
        tally = _Tally(_Stitcher(grid, sink), bar)
        yield tally
        if tally.stitcher.pending:
            raise RuntimeError(f"internal error: {len(tally.stitcher.pending)} regions never completed")


class _Tally:
    """Hands chunk results to the stitcher, one at a time (any thread), and counts tiles."""

    def __init__(self, stitcher: _Stitcher, bar) -> None:
        import threading

        self.stitcher, self.bar = stitcher, bar
        self.run = self.skipped = 0
        self._lock = threading.Lock()  # the output files take one writer at a time

    def take(self, result: ChunkResult) -> None:
        with self._lock:
            self.stitcher.add(result)
            self.run += result.tiles_run
            self.skipped += result.tiles_skipped
            self.bar.update(result.tiles_run + result.tiles_skipped)

    def report(self, grid: TileGrid, n_chunks: int) -> dict:
        return {"total": grid.n_tiles, "run": self.run, "skipped": self.skipped, "chunks": n_chunks,
                "tile_size": grid.tile_size, "overlap": grid.overlap}


def _run_chunks(scene, working, grid, card, model_path, s, client, writer) -> dict:
    """Run the chunk tasks and stitch their results as they arrive.

    ``writer``: a context manager giving the sink each completed region goes to
    (``_final_writer`` or, when the working grid is resampled, ``_stage1_writer``).

    Local runs (``client`` a :class:`~geounet.local.LocalThreads`): dask's threaded
    scheduler (:func:`_run_chunks_threaded`). On a dask.distributed client, a bounded
    number of futures in flight; only paths and small geometry objects travel through
    the scheduler; each worker process loads the model once (``infer.cached_model``). A
    chunk whose worker dies is recomputed elsewhere by the scheduler; a lost scheduler
    raises :class:`ClusterError`.
    """
    if isinstance(client, LocalThreads):
        return _run_chunks_threaded(scene, working, grid, model_path, s, client, writer)
    from distributed import as_completed

    chunks = [c.index for c in grid.chunks()]
    in_flight_max = max(2, 2 * cluster_threads(client, s.workers))
    with _stitching(scene, grid, s, writer) as tally, _cluster_errors(client, scene):
        submit = lambda idx: client.submit(  # noqa: E731
            predict_chunk, str(scene), working, grid, idx, str(model_path), s.device, s.precision, s.batch_size, s.backend,
            key=f"chunk-{Path(scene).name}-{idx[0]}-{idx[1]}-{time.monotonic_ns()}", retries=2, pure=False,
        )
        queue = iter(chunks)
        futures = as_completed([submit(i) for _, i in zip(range(in_flight_max), queue)])
        for fut in futures:
            result: ChunkResult = fut.result()
            fut.release()
            tally.take(result)
            nxt = next(queue, None)
            if nxt is not None:
                futures.add(submit(nxt))
    return tally.report(grid, len(chunks))


def _run_chunks_threaded(scene, working, grid, model_path, s, local: LocalThreads, writer) -> dict:
    """The chunk tasks of a local run on dask's threaded scheduler, stitched as they finish.

    The graph is one ``predict_chunk`` task per chunk, each followed by a task that hands
    its result to the stitcher. Dask runs a chunk's stitch task as soon as the chunk is
    done and then drops the chunk's buffer, so memory holds a few chunks, whatever the
    scene's size. Keys sort in raster order, which dask's ordering follows, so regions
    complete row by row.
    """
    import dask
    import dask.threaded

    chunks = [c.index for c in grid.chunks()]
    width = len(str(max(max(i) for i in chunks)))
    with _stitching(scene, grid, s, writer) as tally:
        stitched = []
        for idx in chunks:
            name = f"{idx[0]:0{width}d}-{idx[1]:0{width}d}"
            part = dask.delayed(predict_chunk, pure=False)(
                str(scene), working, grid, idx, str(model_path), s.device, s.precision, s.batch_size, s.backend,
                local.threads, dask_key_name=f"geounet-chunk-{name}")
            stitched.append(dask.delayed(tally.take, pure=False)(part, dask_key_name=f"geounet-stitch-{name}"))
        # the scheduler as a function: by name, dask would import dask.distributed to look for a client
        dask.compute(*stitched, scheduler=dask.threaded.get, num_workers=local.workers)
    return tally.report(grid, len(chunks))


class ClusterError(RuntimeError):
    """The Dask cluster failed under a run (scheduler lost or unreachable, workers dying).

    Not a :class:`GeounetError`: it is not about one scene, so a batch stops at once
    (the scene that was running leaves no output folder). ``str()`` is one line.
    """

    def __init__(self, address: str | None, problem: str) -> None:
        self.address, self.problem = address, problem
        super().__init__(f"{address}: {problem}" if address else problem)

    def __reduce__(self):
        return (type(self), (self.address, self.problem))


def lost_cluster(exc: BaseException) -> bool:
    """Whether ``exc`` is how dask.distributed reports a lost scheduler or connection (outside the chunk loop)."""
    if isinstance(exc, (CancelledError, TimeoutError)):
        return True
    comm = sys.modules.get("distributed.comm.core")  # never imported by a local run
    return comm is not None and isinstance(exc, comm.CommClosedError)


def _scheduler_address(client) -> str | None:
    try:
        return client.scheduler.address
    except AttributeError:
        return None


def cluster_threads(client, default: int) -> int:
    """Threads summed over the cluster's workers (``default`` when it cannot say)."""
    if isinstance(client, LocalThreads):
        return client.workers
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 - no workers yet, or scheduler busy
        return default


@contextmanager
def _cluster_errors(client, scene: Path):
    """Turn the ways a cluster fails (not a task's own error) into one-line :class:`ClusterError`."""
    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    try:
        yield
    except KilledWorker as exc:
        raise ClusterError(_scheduler_address(client), f"{scene.name}: a chunk task killed {exc.args[1] if len(exc.args) > 1 else 'its'} "
                           "workers several times (out of memory?); no output written for this scene") from None
    except (CancelledError, CommClosedError, OSError, TimeoutError) as exc:
        if isinstance(exc, OSError) and client.status == "running" and not isinstance(exc, ConnectionError):
            raise  # a file error of this scene, not the cluster
        raise ClusterError(_scheduler_address(client), f"lost the Dask scheduler while predicting {scene.name} "
                           f"({type(exc).__name__}); no output written for this scene") from None


def _finalize(scene: Path, stage1: Path, working: WorkingGrid, card: ModelCard, tmp: Path, scene_grid) -> None:
    """Stage 2: stage-1 probabilities on the scene grid -> tiled uint8 scores and classes."""
    crs, transform, width, height = scene_grid
    with open_scene(scene) as src, rasterio.open(stage1) as st1:
        view = (
            WarpedVRT(st1, crs=crs, transform=transform, width=width, height=height, resampling=Resampling.bilinear)
            if working.resampled else st1
        )
        with view, _final_writer(tmp, card, scene_grid) as sink:
            for window in _blocks(width, height):
                probs = view.read(window=window).astype(np.float32) / STAGE_SCALE
                valid = src.dataset_mask(window=window) > 0
                box = Box(window.row_off, window.col_off, window.row_off + window.height, window.col_off + window.width)
                sink.write(box, probs, valid)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a complete output folder into place; an older one is removed only after."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_root(out_root: str | Path) -> Path:
    out = Path(out_root)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".geounet-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(out, f"cannot write output folder ({exc.strerror or exc})") from None
    return out


def make_client(settings: PredictSettings, model_path: str | Path | None = None):
    """A client for the chunk tasks: the given dask.distributed scheduler, else local threads.

    With ``model_path``, the model is loaded now (``warm_workers`` on every worker of a
    cluster, ``LocalThreads.load_model`` locally), so its start-up is paid once per
    process, before the first scene.

    With ``settings.scheduler`` (``tcp://HOST:PORT``) the work goes to an existing
    cluster (``dask scheduler`` + ``dask worker``, dask-jobqueue, Kubernetes); the scene
    and model paths must then be readable by every worker (a shared filesystem). Each
    worker process loads the model once and keeps it. The dashboard link is logged.

    Locally (:class:`~geounet.local.LocalThreads`), ``workers`` threads (default
    ``infer.default_workers``: one per core for ONNX Runtime, one for torch) of dask's
    threaded scheduler share one process and one copy of the model; the model's own
    threads are split between them so the cores are not oversubscribed. Measured
    (benchmarks/README.md, 2 cores): faster than an in-process dask.distributed cluster
    and than worker processes, with one model in memory and no worker start-up; an
    in-process dask.distributed client is started only for code that needs one.
    """
    if settings.scheduler:
        from distributed import Client

        try:
            client = Client(settings.scheduler, timeout=_CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(settings.scheduler, f"cannot connect to the Dask scheduler ({exc})") from None
        link = dashboard_link(client)
        if link:
            log.info("Dask dashboard: %s", link)
        if model_path is not None:
            warm_workers(client, model_path, resolve_settings(settings, read_card(model_path), client))
        return client
    resolved = settings.resolved(read_card(model_path)) if model_path is not None else None
    local = LocalThreads(resolved.workers if resolved is not None else settings.workers or 1)
    if resolved is not None:
        local.load_model(model_path, resolved.device, resolved.backend)
    return local


_CONNECT_TIMEOUT = "20s"


def warm_workers(client, model_path: str | Path, resolved: PredictSettings) -> None:
    """Load the model into every worker process now (the per-process cache of ``predict_chunk``).

    ``resolved``: settings from :meth:`PredictSettings.resolved` (device and backend known).
    Loading the model takes seconds; done here it is not part of the first scene. Best
    effort: a worker that cannot load the model says so in the chunk task's own error.
    """
    try:
        client.run(_load_model_here, str(Path(model_path).resolve()), resolved.device, resolved.backend)
    except Exception as exc:  # noqa: BLE001 - the chunk tasks report real problems
        log.debug("warming the workers failed: %s", exc)


def _load_model_here(model_path: str, device: str, backend: str = "torch", dask_worker=None) -> None:
    threads = threads_per_task(dask_worker) if backend == "onnx" else None  # as predict_chunk's tasks will ask
    cached_model(model_path, device, backend, threads)


def dashboard_link(client) -> str | None:
    """The scheduler's dashboard URL (``http://HOST:PORT/status``), or None when it has no HTTP server."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - a link is a convenience, never a failure
        return None


class VectorPool:
    """Local Dask worker processes for the vector stage, started in a background thread.

    Regularising building outlines (buildingregulariser) is pure Python: the GIL lets
    the in-process cluster's threads run it one at a time, worker processes run it on
    every core (measured on 2 cores, 2,260 roofs: 12.7 s -> 7.6 s, benchmarks/README.md).
    The pool is made on first use, kept for the rest of the batch, and closed by
    :func:`close_client`. Starting takes ~2 s, overlapped with the scene's prediction.
    """

    def __init__(self, workers: int) -> None:
        import threading

        self.client = None
        self._error: BaseException | None = None
        self._warned = False
        self._thread = threading.Thread(target=self._start, args=(workers,), name="geounet-vector-pool", daemon=True)
        self._thread.start()

    def _start(self, workers: int) -> None:
        try:
            import dask
            from distributed import Client, LocalCluster

            # forkserver: workers are forked from a clean helper process, so they neither
            # copy this process's torch threads (fork) nor re-run the caller's __main__
            # (spawn; which fails for code from stdin or a notebook).
            with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                       scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
            self.client = Client(cluster)
            self.client.run(_import_vector_stage)  # imports paid now, not by the first block
        except BaseException as exc:  # noqa: BLE001 - reported by get()
            self._error = exc

    def get(self, fallback):
        """The pool's client, or ``fallback`` (logged once) when the workers could not start."""
        self._thread.join()
        if self._error is not None:
            if not self._warned:
                log.warning("local vector worker processes did not start (%s); vectorizing in this process",
                            str(self._error).splitlines()[0] if str(self._error) else type(self._error).__name__)
                self._warned = True
            return fallback
        return self.client

    def close(self) -> None:
        self._thread.join()
        if self.client is not None:
            close_client(self.client)


def _import_vector_stage() -> None:
    import geounet.engine.vector_stage  # noqa: F401


_VECTOR_POOLS: dict[int, VectorPool] = {}  # id(main client) -> its pool


def _vector_client(client, s: PredictSettings, n_blocks: int):
    """Where the vector tasks of a scene run: the cluster itself, the local process pool, or local threads."""
    use_processes = s.vector_processes if s.vector_processes is not None else n_blocks >= 4
    if s.scheduler or not use_processes or cpu_cores() < 2 and s.vector_processes is None:
        if isinstance(client, LocalThreads):
            client.start_distributed()  # in the background, while the chunks run
        return client  # a real cluster has its own worker processes; one core gains nothing
    if id(client) not in _VECTOR_POOLS:
        _VECTOR_POOLS[id(client)] = VectorPool(min(cpu_cores(), 8))
    return _VECTOR_POOLS[id(client)]


def close_client(client) -> None:
    """Close a client from :func:`make_client`, its local cluster and vector pool, if any."""
    pool = _VECTOR_POOLS.pop(id(client), None)
    if pool is not None:
        pool.close()
    if isinstance(client, LocalThreads):
        client.close()
        return
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def predict_batch(scenes: Iterable[str | Path], out_root: str | Path, model_path: str | Path, settings: PredictSettings) -> list[SceneReport]:
    """Predict several scenes; a scene that fails is reported and the others still run."""
    scenes = [Path(p) for p in scenes]
    read_card(model_path)  # a bad model fails the whole batch at once, before any work
    out = check_output_root(out_root)
    seen: dict[Path, Path] = {}
    for p in scenes:
        d = output_dir_for(p, out)
        if d in seen:
            raise GeounetError(p, f"writes to the same output folder {d} as {seen[d]}: rename one of them")
        seen[d] = p
    reports = []
    client = make_client(settings, model_path)
    try:
        for p in scenes:
            t0 = time.perf_counter()
            try:
                reports.append(predict_scene(p, out, model_path, settings, client))
            except GeounetError as exc:
                reports.append(SceneReport(str(p), None, False, str(exc), time.perf_counter() - t0))
    finally:
        close_client(client)
    return reports
