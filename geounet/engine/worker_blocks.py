"""Distributed runs: workers blend, finalize and write whole output blocks; the client only schedules.

On a cluster (``--scheduler``) the chunk results never travel to the client. The
working grid is cut into output blocks (:func:`output_blocks`); each chunk task
(``predict_chunk``) hands each block it meets the piece of its blended buffer inside
that block; one task per block, on whichever worker, adds its pieces in chunk order
(the same sums, in the same order, as ``engine.stitch.Stitcher``: outputs are identical
to a local run) and writes the block's finished pixels to its own file under
``tmp/blocks/`` (written then renamed: a task rerun after a lost worker replaces it).
Dask moves only the pieces between workers. One last task, on a worker, copies the block
files into the tiled rasters (and, for a resampled scene, runs stage 2) and writes the
COGs. The client sends paths and boxes and receives tile counts.

Memory: block rows are submitted as the rows before them finish, so the pieces held on
the workers are those of a few block rows, whatever the scene's size.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geounet.compute.grid import Box, TileGrid, blocks
from geounet.engine.tiles import predict_chunk
from geounet.io.aoi import inside_block
from geounet.io.rasters import STAGE_SCALE, finalize_block, own_class_scores

if TYPE_CHECKING:
    from geounet.engine.executors import DistributedExecutor


@dataclass(frozen=True)
class OutputBlock:
    """One block of the working grid, written by one task: its box and the chunks whose tiles reach it."""

    index: tuple[int, int]
    box: Box  # working-grid pixels, inside the grid
    chunks: tuple[tuple[int, int], ...]  # in raster order: the order their pieces are added


@dataclass
class Piece:
    """The part of one chunk's blended buffer inside one output block (working-grid pixels)."""

    chunk: tuple[int, int]
    box: Box
    probabilities: np.ndarray | None  # (classes, h, w) float32; None: every tile of the chunk was nodata
    valid: np.ndarray  # (h, w) bool, the scene's mask


