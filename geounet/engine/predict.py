"""Predicting scenes end to end: the chunk tasks, stitching, stage 2, COGs, vectors and run.json.

The path of one tile, read to polygon, in three files: ``engine/tiles.py``
(``predict_chunk`` reads the chunk's window, runs the model, blends its tiles),
``engine/stitch.py`` (each region of the grid written once all chunks that overlap it
are in) and ``engine/vector_stage.py`` (``classes.tif`` polygonized block by block,
merged exactly across blocks). This module runs them in order for one scene. When the
scene is resampled for the model, regions go to a stage-1 raster on the working grid
that stage 2 reads back warped onto the scene's grid. Everything is written in a hidden
folder renamed to ``OUTDIR/<scene stem>`` only when complete (``geounet.io.folders``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from geounet import __version__
from geounet.compute.grid import Box, GeoGrid, TileGrid, blocks
from geounet.engine.executors import (
    ChunkTask,
    ClusterError,
    DistributedExecutor,
    Executor,
    ThreadedExecutor,
    lost_cluster,
)
from geounet.engine.settings import PredictSettings, resolve_settings, rules_with_overrides
from geounet.engine.stitch import (
    FinalSink,
    Stage1Sink,
    final_writer,
    progress_bar,
    stage1_writer,
    stitching,
    tile_counts,
)
from geounet.engine.tiles import predict_chunk
from geounet.errors import GeounetError, scene_failure
from geounet.io.aoi import area_of_interest, to_pixels
from geounet.io.coverage import Coverage, aoi_tiles, scene_coverage
from geounet.io.folders import check_output_root, output_dir_for, recover_interrupted, replace_dir, staged_folder
from geounet.io.locks import locked_reason, scene_lock
from geounet.io.radiometry import ByteScale, model_byte_scale
from geounet.io.rasters import BLOCK, NODATA, STAGE_SCALE, write_cog
from geounet.io.remote import as_scene, gdal_path, scene_name
from geounet.io.run_record import InputRecord, ModelRecord, RunRecord, input_identity
from geounet.io.scene import (
    MIN_FIELD_OF_VIEW,
    WorkingGrid,
    check_scene,
    ground_resolution,
    open_scene,
    scene_ground_size,
    working_grid,
)
from geounet.io.stac_search import StacSearch, stac_scenes
from geounet.models.card import ModelCard, decision_weight_array, file_sha256, read_card
from geounet.models.registry import is_model_name, pick_variant

if TYPE_CHECKING:
    from geounet.engine.vector_stage import VectorStream

log = logging.getLogger("geounet")


@dataclass
class SceneReport:
    """How one scene of a batch went: its output folder, or the one-line error."""

    scene: str
    out_dir: str | None = None
    ok: bool = False
    error: str | None = None
    seconds: float = 0.0
    tiles: dict[str, int] = field(default_factory=dict)


@dataclass
class ScenePlan:
    """One scene's work, settled before anything is written: grids, resolved settings and tiling."""

    scene: str | Path  # a remote scene stays its string (geounet.io.remote)
    model_path: Path
    card: ModelCard
    settings: PredictSettings  # resolved
    grid: GeoGrid  # the scene's own grid (outputs are written on it)
    crs: CRS
    ground_resolution_m: float  # of the scene, at its centre
    working: WorkingGrid  # the grid the model runs on
    tiles: TileGrid
    aoi: Any = None  # the area of interest on the scene's CRS (shapely), None: the whole scene
    byte_scale: ByteScale | None = None  # the scene's bands scaled to 8 bits on read (settings.rescale); None: as read

    @property
    def chunk_tiles(self) -> int:
        return self.tiles.chunk_tiles

    @property
    def decision_weights(self) -> np.ndarray | None:
        """Each class's factor on its probability before the winning class is picked; None: all 1."""
        return decision_weight_array(self.card, self.settings.decision_weights)

    @property
    def scene_grid(self) -> tuple[CRS, Any, int, int]:
        """(CRS, affine, width, height) of the scene, as the output rasters are written."""
        return self.crs, self.grid.affine, self.grid.width, self.grid.height


