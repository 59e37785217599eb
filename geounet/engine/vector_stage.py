"""Vectorizing a scene's class raster into ``features.gpkg``, block by block on Dask.

Each task reads one window of ``classes.tif`` (and of ``scores.tif``) and returns its
polygons (``vectorize.polygonize_block``) or road centre-line pieces
(``centerlines.centerlines_block``, read with a halo). Polygons wholly inside their
block are final: they are cleaned (``postprocess``) and appended to the GeoPackage as
results arrive, in the blocks' raster order (the same rows in the same order in every
run). Pieces that touch a block edge wait, and are joined at the end
(``vectorize.seam_groups``, then ``merge_groups`` in tasks). Blocks the class raster does not store (a sparse
COG leaves out blocks of nodata: a mostly empty scene) hold nothing and are not visited.
Layers follow the model's class kinds:
``buildings``, ``roads`` + ``road_centerlines``, ``landcover``; each carries the
scene's CRS, metric attributes, and a QGIS style in the ``layer_styles`` table.
With ``fmt="fgb"`` the finished GeoPackage's layers are copied to one FlatGeobuf file
each (``features.<layer>.fgb``, same rows) and the GeoPackage is removed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.windows import Window

from geounet.compute.centerlines import centerlines_block, merge_centerlines
from geounet.compute.grid import Box, GeoGrid, blocks
from geounet.compute.postprocess import (
    DEFAULT_RULES,
    ClassRules,
    clean_geometries,
    metric_crs,
    repair_polygons,
)
from geounet.compute.vectorize import (
    Pieces,
    apply_affine,
    contact_seed_counts,
    dissolve_pieces,
    merge_groups,
    polygonize_block,
    seam_groups,
    split_at_contacts,
    split_touching,
)
from geounet.errors import InputError
from geounet.io.rasters import own_class_scores, written_blocks
from geounet.io.scene import ground_pixel_size, ground_resolution
from geounet.io.vectors import LayerWriter, export_layers
from geounet.models.card import ModelCard

if TYPE_CHECKING:
    from geounet.engine.executors import Executor

log = logging.getLogger("geounet")

QUEUED_BLOCKS = 8  # final blocks waiting to be sent to the vector executor
SEAM_RUNS = 16  # seam-merge tasks at most (fewer for little work: balanced_runs)
WAITING_ROWS = 200_000  # finished rows held back at most for the file's raster order (VectorStream._settle)
LAYER_FOR_KIND = {"building": "buildings", "road": "roads", "landcover": "landcover"}
NODATA = 255
# The class raster under a pixel box (col0, row0, col1, row1; whole-raster pixels), as its (rows, cols) array.
ClassWindow = Callable[[tuple[int, int, int, int]], np.ndarray]


@dataclass(frozen=True)
class VectorBlock:
    """One block of the class raster to polygonize: its core box and which of its edges are inside the raster."""

    index: tuple[int, int]
    window: tuple[int, int, int, int]  # row0, col0, row1, col1 (block core, pixels)
    inner_edges: tuple[bool, bool, bool, bool]  # top, bottom, left, right


def vector_blocks(height: int, width: int, block: int) -> list[VectorBlock]:
    """The raster's blocks of ``block`` pixels, in raster order."""
    return [
        VectorBlock(
            (b.row0 // block, b.col0 // block),
            (b.row0, b.col0, b.row1, b.col1),
            (b.row0 > 0, b.row1 < height, b.col0 > 0, b.col1 < width),
        )
        for b in blocks(Box(0, 0, height, width), block)
    ]


@dataclass(frozen=True)
class LayerContext:
    """What turning pixel pieces into finished layer rows needs (small; travels to tasks)."""

    card: ModelCard
    crs_wkt: str
    transform: tuple[float, ...]
    metric_wkt: str
    rules: dict[str, ClassRules]
    pixel_size_m: tuple[float, float] = (1.0, 1.0)  # ground size of a pixel step in x and y

    @property
    def contact_join(self) -> tuple[int, list[int]] | None:
        """``(building class, contact classes)`` when buildings are split at contacts, else None.

        A model with a contact class (``ModelCard.contact_ids``) and one building class: its
        buildings are the components of building and contact pixels, split by seeds
        (``vectorize.split_at_contacts``). Otherwise contacts stay background.
        """
        buildings = [i for i, c in enumerate(self.card.classes) if c.kind == "building"]
        contacts = self.card.contact_ids
        return (buildings[0], contacts) if contacts and len(buildings) == 1 else None


def polygonize_task(
    job: VectorBlock, classes_path: str, scores_path: str | None, class_ids: list[int], ctx: LayerContext
) -> tuple[dict[str, gpd.GeoDataFrame], Pieces]:
    """Dask task: one block of the class raster read, then :func:`polygonize_arrays`."""
    r0, c0, r1, c1 = job.window
    win = Window(c0, r0, c1 - c0, r1 - r0)
    with rasterio.open(classes_path) as src:
        classes = src.read(1, window=win)
    n = len(ctx.card.classes)
    unknown = np.unique(classes[(classes >= n) & (classes != NODATA)])
    if unknown.size:
        raise InputError(
            classes_path,
            f"class index {int(unknown[0])} is not one of the model's {n} classes ({', '.join(ctx.card.class_names)})",
        )
    scores = None
    if scores_path is not None:
        with rasterio.open(scores_path) as s:
            all_scores = s.read(window=win)
        scores = own_class_scores(all_scores, classes)
    return polygonize_arrays(job, classes, scores, class_ids, ctx)


def polygonize_arrays(
    job: VectorBlock, classes: np.ndarray, scores: np.ndarray | None, class_ids: list[int], ctx: LayerContext
) -> tuple[dict[str, gpd.GeoDataFrame], Pieces]:
    """Dask task: one block's finished polygons (cleaned, by layer) and its raw seam pieces.

    ``classes``: the block's class indexes (``job.window``); ``scores``: each pixel's score
    of its own class (uint8 DN), or None. With a contact class (``LayerContext.contact_join``)
    building and contact pixels are polygonized together, then split at the contacts.
    """
    r0, c0 = job.window[:2]
    join = ctx.contact_join
    polygonized = classes if join is None else np.where(np.isin(classes, join[1]), join[0], classes)
    pieces = polygonize_block(polygonized, (r0, c0), class_ids, scores, job.inner_edges)

    def class_window(box: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = box
        return classes[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]

    complete = pieces.take(~pieces.on_edge)
    return pieces_to_layers(complete, ctx, class_window, (classes, (r0, c0))), pieces.take(pieces.on_edge)


def pieces_to_layers(
    pieces: Pieces,
    ctx: LayerContext,
    class_window: ClassWindow | None = None,
    plane: tuple[np.ndarray, tuple[int, int]] | None = None,
) -> dict[str, gpd.GeoDataFrame]:
    """Complete polygons (pixel coordinates) -> cleaned rows per layer, in the scene's CRS.

    Buildings of a model with a contact class are split at its contacts first
    (``class_window`` gives the class raster under each; ``plane``, when given, is a class
    raster that holds them all, with its (row, col) offset: their seeds are counted in one
    pass over it, and only the buildings to split read their windows). Pixel coordinates go to the
    local equal-area CRS in one pass (affine, then pyproj), are cleaned there and
    measured in metres, and are projected back to the scene's CRS.
    """
    to_metric = _transformer(ctx.crs_wkt, ctx.metric_wkt)
    from_metric = _transformer(ctx.metric_wkt, ctx.crs_wkt)
    layers = {}
    for kind, layer in LAYER_FOR_KIND.items():
        ids = [i for i, c in enumerate(ctx.card.classes) if c.kind == kind]
        sel = np.isin(pieces.class_id, ids)
        if not sel.any():
            continue
        rules = ctx.rules[kind]
        p = pieces.take(sel)
        if kind == "building" and ctx.contact_join is not None:
            if class_window is None:
                raise ValueError("buildings of a model with a contact class need the class raster under them")
            windows = [class_window(tuple(b)) for b in shapely.bounds(p.geometry).astype(np.int64).tolist()]
            members = [*ids, *ctx.contact_join[1]]
            counts = None
            if plane is not None:
                counts = contact_seed_counts(*plane, p.geometry, ids, members, ctx.pixel_size_m, rules.seed_m)
            p = split_at_contacts(p, windows, ids, ctx.pixel_size_m, rules.seed_m, members, counts)
        else:
            p.geometry = dissolve_pieces(p.geometry)  # seam groups merged without their union
        p = split_touching(p, ctx.pixel_size_m, rules.split_m)
        score = np.round(p.score_sum / np.maximum(p.pixels, 1) / 254.0, 4)
        metric_geoms = _reproject(p.geometry, to_metric, Affine(*ctx.transform))
        geoms_m, keep = clean_geometries(metric_geoms, rules)
        class_id, score = p.class_id[keep], score[keep]
        if not len(geoms_m):
            continue
        data = {
            "class_id": class_id,
            "class_name": np.array(ctx.card.class_names, dtype=object)[class_id],
            "score": score,
            "area_m2": np.round(shapely.area(geoms_m), 3),
            "perimeter_m": np.round(shapely.length(geoms_m), 3),
        }
        geoms = repair_polygons(_reproject(geoms_m, from_metric))  # repair anything reprojection broke
        gdf = gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=ctx.crs_wkt))
        if layer == "landcover":
            layers[layer] = gdf.rename(columns={"class_id": "class"})[
                ["class", "class_name", "area_m2", "score", "geometry"]
            ]
        else:
            layers[layer] = gdf.rename(columns={"class_name": "class"})[
                ["class", "score", "area_m2", "perimeter_m", "geometry"]
            ]
    return layers


