"""Running the model over the tiles of one chunk: read, normalise, batch, softmax, blend.

``predict_chunk`` is the unit of work of one Dask task. It opens the scene itself
and reads only its chunk's window, so nothing but paths and small geometry objects
travel through the scheduler. The network is loaded once per process and device
(``cached_model``) and reused by every task that process runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from geounet.compute.blend import blend_tiles, blend_weights
from geounet.compute.grid import Box, TileGrid
from geounet.compute.tta import TTA_SETS, expand, reduce
from geounet.io.radiometry import ByteScale
from geounet.io.scene import WorkingGrid, open_working, read_box
from geounet.models.card import ModelCard, normalisation
from geounet.models.registry import cached_model
from geounet.models.torch_backend import forward_probabilities, iter_probabilities, normaliser

log = logging.getLogger("geounet")


def raw_tiles(
    pixels: np.ndarray, valid: np.ndarray, windows: list[tuple[slice, slice]]
) -> tuple[np.ndarray, np.ndarray]:
    """Several tiles' raw DNs ``(n, bands, h, w)`` (the scene's dtype) and valid masks ``(n, h, w)`` bool.

    What a GPU receives: a uint8 scene's tiles travel as one byte per band and pixel and are
    normalised there (:func:`~geounet.models.torch_backend.normaliser`), instead of four bytes of
    float32 made on the host.
    """
    return np.stack([pixels[:, r, c] for r, c in windows]), np.stack([valid[r, c] for r, c in windows])


def input_array(
    pixels: np.ndarray, valid: np.ndarray, windows: list[tuple[slice, slice]], card: ModelCard
) -> np.ndarray:
    """Raw DNs of several tiles -> one normalised float32 batch ``(n, bands, h, w)``, C-ordered (what ONNX Runtime takes).

    ``pixels`` (bands, rows, cols) and ``valid`` (rows, cols) cover the chunk; ``windows`` are
    the tiles' (rows, cols) slices in it. Invalid pixels become 0, the band mean. The torch
    path normalises on its device instead (:func:`raw_tiles`).
    """
    x = np.stack([pixels[:, r, c] for r, c in windows]).astype(np.float32)
    gain, offset = normalisation(card)
    x *= gain[None, :, None, None]
    x -= offset[None, :, None, None]
    ok = np.stack([valid[r, c] for r, c in windows])
    if not ok.all():
        x *= ok[:, None]
    return x


@dataclass
class ChunkResult:
    """Blended class probabilities over a chunk's box (working-grid pixels)."""

    index: tuple[int, int]
    box: Box
    probabilities: np.ndarray | None  # (classes, h, w) float32; None when every tile was nodata
    tiles_run: int
    tiles_skipped: int
    valid: np.ndarray | None = None  # (h, w) bool: the scene's mask over the box (False outside the grid)