def output_blocks(grid: TileGrid, size: int, runs: np.ndarray | None = None) -> list[OutputBlock]:
    """The grid cut into ``size``-pixel blocks, each with the chunks (among ``runs``; None: all) that reach it.

    Blocks that no running chunk reaches are left out: they stay nodata.
    """
    out = []
    cy, cx = grid.shape_chunks
    span = grid.chunk_tiles * grid.stride  # chunk (ci, cj) reaches rows [ci * span - halo, (ci + 1) * span + halo)
    h = grid.halo
    for box in blocks(grid.scene, size):
        rows = range(max(0, (box.row0 - h) // span - 1), min(cy, (box.row1 + h) // span + 2))
        cols = range(max(0, (box.col0 - h) // span - 1), min(cx, (box.col1 + h) // span + 2))
        chunks = tuple(
            (ci, cj)
            for ci in rows
            for cj in cols
            if (runs is None or runs[ci, cj]) and grid.chunk(ci, cj).box.intersect(box) is not None
        )
        if chunks:
            out.append(OutputBlock((box.row0 // size, box.col0 // size), box, chunks))
    return out


def chunk_pieces(boxes: list[Box], *predict_args: Any) -> tuple[tuple[int, int], list[Piece]]:
    """Dask task: ``predict_chunk(*predict_args)`` cut into one piece per box of ``boxes``.

    Returns ((tiles run, tiles skipped), pieces in the order of ``boxes``); the pieces are
    copies, so the chunk's whole buffer is freed when the task ends.
    """
    result = predict_chunk(*predict_args)
    pieces = []
    for box in boxes:
        cut = result.box.intersect(box)
        assert cut is not None, (result.box, box)
        rows, cols = cut.relative_to(result.box)
        probs = None if result.probabilities is None else result.probabilities[:, rows, cols].copy()
        assert result.valid is not None
        pieces.append(Piece(result.index, cut, probs, result.valid[rows, cols].copy()))
    return (result.tiles_run, result.tiles_skipped), pieces


def _counts(answer: tuple[tuple[int, int], list[Piece]]) -> tuple[int, int]:
    return answer[0]


def _piece(answer: tuple[tuple[int, int], list[Piece]], k: int) -> Piece:
    return answer[1][k]


def block_file(folder: Path, block: OutputBlock) -> Path:
    """Where a block's finished pixels go: ``folder/<row>-<col>.npz``."""
    return folder / f"{block.index[0]}-{block.index[1]}.npz"


def write_block(
    block: OutputBlock,
    folder: str,
    stage1: bool,
    area_px: Any,
    n_classes: int,
    polygonize: Callable[[Any, np.ndarray, np.ndarray], Any] | None,
    vector_job: Any,
    weights: np.ndarray | None,
    *pieces: Piece,
) -> tuple[bool, Any]:
    """Dask task: add a block's pieces in chunk order and write the finished block file.

    ``stage1``: uint16 probabilities (DN / 65535) on the working grid, for stage 2;
    else uint8 scores and classes (``finalize_block``), nodata outside the scene's mask
    and outside ``area_px`` (an area of interest in scene pixels; None: none), the classes
    picked with each class's decision ``weights`` (None: none), and, with
    ``polygonize``, the block's polygons too: ``polygonize(vector_job, classes, scores of
    each pixel's own class)`` (``vector_stage.polygonize_arrays``). Returns (whether a file
    was written: False when all nodata, the polygons or None).
    """
    box = block.box
    total = np.zeros((n_classes, box.height, box.width), np.float32)
    valid = np.zeros((box.height, box.width), bool)
    any_data = False
    for piece in sorted(pieces, key=lambda p: p.chunk):
        rows, cols = piece.box.relative_to(box)
        if piece.probabilities is not None:
            total[:, rows, cols] += piece.probabilities
            valid[rows, cols] |= piece.valid
            any_data = True
    if not any_data:
        return False, None
    arrays: dict[str, np.ndarray]
    polygons = None
    if stage1:
        # where no piece has data the sum is 0: what the sparse stage-1 raster reads where nothing is written
        arrays = {"probabilities": np.rint(np.clip(total, 0.0, 1.0) * STAGE_SCALE).astype(np.uint16)}
    else:
        if area_px is not None:
            valid &= inside_block(area_px, box.row0, box.col0, box.height, box.width)
            if not valid.any():
                return False, None
        scores, classes = finalize_block(total, valid, weights)
        arrays = {"scores": scores, "classes": classes}
        if polygonize is not None:
            own = own_class_scores(scores, classes)
            assert own is not None  # classes come from these scores
            polygons = polygonize(vector_job, classes, own)
    path = block_file(Path(folder), block)
    part = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")
    np.savez(part, **arrays)  # type: ignore[arg-type]  # (numpy's stub reads ** as its allow_pickle)
    os.replace(part, path)  # a rerun of this task (a worker lost) replaces it whole
    return True, polygons


def run_blocks(
    executor: DistributedExecutor,
    grid: TileGrid,
    chunk_args: Callable[[int, int], tuple[Any, ...]],
    folder: Path,
    stage1: bool,
    area_px: Any,
    n_classes: int,
    label: str,
    block_size: int,
    runs: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
    polygonize: Callable[[Any, np.ndarray, np.ndarray], Any] | None = None,
    vector_jobs: dict[tuple[int, int], Any] | None = None,
    on_polygons: Callable[[tuple[int, int], Any], None] | None = None,
    weights: np.ndarray | None = None,
) -> tuple[list[OutputBlock], dict[str, int]]:
    """Predict every chunk (among ``runs``) and write every block of ``grid`` it reaches into ``folder``.

    ``chunk_args(ci, cj)``: ``predict_chunk``'s arguments for a chunk. ``progress(run,
    skipped)``: called (in this thread) with each chunk's tile counts as they come.
    ``polygonize``, ``vector_jobs``: each block polygonized in its task too (see
    :func:`write_block`; the blocks are the vector stage's, ``vector_jobs`` by block
    index); ``on_polygons(block index, polygons)`` takes them here as blocks finish.
    ``weights``: each class's decision weight (:func:`write_block`).
    Returns the blocks written (those with data, in raster order) and the tile counts of
    the chunks that ran.
    """
    from distributed import as_completed

    folder.mkdir(parents=True, exist_ok=True)
    todo = output_blocks(grid, block_size, runs)
    by_row: dict[int, list[OutputBlock]] = {}
    reach: dict[tuple[int, int], list[OutputBlock]] = {}  # chunk -> the blocks it reaches
    for b in todo:
        by_row.setdefault(b.index[0], []).append(b)
        for c in b.chunks:
            reach.setdefault(c, []).append(b)
    client = executor.client
    pieces: dict[tuple[int, int], dict[tuple[int, int], Any]] = {}  # chunk -> block index -> piece future
    counts: set[Any] = set()
    tally = {"run": 0, "skipped": 0}
    written: dict[tuple[int, int], bool] = {}

    def submit_chunk(c: tuple[int, int]) -> None:
        """One task per chunk, cut for every block it reaches; the pieces stay on the workers."""
        answer = client.submit(
            chunk_pieces,
            [b.box for b in reach[c]],
            *chunk_args(*c),
            key=f"chunk-{label}-{c[0]}-{c[1]}-{uuid.uuid4().hex[:8]}",
            pure=False,
            retries=2,
        )
        pieces[c] = {b.index: client.submit(_piece, answer, k, pure=False) for k, b in enumerate(reach[c])}
        counts.add(client.submit(_counts, answer, pure=False))

    def submit_row(r: int) -> dict[Any, OutputBlock]:
        futures = {}
        for b in by_row[r]:
            for c in b.chunks:
                if c not in pieces:
                    submit_chunk(c)
            args = [pieces[c].pop(b.index) for c in b.chunks]
            job = None if vector_jobs is None else vector_jobs[b.index]
            fut = client.submit(
                write_block,
                b,
                str(folder),
                stage1,
                area_px,
                n_classes,
                polygonize,
                job,
                weights,
                *args,
                pure=False,
                retries=2,
            )
            futures[fut] = b
        return futures

    def take_counts(wait: bool) -> None:
        for f in [f for f in counts if wait or f.done()]:
            run, skipped = f.result()
            counts.discard(f)
            tally["run"] += run
            tally["skipped"] += skipped
            if progress is not None:
                progress(run, skipped)

    rows = sorted(by_row)
    ahead = 2  # block rows in flight: enough to keep every worker busy across a row's end
    in_flight = [submit_row(r) for r in rows[:ahead]]
    with executor.cluster_errors(label):
        for k in range(len(rows)):
            for fut in as_completed(list(in_flight[k])):
                index = in_flight[k][fut].index
                written[index], polygons = fut.result()
                fut.release()
                if polygonize is not None and on_polygons is not None:
                    on_polygons(index, polygons)
            in_flight[k] = {}
            if k + ahead < len(rows):
                in_flight.append(submit_row(rows[k + ahead]))
            take_counts(wait=False)
        take_counts(wait=True)
    if any(pieces.values()):
        raise RuntimeError("internal error: pieces never written")
    return [b for b in todo if written[b.index]], tally


def copy_blocks_into(
    written: list[OutputBlock], folder: Path, write: Callable[[Box, dict[str, np.ndarray]], None]
) -> None:
    """Each block file's arrays handed to ``write(box, arrays)`` in raster order; the files removed."""
    for b in written:
        path = block_file(folder, b)
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        write(b.box, arrays)
        path.unlink()
