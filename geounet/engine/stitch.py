"""Stitching chunk results into rasters: each region written once all chunks that overlap it are in.

No full-scene array is ever held: memory is the chunks in flight plus the pending seam
strips. A :class:`FinalSink` writes uint8 scores and classes on the scene's grid; a
:class:`Stage1Sink` writes uint16 probabilities on a resampled working grid, which
stage 2 (``geounet.engine.predict``) warps back onto the scene's grid.

Chunks without data (``geounet.io.coverage``) never run and contribute nothing: a region
waits only for the chunks that run, and a region none of them covers is never written.
The rasters are sparse tiled GeoTIFFs, so a block never written reads back as nodata
(255 for scores and classes) and takes no space.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from geounet.compute.grid import BlockProgress, Box, Region, TileGrid
from geounet.engine.tiles import ChunkResult
from geounet.io.aoi import inside_block
from geounet.io.rasters import (
    NODATA,
    STAGE_SCALE,
    describe_classes,
    describe_scores,
    finalize_block,
    own_class_scores,
    tiled_profile,
)
from geounet.io.remote import scene_name
from geounet.io.scene import WorkingGrid
from geounet.models.card import ModelCard


class Stitcher:
    """Collects chunk buffers and hands each region of the grid to ``sink`` once all its chunks are in.

    ``runs``: (chunk rows, chunk columns) bool, the chunks whose results will come (None:
    all); a region waits for those only. Regions are looked up per chunk as results
    arrive, so nothing here grows with the chunks that never run.
    """

    def __init__(self, grid: TileGrid, sink: Stage1Sink | FinalSink, runs: np.ndarray | None = None) -> None:
        self.grid, self.sink, self.runs = grid, sink, runs
        self.pending: dict = {}  # region -> {chunk index: (probabilities, valid) cut to the region}

    def _contributors(self, region: Region) -> tuple[tuple[int, int], ...]:
        if self.runs is None:
            return region.chunks
        return tuple(c for c in region.chunks if self.runs[c])

    def add(self, result: ChunkResult) -> None:
        for region in self.grid.chunk_regions(*result.index):
            contributors = self._contributors(region)
            rows, cols = region.box.relative_to(result.box)
            if len(contributors) == 1:  # only this chunk covers it: final now, no copy
                probs = None if result.probabilities is None else result.probabilities[:, rows, cols]
                self.sink.write(region.box, probs, None if result.valid is None else result.valid[rows, cols])
                continue
            probs = None if result.probabilities is None else result.probabilities[:, rows, cols].copy()
            valid = None if result.valid is None else result.valid[rows, cols].copy()
            parts = self.pending.setdefault(region, {})
            parts[result.index] = (probs, valid)
            if len(parts) == len(contributors):
                del self.pending[region]
                total, valid = None, None
                for key in sorted(parts):  # fixed order: identical sums whatever order chunks finished in
                    p, v = parts[key]
                    if p is not None:
                        total = p if total is None else total + p
                    valid = v if valid is None else valid  # every chunk read the same scene mask here
                self.sink.write(region.box, total, valid)


class Stage1Sink:
    """Regions -> the stage-1 raster (working grid, uint16 probabilities); used when resampling."""

    def __init__(self, dst: rasterio.io.DatasetWriter) -> None:
        self.dst = dst

    def write(self, box: Box, probabilities: np.ndarray | None, valid: np.ndarray | None) -> None:
        if probabilities is None:
            return  # all nodata: leave the sparse stage-1 blocks empty
        dn = np.rint(np.clip(probabilities, 0.0, 1.0) * STAGE_SCALE).astype(np.uint16)
        self.dst.write(dn, window=Window(box.col0, box.row0, box.width, box.height))


class FinalSink:
    """Regions -> the final uint8 scores and classes, directly (working grid = scene grid).

    ``area_px``: an area of interest in the scene's pixel coordinates; a pixel whose centre
    is outside it is nodata (None: no area). ``on_block``: called with each block of
    ``block_size`` pixels as soon as all of it is written, its classes and each pixel's
    score of its own class read back (what the vector stage polygonizes while later
    rows are still predicted); the rasters must then be open for reading too.
    """

    def __init__(
        self,
        scores: rasterio.io.DatasetWriter,
        classes: rasterio.io.DatasetWriter,
        area_px: Any = None,
        on_block: Callable[[Box, np.ndarray, np.ndarray], None] | None = None,
        block_size: int = 1024,
        weights: np.ndarray | None = None,
    ) -> None:
        self.scores, self.classes, self.area_px, self.weights = scores, classes, area_px, weights
        self.on_block = on_block
        self.progress = BlockProgress(classes.height, classes.width, block_size) if on_block else None

    def write(self, box: Box, probabilities: np.ndarray | None, valid: np.ndarray | None) -> None:
        self._write(box, probabilities, valid)
        if self.progress is not None and self.on_block is not None:
            for block in self.progress.add(box):
                window = Window(block.col0, block.row0, block.width, block.height)
                classes = self.classes.read(1, window=window)
                scores = self.scores.read(window=window)
                own = own_class_scores(scores, classes)
                assert own is not None  # written here from the model's own classes
                self.on_block(block, classes, own)

    def _write(self, box: Box, probabilities: np.ndarray | None, valid: np.ndarray | None) -> None:
        if probabilities is None:  # every tile here was nodata: left unwritten, it reads back as NODATA
            return
        window = Window(box.col0, box.row0, box.width, box.height)
        assert valid is not None  # every chunk reads the scene mask with its pixels
        if self.area_px is not None:
            valid = valid & inside_block(self.area_px, box.row0, box.col0, box.height, box.width)
            if not valid.any():
                return
        scores, classes = finalize_block(probabilities, valid, self.weights)
        self.scores.write(scores, window=window)
        self.classes.write(classes, 1, window=window)


@contextmanager
def stage1_writer(stage1: Path, working: WorkingGrid, card: ModelCard) -> Iterator[Stage1Sink]:
    """The stage-1 raster: working grid, one uint16 band per class (probability = DN / 65535)."""
    profile = tiled_profile(working.crs_wkt, working.affine, working.width, working.height, len(card.classes), "uint16")
    with rasterio.open(stage1, "w", **profile) as dst:
        yield Stage1Sink(dst)


@contextmanager
def final_writer(
    tmp: Path,
    card: ModelCard,
    scene_grid: tuple[Any, Any, int, int],
    area_px: Any = None,
    on_block: Callable[[Box, np.ndarray, np.ndarray], None] | None = None,
    block_size: int = 1024,
    weights: np.ndarray | None = None,
) -> Iterator[FinalSink]:
    """Tiled ``scores`` and ``classes`` in ``tmp`` on ``scene_grid`` (CRS, affine, width, height).

    ``area_px``: an area of interest in the scene's pixels, nodata outside it; ``on_block``,
    ``block_size``: blocks handed on as they are complete (see :class:`FinalSink`); ``weights``:
    each class's decision weight (``finalize_block``), None: none.
    """
    crs, transform, width, height = scene_grid
    n = len(card.classes)
    mode = "w+" if on_block else "w"  # read back as blocks complete
    with (
        rasterio.open(
            tmp / "scores.tiled.tif", mode, **tiled_profile(crs, transform, width, height, n, "uint8", NODATA)
        ) as scores_ds,
        rasterio.open(
            tmp / "classes.tiled.tif", mode, **tiled_profile(crs, transform, width, height, 1, "uint8", NODATA)
        ) as classes_ds,
    ):
        describe_scores(scores_ds, card)
        describe_classes(classes_ds, card)
        yield FinalSink(scores_ds, classes_ds, area_px, on_block, block_size, weights)


@contextmanager
def stitching(
    scene: str | Path,
    grid: TileGrid,
    quiet: bool,
    writer: AbstractContextManager[FinalSink] | AbstractContextManager[Stage1Sink],
    runs: np.ndarray | None = None,
    tiles_not_run: int = 0,
) -> Iterator[Tally]:
    """Open the writer and a progress bar (unless ``quiet``); yield the :class:`Tally` chunk results go to.

    ``runs``: the chunks that will run (see :class:`Stitcher`); ``tiles_not_run``: the tiles
    of the others, counted done at once.
    """
    with writer as sink, progress_bar(scene, grid.n_tiles, quiet, tiles_not_run) as bar:
        tally = Tally(Stitcher(grid, sink, runs), bar)
        yield tally
        if tally.stitcher.pending:
            raise RuntimeError(f"internal error: {len(tally.stitcher.pending)} regions never completed")


@contextmanager
def progress_bar(scene: str | Path, tiles: int, quiet: bool, done: int = 0) -> Iterator[Any]:
    """A scene's progress bar in tiles (tqdm, on stderr; none when ``quiet``), ``done`` of them counted at once."""
    from tqdm import tqdm

    with tqdm(total=tiles, unit="tile", desc=scene_name(scene), disable=True if quiet else None, leave=False) as bar:
        bar.update(done)
        yield bar


class Tally:
    """Hands chunk results to the stitcher, one at a time (any thread), and counts tiles."""

    def __init__(self, stitcher: Stitcher, bar: Any) -> None:
        self.stitcher, self.bar = stitcher, bar
        self.run = 0
        self._lock = threading.Lock()  # the output files take one writer at a time

    def take(self, result: ChunkResult) -> None:
        with self._lock:
            self.stitcher.add(result)
            self.run += result.tiles_run
            self.bar.update(result.tiles_run + result.tiles_skipped)

    def report(self, grid: TileGrid, n_chunks: int, chunks_run: int | None = None) -> dict:
        """Tile counts for run.json (:func:`tile_counts`)."""
        return tile_counts(grid, self.run, n_chunks, n_chunks if chunks_run is None else chunks_run)


def tile_counts(grid: TileGrid, run: int, n_chunks: int, chunks_run: int) -> dict:
    """Tile counts for run.json: every tile not run is a skipped one (no valid pixel), run or not its chunk."""
    return {
        "total": grid.n_tiles,
        "run": run,
        "skipped": grid.n_tiles - run,
        "chunks": n_chunks,
        "chunks_run": chunks_run,
        "tile_size": grid.tile_size,
        "overlap": grid.overlap,
    }