def predict_chunk(
    scene_path: str,
    working: WorkingGrid,
    grid: TileGrid,
    chunk_index: tuple[int, int],
    model_path: str,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 4,
    backend: str = "torch",
    threads: int | None = None,
    tta: str = "none",
    run_tiles: np.ndarray | None = None,
    byte_scale: ByteScale | None = None,
) -> ChunkResult:
    """Predict every tile of one chunk and blend them into the chunk's buffer (backend: resolved, torch or onnx).

    ``threads``: ONNX Runtime's threads per call (default :func:`threads_per_task`). ``tta``:
    a set of :data:`~geounet.compute.tta.TTA_SETS`; each tile's probabilities are then the
    mean over its flips and turns, before blending. ``run_tiles``: (rows, columns) bool over
    the chunk's tiles, False for a tile not to run (outside an area of interest); None: all.
    ``byte_scale``: the scene's digital numbers scaled to 8 bits as read (the plan's, one for the whole scene).
    """
    transforms = TTA_SETS[tta]
    net, card = cached_model(model_path, device, backend, threads, precision)
    chunk = grid.chunk(*chunk_index)
    with open_working(scene_path, working) as ds:
        pixels, valid = read_box(ds, card.bands, chunk.box, (working.height, working.width))
    if byte_scale is not None:
        pixels = byte_scale.apply(pixels)
    todo = []
    first = chunk.tiles[0].index
    for tile in chunk.tiles:
        if run_tiles is not None and not run_tiles[tile.index[0] - first[0], tile.index[1] - first[1]]:
            continue
        rows, cols = tile.box.relative_to(chunk.box)
        if valid[rows, cols].any():
            todo.append((tile, rows, cols))
    if not todo:
        return ChunkResult(chunk_index, chunk.box, None, 0, len(chunk.tiles), valid)
    out = np.zeros((len(card.classes), chunk.box.height, chunk.box.width), np.float32)
    parts = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    probabilities: Iterator[np.ndarray]
    if backend == "onnx":  # numpy in, numpy out: no torch in this process
        probabilities = (
            reduce(net(expand(input_array(pixels, valid, [(r, c) for _, r, c in part], card), transforms)), transforms)
            for part in parts
        )
    else:  # lazily, one batch ahead on GPUs; raw DNs travel, normalised and expanded on the device
        normalised = normaliser(*normalisation(card), device)

        def prepare(raw, ok):  # device tensors
            return expand(normalised(raw, ok), transforms)

        batches = (raw_tiles(pixels, valid, [(r, c) for _, r, c in part]) for part in parts)
        probabilities = (reduce(p, transforms) for p in iter_probabilities(net, batches, device, precision, prepare))
    for part, probs in zip(parts, probabilities):
        offsets = [(r.start, c.start) for _, r, c in part]
        weights = [blend_weights(grid.tile_size, grid.overlap, tile.taper) for tile, _, _ in part]
        blend_tiles(probs, offsets, weights, out.shape[1:], out=out)
    return ChunkResult(chunk_index, chunk.box, out, len(todo), len(chunk.tiles) - len(todo), valid)


def predict_array(
    net,
    x: np.ndarray,
    tile_size: int,
    overlap: int,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 4,
    valid: np.ndarray | None = None,
    forward=None,
) -> np.ndarray:
    """Blended class probabilities ``(classes, h, w)`` for an in-memory normalised image ``(bands, h, w)``.

    The same tiling (``TileGrid``), mirror padding and blending as ``predict_chunk``,
    for images already in memory (training validation, evaluation). Tiles whose
    pixels are all invalid (``valid`` False) are skipped and score 0. ``forward``:
    another ``(net, batch, device, precision) -> (n, channels, h, w)`` to blend instead
    of class probabilities (the damage run's pre/post pair measures).
    """
    forward = forward or forward_probabilities
    h, w = x.shape[1:]
    grid = TileGrid(h, w, tile_size, overlap, chunk_tiles=max(1, max(h, w) // max(1, tile_size - overlap) + 1))
    chunk = grid.chunk(0, 0)
    pad = ((0, 0), (-chunk.box.row0, chunk.box.row1 - h), (-chunk.box.col0, chunk.box.col1 - w))
    modes: list[Literal["reflect", "edge"]] = ["reflect" if n > 1 else "edge" for n in (h, w)]
    padded = np.pad(np.pad(x, (pad[0], pad[1], (0, 0)), mode=modes[0]), ((0, 0), (0, 0), pad[2]), mode=modes[1])
    ok = np.ones((h, w), bool) if valid is None else valid
    ok = np.pad(ok, pad[1:], mode="constant", constant_values=False)
    todo = []
    for tile in chunk.tiles:
        rows, cols = tile.box.relative_to(chunk.box)
        if ok[rows, cols].any():
            todo.append((tile, rows, cols))
    out = None
    for start in range(0, len(todo), batch_size):
        part = todo[start : start + batch_size]
        probs = forward(net, np.stack([padded[:, r, c] for _, r, c in part]), device, precision)
        if out is None:
            out = np.zeros((probs.shape[1], chunk.box.height, chunk.box.width), np.float32)
        blend_tiles(
            probs,
            [(r.start, c.start) for _, r, c in part],
            [blend_weights(tile_size, overlap, t.taper) for t, _, _ in part],
            out.shape[1:],
            out=out,
        )
    if out is None:
        raise ValueError("no valid pixel to predict")
    return out[:, -chunk.box.row0 : -chunk.box.row0 + h, -chunk.box.col0 : -chunk.box.col0 + w]