def plan_scene(scene: str | Path, model_path: Path, settings: PredictSettings, executor: Executor | None) -> ScenePlan:
    """Check the scene against the model and settle the settings and grids (reads only the header)."""
    card = read_card(model_path)
    s = resolve_settings(settings, card, executor, model_path)
    with open_scene(scene) as src:
        check_scene(src, card, rescale=s.rescale == "auto")
        byte_scale = model_byte_scale(src, card) if s.rescale == "auto" else None
        working = working_grid(src, card, s.resample_tolerance, s.budget)
        res = ground_resolution(src.crs, src.transform, src.width, src.height)
        if min(working.width, working.height) < MIN_FIELD_OF_VIEW:
            log.warning(
                "%s: only %dx%d px at the model's %.3g m/px, less than the %d px a U-Net needs to see context: "
                "results will be unreliable",
                scene,
                working.width,
                working.height,
                card.resolution_m if working.resampled else res,
                MIN_FIELD_OF_VIEW,
            )
        grid = GeoGrid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height)
        crs = src.crs
        dtypes = sorted({src.dtypes[b - 1] for b in card.bands})
    if byte_scale is not None:
        log.info(
            "%s: %s bands scaled to 8 bits for model %s: each band's 2nd and 98th percentiles (%s) to %g and %g",
            scene,
            "/".join(dtypes),
            card.name,
            ", ".join(f"{lo:.4g}-{hi:.4g}" for lo, hi in zip(byte_scale.low, byte_scale.high, strict=True)),
            *byte_scale.target,
        )
    if working.resampled:
        log.info(
            "%s: ground resolution %.3g m/px differs from the model's %.3g m/px: resampling to a %dx%d working "
            "grid on read and back to the scene's %dx%d grid on output",
            scene,
            res,
            card.resolution_m,
            working.width,
            working.height,
            grid.width,
            grid.height,
        )
    assert s.chunk_pixels is not None and s.tile_size is not None and s.overlap is not None
    chunk_tiles = max(1, s.chunk_pixels // (s.tile_size - s.overlap))
    tiles = TileGrid(working.height, working.width, s.tile_size, s.overlap, chunk_tiles)
    area = area_of_interest(s.aoi, s.bbox, s.bbox_crs)
    aoi = None if area is None else area.in_crs(grid.crs_wkt)
    return ScenePlan(scene, model_path, card, s, grid, crs, res, working, tiles, aoi, byte_scale)


def resolve_model(model: str | Path, scene: str | Path) -> tuple[Path, str | None]:
    """The model file for ``scene``: ``model`` itself, or the variant of the bundled model it names.

    Returns ``(file, name)``; ``name`` is None when ``model`` is a file. A name picks the
    variant trained closest to the scene's ground resolution (``registry.pick_variant``).
    Reads the scene's header only; says nothing (``predict_scene`` logs the choice).
    """
    if not is_model_name(model):
        return Path(model), None
    with open_scene(scene) as src:
        dx, dy = scene_ground_size(src)
    chosen = pick_variant(str(model), math.sqrt(dx * dy))
    return chosen.path, str(model)


def predict_scene(
    scene: str | Path,
    out_root: str | Path,
    model: str | Path,
    settings: PredictSettings,
    executor: Executor,
    *,
    last: bool = False,
) -> SceneReport:
    """Predict one scene into ``OUTDIR/<stem>/``: scores.tif, classes.tif, features.gpkg, quicklook, item.json, run.json.

    ``model``: a model file, or the name of a bundled model (its variant closest to the scene's resolution).
    ``last``: no scene follows on this executor, so the model's memory is freed once the last
    chunk has run, before the COGs and the rest of the vector stage. It is freed there too when
    this scene's vector stage runs after the chunks on this process's cores (a later scene loads
    the model again).
    """
    t_start = time.perf_counter()
    scene = as_scene(scene)
    model_path, requested = resolve_model(model, scene)
    plan = plan_scene(scene, model_path, settings, executor)
    if requested is not None:  # said once, where the variant is used
        log.info(
            "%s: model %s: variant %s (%.3g m/px) for a %.3g m/px scene",
            plan.scene,
            requested,
            model_path.stem,
            plan.card.resolution_m,
            plan.ground_resolution_m,
        )
    final_dir = output_dir_for(plan.scene, out_root)
    timings: dict[str, float] = {}
    with staged_folder(final_dir) as tmp:
        vector_executor = stream = streaming = None
        if plan.settings.vector:  # worker processes start in the background while the chunks run
            n_blocks = -(-plan.grid.width // plan.settings.vector_block) * -(
                -plan.grid.height // plan.settings.vector_block
            )
            vector_executor = executor.vector_executor(n_blocks, plan.settings.vector_processes)
            if _vectors_while_predicting(plan, vector_executor):
                stream = streaming = _vector_stream(plan, tmp, vector_executor)
        try:
            # the model's memory is freed when no scene follows, and before a vector stage that runs after the chunks
            release = last or (vector_executor is not None and streaming is None)
            tiles = _predict_rasters(plan, tmp, executor, timings, streaming, release_model=release)
        finally:
            if stream is not None:
                stream.close()
        # all nodata is kept (a mosaic's empty tile is no error) but said: a failed download looks like this
        if tiles["run"] == 0 and tiles.get("skipped_aoi", 0) < tiles["total"]:  # (a missed area is said already)
            log.warning("%s: every pixel is nodata (its mask or nodata value): the outputs are all nodata", plan.scene)
        from geounet.io.stac import finish_scene_folder, write_scene_quicklook

        # drawn before the vector stage, so that its reads are not on top of that stage's memory
        quicklook = write_scene_quicklook(tmp, plan.scene, plan.card)
        vector = None
        if vector_executor is not None:
            vector = _vectorize(plan, tmp, stream, vector_executor, timings)
            vector["while_predicting"] = streaming is not None
        timings["total_s"] = time.perf_counter() - t_start
        record = _run_record(plan, tiles, vector, timings)
        record.model.requested = requested
        if quicklook is not None:
            record.outputs["quicklook.png"] = quicklook
        if plan.settings.web:  # first, so that item.json lists it
            _write_web(plan, tmp, final_dir.name, record, timings)
        finish_scene_folder(tmp, final_dir.name, plan.scene, plan.card, record)
        record.write(tmp)
        replace_dir(tmp, final_dir)
    log.info(
        "%s: done in %.1f s (%d tiles run, %d nodata tiles skipped) -> %s",
        plan.scene,
        timings["total_s"],
        tiles["run"],
        tiles["skipped"],
        final_dir,
    )
    return SceneReport(str(plan.scene), str(final_dir), True, None, timings["total_s"], tiles)


def _predict_rasters(
    plan: ScenePlan,
    tmp: Path,
    executor: Executor,
    timings: dict[str, float],
    stream: VectorStream | None = None,
    release_model: bool = False,
) -> dict[str, int]:
    """Coverage -> chunks with data -> stitched regions -> tiled ``scores``/``classes`` (via stage 1 when resampled) -> COGs.

    The scene's mask, read at low resolution first (``geounet.io.coverage``), says which
    chunks hold data: only those run, and stage 2 and the COGs skip the blocks none of
    them reaches, so a mostly empty scene costs what its data costs. ``stream``: the
    vector stage, handed each vector block of the final rasters as soon as it is written.
    ``release_model``: free the model's memory once the chunks are done (no scene follows, or the
    vector stage comes next on these cores).
    """
    on_block = stream.block_final if stream is not None else None
    t0 = time.perf_counter()
    coverage = scene_coverage(plan.scene, plan.working, plan.tiles)
    area_px, in_area = None, None
    if plan.aoi is not None:  # only the tiles meeting the area run; nodata outside it
        area_px = to_pixels(plan.aoi, plan.grid.affine)
        reach = math.ceil(max(coverage.scale)) + 1 if plan.working.resampled else 0
        in_area = aoi_tiles(area_px, plan.tiles, coverage.scale, reach)
        coverage = Coverage(plan.tiles, coverage.tiles & in_area, coverage.scale, coverage.scene_shape)
        if not in_area.any():
            log.warning("%s: the area of interest does not meet the scene: the outputs are all nodata", plan.scene)
    timings["coverage_s"] = time.perf_counter() - t0
    if not coverage.complete:
        log.debug(
            "%s: %d of %d chunks hold data (%d of %d tiles)",
            plan.scene,
            int(coverage.chunks.sum()),
            coverage.chunks.size,
            int(coverage.tiles.sum()),
            coverage.tiles.size,
        )
    t0 = time.perf_counter()
    if isinstance(executor, DistributedExecutor) and plan.settings.stitch_on == "workers":
        tiles = _predict_rasters_on_workers(plan, tmp, executor, coverage, area_px, timings, stream)  # COGs too
    else:
        if plan.working.resampled:  # stage 1 on the working grid, then warped back to the scene's grid
            stage1 = tmp / "stage1_probabilities.tif"
            tiles = run_chunks(plan, executor, stage1_writer(stage1, plan.working, plan.card), coverage)
            if release_model:
                executor.release_model()
            timings["predict_and_stitch_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            _finalize(plan, stage1, tmp, coverage, area_px, on_block)
            stage1.unlink()
            timings["finalize_s"] = time.perf_counter() - t0
        else:  # the stitched regions are final: straight to uint8 scores and classes
            writer = final_writer(
                tmp, plan.card, plan.scene_grid, area_px, on_block, plan.settings.vector_block, plan.decision_weights
            )
            tiles = run_chunks(plan, executor, writer, coverage)
            if release_model:
                executor.release_model()
            timings["predict_and_stitch_s"] = time.perf_counter() - t0
            timings["finalize_s"] = 0.0
        t0 = time.perf_counter()
        _write_scene_cogs(tmp, coverage)
        timings["cog_s"] = time.perf_counter() - t0
    if in_area is not None:
        tiles["skipped_aoi"] = int((~in_area).sum())  # tiles outside the area of interest, never run
    return tiles


def _predict_rasters_on_workers(
    plan: ScenePlan,
    tmp: Path,
    executor: DistributedExecutor,
    coverage: Coverage,
    area_px: Any,
    timings: dict[str, float],
    stream: VectorStream | None = None,
) -> dict[str, int]:
    """A cluster run: the workers blend and write whole blocks (``engine.worker_blocks``), then one worker
    task assembles them into the COGs (after stage 2 when resampled); the client only schedules.

    On the scene's grid, the block tasks also polygonize their blocks for ``stream`` (the vector stage).
    """
    from geounet.engine.worker_blocks import run_blocks

    s, grid = plan.settings, plan.tiles
    n_chunks = grid.shape_chunks[0] * grid.shape_chunks[1]
    chunks = coverage.chunk_indices()
    runs = None if len(chunks) == n_chunks else coverage.chunks
    folder = tmp / "blocks"
    t0 = time.perf_counter()
    not_run = grid.n_tiles - coverage.tiles_in_data_chunks
    with progress_bar(plan.scene, grid.n_tiles, s.quiet, not_run) as bar:
        written, counts = run_blocks(
            executor,
            grid,
            lambda i, j: _chunk_args(plan, executor, coverage, i, j),
            folder,
            plan.working.resampled,
            area_px,
            len(plan.card.classes),
            scene_name(plan.scene),
            s.vector_block,
            runs,
            lambda run, skipped: bar.update(run + skipped),
            *_polygonizing(stream, plan.working.resampled),
            plan.decision_weights,
        )
    timings["predict_and_stitch_s"] = time.perf_counter() - t0
    worker_timings = executor.client.submit(
        assemble_rasters, plan, str(tmp), written, coverage, area_px, pure=False, retries=1
    ).result()
    timings.update(worker_timings)
    folder.rmdir()
    return tile_counts(grid, counts["run"], n_chunks, len(chunks))


def _polygonizing(stream: VectorStream | None, resampled: bool) -> tuple[Any, Any, Any]:
    """``run_blocks``' polygonize, vector_jobs and on_polygons: the vector stage's, on the scene's grid only."""
    if stream is None or resampled:  # blocks on a working grid: polygonized after stage 2
        return None, None, None
    return stream.polygonizer(), stream.jobs, stream.block_polygonized


def assemble_rasters(
    plan: ScenePlan, tmp_dir: str, written: list[Any], coverage: Coverage, area_px: Any
) -> dict[str, float]:
    """Dask task (a cluster run): block files -> tiled rasters (stage 2 when resampled) -> the COGs.

    Returns its stages' seconds (``finalize_s``, ``cog_s``) for run.json.
    """
    from geounet.engine.worker_blocks import copy_blocks_into

    tmp = Path(tmp_dir)
    t0 = time.perf_counter()
    if plan.working.resampled:
        stage1 = tmp / "stage1_probabilities.tif"
        with stage1_writer(stage1, plan.working, plan.card) as sink1:
            copy_blocks_into(
                written, tmp / "blocks", lambda box, a: sink1.dst.write(a["probabilities"], window=_window(box))
            )
        _finalize(plan, stage1, tmp, coverage, area_px)
        stage1.unlink()
    else:
        with final_writer(tmp, plan.card, plan.scene_grid) as sink:

            def write(box: Any, a: dict[str, np.ndarray]) -> None:
                sink.scores.write(a["scores"], window=_window(box))
                sink.classes.write(a["classes"], 1, window=_window(box))

            copy_blocks_into(written, tmp / "blocks", write)
    t1 = time.perf_counter()
    _write_scene_cogs(tmp, coverage)
    return {"finalize_s": t1 - t0, "cog_s": time.perf_counter() - t1}


def _write_scene_cogs(tmp: Path, coverage: Coverage) -> None:
    """``tmp``'s tiled scores and classes -> their COGs, skipping the blocks no chunk with data reaches."""
    blocks = None if coverage.complete else coverage.scene_blocks(BLOCK)
    _write_cogs(tmp, (("scores", "AVERAGE"), ("classes", "NEAREST")), blocks)


def _window(box: Any) -> rasterio.windows.Window:
    return rasterio.windows.Window(box.col0, box.row0, box.width, box.height)


def _chunk_args(plan: ScenePlan, executor: Executor, coverage: Coverage, i: int, j: int) -> tuple[Any, ...]:
    """``predict_chunk``'s arguments for chunk ``(i, j)`` of ``plan``."""
    s, grid = plan.settings, plan.tiles
    return (
        gdal_path(plan.scene),
        plan.working,
        grid,
        (i, j),
        str(plan.model_path),
        s.device,
        s.precision,
        s.batch_size,
        s.backend,
        executor.task_threads,
        s.tta,
        None if plan.aoi is None else _chunk_slice(coverage.tiles, grid.chunk_tiles, i, j),
        plan.byte_scale,
    )


def run_chunks(
    plan: ScenePlan,
    executor: Executor,
    writer: AbstractContextManager[FinalSink] | AbstractContextManager[Stage1Sink],
    coverage: Coverage | None = None,
) -> dict[str, int]:
    """Run one ``predict_chunk`` task per chunk with data and stitch each result into ``writer``'s sink as it arrives.

    ``coverage``: the tiles that may hold data (default: every tile). A chunk with none
    is never scheduled: its tiles count as skipped and its part of the rasters stays
    unwritten (nodata). Returns the tile counts for run.json.
    """
    s, grid = plan.settings, plan.tiles
    coverage = coverage if coverage is not None else Coverage.everything(grid)
    chunks = coverage.chunk_indices()
    n_chunks = grid.shape_chunks[0] * grid.shape_chunks[1]
    width = len(str(max(grid.shape_chunks) - 1))  # zero-padded names sort in raster order
    tasks = [
        ChunkTask(f"{i:0{width}d}-{j:0{width}d}", predict_chunk, _chunk_args(plan, executor, coverage, i, j))
        for i, j in chunks
    ]
    runs = None if len(chunks) == n_chunks else coverage.chunks
    with stitching(plan.scene, grid, s.quiet, writer, runs, grid.n_tiles - coverage.tiles_in_data_chunks) as tally:
        executor.run_chunks(tasks, tally.take, scene_name(plan.scene))
    return tally.report(grid, n_chunks, len(chunks))


def _chunk_slice(tiles: np.ndarray, k: int, i: int, j: int) -> np.ndarray:
    """The (rows, columns) of ``tiles`` (one per tile of the grid) in chunk ``(i, j)`` of ``k`` x ``k`` tiles."""
    return tiles[i * k : (i + 1) * k, j * k : (j + 1) * k].copy()


def _vector_stream(plan: ScenePlan, tmp: Path, executor: Executor) -> VectorStream:
    """The scene's vector stage, ready to take blocks as they are final (``engine.vector_stage``)."""
    from geounet.engine.vector_stage import VectorStream

    s = plan.settings
    rules = rules_with_overrides(s.postprocess)
    return VectorStream(
        tmp / "features.gpkg", plan.card, executor, plan.grid, rules, s.vector_block, s.vector_format, plan.aoi
    )


def _vectors_while_predicting(plan: ScenePlan, vector_executor: Executor) -> bool:
    """Whether vector blocks are polygonized while the chunks run (``PredictSettings.vector_while_predicting``).

    Unset: yes, unless the model runs on the CPU and the vector tasks in this process's
    threads (``ThreadedExecutor``), where both would share the same cores.
    """
    chosen = plan.settings.vector_while_predicting
    if chosen is not None:
        return chosen
    return plan.settings.device != "cpu" or not isinstance(vector_executor, ThreadedExecutor)


def _vectorize(
    plan: ScenePlan, tmp: Path, stream: VectorStream | None, executor: Executor, timings: dict[str, float]
) -> dict[str, Any]:
    """The rest of the vector stage, once the COGs are written: timed as ``vectorize_s``.

    ``stream``: the stage that took blocks while the chunks ran; None: it starts now, on
    ``executor``, so its libraries and memory are taken only once the model's are freed.
    """
    from geounet.models.registry import trim_heap

    t0 = time.perf_counter()
    stream = stream or _vector_stream(plan, tmp, executor)
    vector = stream.finish(tmp / "classes.tif", tmp / "scores.tif")
    vector["ran_on"] = stream.executor.description
    trim_heap()  # what the stage freed goes back to the system before the next scene's model loads
    timings["vectorize_s"] = time.perf_counter() - t0
    return vector


def _write_web(plan: ScenePlan, tmp: Path, name: str, record: RunRecord, timings: dict[str, float]) -> None:
    """``tmp/web/``: the map of the scene, its classes and features (``geounet.web``); listed in the record.

    ``name``: the output folder's (the page's title).
    """
    from geounet.web.folder import write_scene_web

    t0 = time.perf_counter()
    summary = write_scene_web(tmp, plan.scene, plan.card, record.to_dict(), title=name)
    timings["web_s"] = time.perf_counter() - t0  # the record holds this dict: run.json gets it
    timings["total_s"] += timings["web_s"]
    record.outputs["web/index.html"] = {"bytes": summary.bytes, "tiles": summary.tiles, "features": summary.features}


def _run_record(
    plan: ScenePlan, tiles: dict[str, int], vector: dict[str, Any] | None, timings: dict[str, float]
) -> RunRecord:
    card, grid, working = plan.card, plan.grid, plan.working
    return RunRecord(
        geounet_version=__version__,
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        input=InputRecord(
            **input_identity(plan.scene),
            crs=plan.crs.to_string(),
            transform=list(grid.transform),
            width=grid.width,
            height=grid.height,
            ground_resolution_m=plan.ground_resolution_m,
        ),
        model=ModelRecord(
            path=str(plan.model_path.resolve()),
            name=card.name,
            sha256=file_sha256(plan.model_path),
            classes=card.class_names,
            resolution_m=card.resolution_m,
        ),
        settings=asdict(plan.settings)
        | {"chunk_tiles": plan.chunk_tiles}
        | ({} if plan.byte_scale is None else {"byte_scale": plan.byte_scale.to_dict()}),
        working_grid={
            "resampled": working.resampled,
            "width": working.width,
            "height": working.height,
            "resolution_m": card.resolution_m if working.resampled else plan.ground_resolution_m,
        },
        tiles=tiles,
        vector=vector,
        timings=timings,
        outputs={
            "scores.tif": {"dtype": "uint8", "probability": "DN / 254", "nodata": NODATA, "bands": card.class_names},
            "classes.tif": {"dtype": "uint8", "values": dict(enumerate(card.class_names)), "nodata": NODATA},
        }
        | (vector["files"] if vector else {}),  # features.gpkg or features.<layer>.fgb: {layer: rows}
    )


def _finalize(
    plan: ScenePlan,
    stage1: Path,
    tmp: Path,
    coverage: Coverage | None = None,
    area_px: Any = None,
    on_block: Callable[[Box, np.ndarray, np.ndarray], None] | None = None,
) -> None:
    """Stage 2: stage-1 probabilities warped onto the scene grid -> tiled uint8 scores and classes.

    Works through 1024-pixel blocks of the scene grid; with ``coverage``, a block that no
    tile with data reaches is skipped (left unwritten: nodata). ``area_px``: the area of
    interest in scene pixels (nodata outside it).
    """
    g = plan.grid
    size = 1024
    keep = None if coverage is None or coverage.complete else coverage.scene_blocks(size)
    with (
        open_scene(plan.scene) as src,
        rasterio.open(stage1) as st1,
        WarpedVRT(
            st1,
            crs=g.crs_wkt,
            transform=g.affine,
            width=g.width,
            height=g.height,
            resampling=Resampling.bilinear,
        ) as view,
        final_writer(
            tmp, plan.card, plan.scene_grid, area_px, on_block, plan.settings.vector_block, plan.decision_weights
        ) as sink,
    ):
        for box in blocks(g.extent, size):
            if keep is not None and not keep[box.row0 // size, box.col0 // size]:
                continue
            window = rasterio.windows.Window(box.col0, box.row0, box.width, box.height)
            probs = view.read(window=window).astype(np.float32) / STAGE_SCALE
            valid = src.dataset_mask(window=window) > 0
            sink.write(box, probs, valid)


def _write_cogs(folder: Path, rasters: tuple[tuple[str, str], ...], blocks: np.ndarray | None = None) -> None:
    """``NAME.tiled.tif`` -> ``NAME.tif`` COGs, one thread each (GDAL releases the GIL).

    Building overviews is single-threaded in GDAL, so the rasters run side by side
    (faster than one after the other: benchmarks/README.md, "Design measurements").
    ``blocks``: which ``BLOCK``-pixel blocks of the scene grid may hold data, for a sparse
    scene (``write_cog``); None: all.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str, resampling: str) -> None:
        write_cog(folder / f"{name}.tiled.tif", folder / f"{name}.tif", resampling, blocks=blocks)
        (folder / f"{name}.tiled.tif").unlink()

    with ThreadPoolExecutor(max(1, len(rasters) - 1), thread_name_prefix="geounet-cog") as pool:
        others = [pool.submit(one, *r) for r in rasters[1:]]
        one(*rasters[0])
        for f in others:
            f.result()


def _first_model(model: str | Path, scenes: list[str | Path], default: Path) -> Path | None:
    """The model file the first scene will use (loaded before it starts), or None without scenes."""
    if not scenes:
        return None
    try:
        return resolve_model(model, scenes[0])[0]
    except GeounetError:  # the first scene is unreadable: it fails on its own, the others need a model
        return default


def make_executor(settings: PredictSettings, model_path: str | Path | None = None) -> Executor:
    """Where a run's tasks execute: the ``settings.scheduler`` cluster, else this process's threads.

    With ``model_path`` the model is loaded now (on every worker of a cluster), so its
    start-up is paid once per process, before the first scene. On a cluster
    (``dask scheduler`` + ``dask worker``, dask-jobqueue, Kubernetes) scene and model
    paths must be readable by every worker (a shared filesystem). Locally, ``workers``
    threads of dask's threaded scheduler share one process and one copy of the model,
    the cores split between their model calls (see ``geounet.engine.executors``).
    """
    if settings.scheduler:
        cluster = DistributedExecutor.connect(settings.scheduler)
        if model_path is not None:
            resolved = resolve_settings(settings, read_card(model_path), cluster, model_path)
            cluster.load_model(model_path, resolved.device, resolved.backend, resolved.precision)
        return cluster
    resolved_local = settings.resolved(read_card(model_path), model_path) if model_path is not None else None
    local = ThreadedExecutor((resolved_local.workers if resolved_local is not None else settings.workers) or 1)
    if resolved_local is not None and model_path is not None:
        local.load_model(model_path, resolved_local.device, resolved_local.backend, resolved_local.precision)
    return local


def predict_batch(
    scenes: Iterable[str | Path],
    out_root: str | Path,
    model_path: str | Path,
    settings: PredictSettings,
    search: StacSearch | None = None,
) -> list[SceneReport]:
    """Predict several scenes; a scene that fails is reported and the others still run.

    ``search``: a STAC API search whose Items are scenes too (in the area of interest, if any).
    """
    paths = [as_scene(p) for p in scenes]
    # a bad model file or an unknown model name fails the whole batch at once, before any work
    if is_model_name(model_path):
        default = pick_variant(str(model_path), None).path
    else:
        read_card(model_path)
        default = Path(model_path)
    area = area_of_interest(settings.aoi, settings.bbox, settings.bbox_crs)  # a bad area fails the batch at once
    out = check_output_root(out_root)
    paths, stac_errors = stac_scenes(paths, search, area, out, read_card(default))  # one VRT scene per Item
    reports = [SceneReport(str(e.path), None, False, str(e), 0.0) for e in stac_errors]
    seen: dict[Path, str | Path] = {}
    for p in paths:
        d = output_dir_for(p, out)
        if d in seen:
            raise GeounetError(p, f"writes to the same output folder {d} as {seen[d]}: rename one of them")
        seen[d] = p
    executor = make_executor(settings, _first_model(model_path, paths, default))
    try:
        for n, p in enumerate(paths, 1):
            t0 = time.perf_counter()
            stem = output_dir_for(p, out).name
            lock = scene_lock(out, stem)  # as geounet run: one process per scene at a time
            try:
                if not lock.acquire():
                    reports.append(SceneReport(str(p), None, False, str(GeounetError(p, locked_reason(lock))), 0.0))
                    continue
                with lock:
                    for what in recover_interrupted(out, stem):
                        log.warning("%s: after an interrupted run: %s", p, what)
                    reports.append(predict_scene(p, out, model_path, settings, executor, last=n == len(paths)))
            except Exception as exc:  # noqa: BLE001  one bad scene never sinks the batch
                if isinstance(exc, ClusterError):
                    raise  # not about this scene: the caller stops the batch
                if lost_cluster(exc):  # lost outside the chunk loop (loading, stitching): the same one line
                    raise ClusterError.lost(getattr(executor, "address", None), Path(str(p)).name, exc) from None
                log.debug("%s: traceback", p, exc_info=True)
                error = str(scene_failure(p, exc, out))
                reports.append(SceneReport(str(p), None, False, error, time.perf_counter() - t0))
    finally:
        executor.close()
    return reports