@lru_cache(maxsize=16)
def _transformer(src_wkt: str, dst_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(src_wkt), CRS.from_wkt(dst_wkt), always_xy=True)


def _reproject(geoms: np.ndarray, transformer: Transformer, pixel_to_crs: Affine | None = None) -> np.ndarray:
    """Reproject geometries' coordinates (first through ``pixel_to_crs`` when given)."""

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        if pixel_to_crs is not None:
            a, b, c, d, e, f = pixel_to_crs[:6]
            x, y = a * x + b * y + c, d * x + e * y + f
        return np.column_stack(transformer.transform(x, y))

    return shapely.transform(np.asarray(geoms, dtype=object), project)


def centerline_task(job: VectorBlock, classes_path: str, road_ids: list[int], halo: int, spur_px: float) -> list:
    """Dask task: road centre-line pieces (whole-raster pixel coordinates) of one block."""
    r0, c0, r1, c1 = job.window
    with rasterio.open(classes_path) as src:
        R0, C0 = max(0, r0 - halo), max(0, c0 - halo)
        R1, C1 = min(src.height, r1 + halo), min(src.width, c1 + halo)
        classes = src.read(1, window=Window(C0, R0, C1 - C0, R1 - R0))
    return centerlines_block(np.isin(classes, road_ids), (R0, C0), job.window, spur_px)


def vectorize_scene(
    classes_path: Path,
    scores_path: Path | None,
    gpkg_path: Path,
    card: ModelCard,
    executor: Executor,
    rules: dict[str, ClassRules] | None = None,
    block: int = 1024,
    fmt: str = "gpkg",
    aoi: Any = None,
) -> dict[str, Any]:
    """Write ``gpkg_path`` from a class raster; returns counts per layer and the rules used.

    ``block``: the side of the polygonize blocks, pixels of the class raster. ``fmt``:
    ``gpkg``, or ``fgb`` for one FlatGeobuf per layer beside ``gpkg_path`` (which is then
    removed). ``files`` in the result: each file written, with its layers' row counts.
    ``aoi``: an area of interest on the raster's CRS (shapely); every feature is cut to it.
    """
    with rasterio.open(classes_path) as src:
        grid = GeoGrid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height)
    return VectorStream(gpkg_path, card, executor, grid, rules, block, fmt, aoi).finish(classes_path, scores_path)


class VectorStream:
    """One scene's vector stage: blocks polygonized as soon as they are final, the rest at the end.

    While the scene is predicted, :meth:`block_final` (called by the raster writer with a
    block's classes and scores) queues the block; a thread here sends it to ``executor``
    and appends its finished polygons to the file (in the blocks' raster order), so the
    polygons of the first rows are made while later rows are still in the model. :meth:`finish` then
    polygonizes the blocks never handed over (read from ``classes.tif``), joins the
    pieces that touch block edges, adds road centre lines and writes the other formats.
    The result does not depend on which blocks were streamed: the same blocks, the same
    polygons, the same merges. ``grid``: the class raster's grid (the scene's).
    """

    def __init__(
        self,
        gpkg_path: Path,
        card: ModelCard,
        executor: Executor,
        grid: GeoGrid,
        rules: dict[str, ClassRules] | None = None,
        block: int = 1024,
        fmt: str = "gpkg",
        aoi: Any = None,
    ) -> None:
        from pyproj import CRS as ProjCRS
        from rasterio.transform import array_bounds

        self.gpkg_path, self.card, self.executor, self.grid = gpkg_path, card, executor, grid
        self.rules = {**DEFAULT_RULES, **(rules or {})}
        self.block, self.fmt, self.aoi = block, fmt, aoi
        crs = ProjCRS.from_wkt(grid.crs_wkt)
        south, west, north, east = array_bounds(grid.height, grid.width, grid.affine)[::-1]
        self.metric = metric_crs(crs, (west, south, east, north))
        self.kinds = {k: [i for i, c in enumerate(card.classes) if c.kind == k] for k in LAYER_FOR_KIND}
        pixel = ground_pixel_size(crs, grid.affine, grid.width, grid.height)
        self.ctx = LayerContext(card, grid.crs_wkt, grid.transform, self.metric.to_wkt(), self.rules, pixel)
        self.writer = LayerWriter(gpkg_path, crs, self.metric, card)
        for kind, ids in self.kinds.items():
            if ids:
                self.writer.create(LAYER_FOR_KIND[kind], kind)
        if self.kinds["road"]:
            self.writer.create("road_centerlines", "road_centerline")
        self.jobs = {j.index: j for j in vector_blocks(grid.height, grid.width, block)}
        self.poly_ids = [i for k in LAYER_FOR_KIND for i in self.kinds[k]]
        # rows go to the file in the blocks' raster order whatever order they finish in (a few wait)
        self._rank = {index: k for k, index in enumerate(self.jobs)}
        self._waiting: dict[int, dict[str, gpd.GeoDataFrame] | None] = {}
        self._next_rank = 0
        self._edge_pieces: dict[int, Pieces] = {}
        self.streamed: set[tuple[int, int]] = set()
        # blocks waiting for the thread: a few MB each; when full, the raster writer waits (vectors lag far behind)
        self._queue: queue.Queue[tuple[VectorBlock, np.ndarray, np.ndarray] | None] = queue.Queue(QUEUED_BLOCKS)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()  # the writer and the seam pieces, taken from more than one thread

    def block_final(self, box: Box, classes: np.ndarray, scores: np.ndarray) -> None:
        """A block of the class raster is final: polygonize it now (``scores``: each pixel's own class's DN)."""
        job = self.jobs[(box.row0 // self.block, box.col0 // self.block)]
        self.streamed.add(job.index)
        if self._error is not None or not np.isin(classes, self.poly_ids).any():
            self._settle(job.index, None)
            return  # nothing to polygonize (or the stage failed: finish says why)
        if self._thread is None:
            self._thread = threading.Thread(target=self._send, name="geounet-vector-stream", daemon=True)
            self._thread.start()
        self._queue.put((job, classes, scores))

    def block_polygonized(self, index: tuple[int, int], polygons: Any) -> None:
        """A block polygonized elsewhere (a cluster's block task): its polygons, or None when it held none."""
        self.streamed.add(index)
        self._settle(index, polygons)

    def _settle(self, index: tuple[int, int], polygons: tuple[dict[str, gpd.GeoDataFrame], Pieces] | None) -> None:
        """Block ``index`` is done (``polygons``: its finished layers and edge pieces; None: it held none).

        Its finished polygons go to the file once every block before it in raster order is
        done, so the file's rows (and their fids) come in the same order in every run; the
        edge pieces wait for the seams. Rows that wait are a few blocks' worth, unless a block
        is never handed over while predicting (no tile reached it): past ``WAITING_ROWS`` the
        waiting rows are written as they are (the order then depends on the run).
        """
        with self._lock:
            rank = self._rank[index]
            layers = None
            if polygons is not None:
                layers, self._edge_pieces[rank] = polygons
            self._waiting[rank] = layers
            while self._next_rank in self._waiting:
                self._write(self._waiting.pop(self._next_rank))
                self._next_rank += 1
            if sum(len(g) for ls in self._waiting.values() if ls for g in ls.values()) > WAITING_ROWS:
                for r in sorted(self._waiting):
                    self._write(self._waiting[r])
                    self._waiting[r] = None

    def _write(self, layers: dict[str, gpd.GeoDataFrame] | None) -> None:
        if layers:
            self.writer.write(_clip_layers(layers, self.aoi))

    def _settle_rest(self) -> None:
        """Every block not done by now held nothing to polygonize: the rows waiting on them go to the file."""
        for index in self.jobs:
            if self._rank[index] >= self._next_rank and self._rank[index] not in self._waiting:
                self._settle(index, None)

    def polygonizer(self) -> Callable[[VectorBlock, np.ndarray, np.ndarray], Any]:
        """``polygonize_arrays`` with this scene's classes and context: ``f(job, classes, scores)`` (picklable)."""
        return partial(polygonize_arrays, class_ids=self.poly_ids, ctx=self.ctx)

    def _send(self) -> None:
        """The thread: queued blocks to the executor, at most ``in_flight`` at once; results to the file."""
        pending: set[Any] = set()
        try:
            while (item := self._queue.get()) is not None:
                if self._error is None:
                    job, classes, scores = item
                    task = (job, polygonize_arrays, classes, scores, self.poly_ids, self.ctx)
                    pending.add(self.executor.submit(_indexed, *task))
                    pending = self._take(pending, wait=len(pending) >= self._in_flight())
            while pending:
                pending = self._take(pending, wait=True)
        except BaseException as exc:  # noqa: BLE001 - raised by finish()
            self._error = exc
            while self._queue.get() is not None:  # let the raster writer go on to the end
                pass

    def _take(self, pending: set[Any], wait: bool) -> set[Any]:
        done = self.executor.wait_first(pending) if wait else {f for f in pending if f.done()}
        for fut in done:
            self._settle(*self.executor.result(fut))
        return pending - done

    def _in_flight(self) -> int:
        """Blocks at once on the executor (its workers are known once it has started)."""
        return max(4, 2 * self.executor.workers)

    def close(self) -> None:
        """Stop the thread (a failed scene); what it wrote is left to the caller's temporary folder."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def finish(self, classes_path: Path, scores_path: Path | None) -> dict[str, Any]:
        """Everything not streamed, the seams, centre lines and other formats; returns counts and rules."""
        self.close()
        if self._error is not None:
            raise self._error
        with rasterio.open(classes_path) as src:
            internal = src.block_shapes[0]
        present = written_blocks(classes_path)
        jobs = [j for j in self.jobs.values() if j.index not in self.streamed and _stored(present, internal, j.window)]
        scores = str(scores_path) if scores_path else None
        for index, polygons in self.executor.imap_unordered(
            _indexed,
            jobs,
            polygonize_task,
            str(classes_path),
            scores,
            self.poly_ids,
            self.ctx,
            in_flight=self._in_flight(),
        ):
            self._settle(index, polygons)
        self._settle_rest()
        self._merge_seams(classes_path)
        writer, rules, grid = self.writer, self.rules, self.grid
        if self.kinds["road"]:
            res_m = ground_resolution(CRS.from_wkt(grid.crs_wkt), grid.affine, grid.width, grid.height)
            road_jobs = [j for j in self.jobs.values() if _stored(present, internal, j.window)]
            lines = _centerlines(self.executor, road_jobs, classes_path, self.kinds["road"], rules["road"], res_m)
            geoms = apply_affine(np.asarray(lines, dtype=object), grid.affine)
            if self.aoi is not None:
                geoms = clip_to_area(geoms, self.aoi, lines=True)
                geoms = geoms[~shapely.is_empty(geoms)]
            writer.add_centerlines(list(geoms))
        if self.fmt == "gpkg":
            files = {self.gpkg_path.name: dict(writer.counts)}
        else:
            files = export_layers(self.gpkg_path, self.fmt)
            self.gpkg_path.unlink()
        return {
            "format": self.fmt,
            "files": files,
            "layers": writer.counts,
            "rules": {k: v.to_dict() for k, v in rules.items()},
            "block_pixels": self.block,
            "blocks_while_predicting": len(self.streamed),
            "metric_crs": self.metric.srs,
        }

    def _merge_seams(self, classes_path: Path) -> None:
        """Pieces that touch block edges joined (groups found here, cheap; unions and clean-up as tasks).

        ``classes_path``: the finished class raster (the merge tasks read it under buildings to split).
        """
        cand = Pieces.concat([self._edge_pieces[r] for r in sorted(self._edge_pieces)])
        groups = seam_groups(cand)
        # as many runs whatever the workers, so that the merged rows come in the same order everywhere
        runs = balanced_runs([int(cand.pixels[g].sum()) for g in groups], SEAM_RUNS)
        batches = []
        for run in runs:
            members = [groups[g] for g in run]
            taken = np.concatenate(members) if members else np.zeros(0, np.intp)
            ends = np.cumsum([len(m) for m in members])
            batches.append((cand.take(taken), np.split(np.arange(len(taken)), ends[:-1]) if members else []))
        for layers in self.executor.map(merge_and_finish, batches, self.ctx, str(classes_path)):
            self.writer.write(_clip_layers(layers, self.aoi))
        self.writer.flush()


def _indexed(job: VectorBlock, polygonize: Callable[..., Any], *args: Any) -> tuple[tuple[int, int], Any]:
    """Dask task: ``(job.index, polygonize(job, *args))``: which block a result is, for the file's order."""
    return job.index, polygonize(job, *args)


def balanced_runs(weights: list[int], n: int, min_weight: int = 50_000) -> list[np.ndarray]:
    """Consecutive runs of indexes into ``weights``, at most ``n``, of about equal total weight (pixels).

    Runs weigh ``min_weight`` at least (a task's overhead is paid for), except the last;
    at least one run, empty when ``weights`` is.
    """
    total = sum(weights)
    k = max(1, min(n, len(weights), total // max(1, min_weight)))
    cum = np.cumsum(weights)
    cuts = np.searchsorted(cum, [total * i / k for i in range(1, k)], side="right")
    return [r for r in np.split(np.arange(len(weights)), np.unique(cuts)) if len(r)] or [np.zeros(0, np.intp)]


def _stored(present: np.ndarray, internal: tuple[int, int], window: tuple[int, int, int, int]) -> bool:
    """Whether any internal block (``internal``: rows, columns) of the class raster under ``window`` is stored."""
    bh, bw = internal
    r0, c0, r1, c1 = window
    return bool(present[r0 // bh : -(-r1 // bh), c0 // bw : -(-c1 // bw)].any())


def merge_and_finish(
    batch: tuple[Pieces, list[np.ndarray]], ctx: LayerContext, classes_path: str
) -> dict[str, gpd.GeoDataFrame]:
    """Dask task: seam groups (pieces, and each group's indexes into them) joined, then cleaned as layer rows.

    ``classes_path``: the class raster, read under each joined building where the model has a contact class.
    """
    pieces, groups = batch
    with rasterio.open(classes_path) as src:

        def class_window(box: tuple[int, int, int, int]) -> np.ndarray:
            x0, y0, x1, y1 = box
            return src.read(1, window=Window(x0, y0, x1 - x0, y1 - y0))

        # unioned in pieces_to_layers, and only what is not cut again at contacts (which needs only their pixels)
        return pieces_to_layers(merge_groups(pieces, groups, dissolve=False), ctx, class_window)


def _clip_layers(layers: dict[str, gpd.GeoDataFrame], aoi: Any) -> dict[str, gpd.GeoDataFrame]:
    """Each layer's polygons cut to ``aoi`` (None: as they are); rows left with no area dropped.

    The class raster is nodata outside the area already, so polygons cross its edge by
    a pixel's edge at most; their area and perimeter are those before the cut.
    """
    if aoi is None:
        return layers
    out = {}
    for name, gdf in layers.items():
        geoms = clip_to_area(np.asarray(gdf.geometry.values, dtype=object), aoi)
        keep = ~shapely.is_empty(geoms)
        out[name] = gdf[keep].set_geometry(gpd.GeoSeries(geoms[keep], index=gdf.index[keep], crs=gdf.crs))
    return out


def clip_to_area(geoms: np.ndarray, aoi: Any, lines: bool = False) -> np.ndarray:
    """``geoms`` cut to ``aoi``: their polygonal (``lines``: linear) parts inside it; empty where none."""
    shapely.prepare(aoi)
    out = np.asarray(geoms, dtype=object).copy()
    cut = ~shapely.contains(aoi, out) if len(out) else np.zeros(0, bool)
    if cut.any():
        parts = shapely.intersection(out[cut], aoi)
        want = (1, 5) if lines else (3, 6)  # (Multi)LineString or (Multi)Polygon
        for k, g in enumerate(parts):
            if shapely.get_type_id(g) not in want:  # a collection, or what the cut left along the edge
                pieces = shapely.get_parts(g)
                pieces = pieces[np.isin(shapely.get_type_id(pieces), want)]
                parts[k] = shapely.union_all(pieces) if len(pieces) else shapely.Polygon()
        out[cut] = parts
    return out


def _centerlines(
    executor: Executor,
    jobs: list[VectorBlock],
    classes_path: Path,
    road_ids: list[int],
    rules: ClassRules,
    res_m: float,
) -> list[Any]:
    """Road centre lines of the whole raster (pixel coordinates): pieces per block, merged; ``res_m`` m/px."""
    spur_px = rules.spur_m / res_m
    halo = int(max(64, 2 * spur_px))
    parts = executor.map(centerline_task, jobs, str(classes_path), road_ids, halo, spur_px)
    return merge_centerlines([line for part in parts for line in part], rules.min_length_m / res_m)
