"""Running the model over the tiles of one chunk: read, normalise, batch, softmax, blend.

``predict_chunk`` is the unit of work of one Dask task. It opens the scene itself
and reads only its chunk's window, so nothing but paths and small geometry objects
travel through the scheduler. The network is loaded once per process and device
(``cached_model``) and reused by every task that process runs.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .blend import blend_tiles, blend_weights
from .grid import Box, TileGrid
from .model import ModelCard, load_model, normalise
from .scene import WorkingGrid, open_working, read_box

_CACHE: dict[tuple[str, int, str], tuple[object, ModelCard]] = {}
_CACHE_LOCK = threading.Lock()


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU")
    return device


def resolve_precision(device: str, precision: str = "auto") -> str:
    """'auto' -> bf16 on GPUs that have it (else fp16); on CPUs bf16 only with native support.

    On CPUs without AVX-512 BF16 or AMX, bf16 autocast is emulated and several times
    slower than fp32 (measured: 8x slower on an AVX2 machine), so auto picks fp32 there.
    """
    import torch

    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    cap = torch.backends.cpu.get_cpu_capability().upper()
    return "bf16" if ("AMX" in cap or "AVX512_BF16" in cap) else "fp32"


def cached_model(path: str | Path, device: str):
    """Load the model once per (file, device) in this process; later calls reuse it."""
    path = str(Path(path).resolve())
    key = (path, os.stat(path).st_mtime_ns, device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            import torch

            net, card = load_model(path, device)
            net = net.to(memory_format=torch.channels_last)
            _CACHE[key] = (net, card)
        return _CACHE[key]


def forward_probabilities(net, batch: np.ndarray, device: str, precision: str) -> np.ndarray:
    """Normalised input ``(n, bands, h, w)`` float32 -> class probabilities ``(n, classes, h, w)`` float32."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    x = torch.from_numpy(batch).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        logits = net(x)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


@dataclass
class ChunkResult:
    """Blended class probabilities over a chunk's box (working-grid pixels)."""

    index: tuple[int, int]
    box: Box
    probabilities: np.ndarray | None  # (classes, h, w) float32; None when every tile was nodata
    tiles_run: int
    tiles_skipped: int


def predict_chunk(
    scene_path: str,
    working: WorkingGrid,
    grid: TileGrid,
    chunk_index: tuple[int, int],
    model_path: str,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 4,
) -> ChunkResult:
    """Predict every tile of one chunk and blend them into the chunk's buffer."""
    net, card = cached_model(model_path, device)
    chunk = grid.chunk(*chunk_index)
    with open_working(scene_path, working) as ds:
        pixels, valid = read_box(ds, card.bands, chunk.box, (working.height, working.width))
    x = normalise(pixels, card)
    x[:, ~valid] = 0.0  # nodata pixels -> the band mean, so they do not disturb their neighbours
    todo = []
    for tile in chunk.tiles:
        rows, cols = tile.box.relative_to(chunk.box)
        if valid[rows, cols].any():
            todo.append((tile, rows, cols))
    if not todo:
        return ChunkResult(chunk_index, chunk.box, None, 0, len(chunk.tiles))
    out = np.zeros((len(card.classes), chunk.box.height, chunk.box.width), np.float32)
    for start in range(0, len(todo), batch_size):
        part = todo[start : start + batch_size]
        batch = np.stack([x[:, r, c] for _, r, c in part])
        probs = forward_probabilities(net, batch, device, precision)
        offsets = [(r.start, c.start) for _, r, c in part]
        weights = [blend_weights(grid.tile_size, grid.overlap, tile.taper) for tile, _, _ in part]
        blend_tiles(probs, offsets, weights, out.shape[1:], out=out)
    return ChunkResult(chunk_index, chunk.box, out, len(todo), len(chunk.tiles) - len(todo))


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
    modes = ["reflect" if n > 1 else "edge" for n in (h, w)]
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
        blend_tiles(probs, [(r.start, c.start) for _, r, c in part],
                    [blend_weights(tile_size, overlap, t.taper) for t, _, _ in part], out.shape[1:], out=out)
    if out is None:
        raise ValueError("no valid pixel to predict")
    return out[:, -chunk.box.row0 : -chunk.box.row0 + h, -chunk.box.col0 : -chunk.box.col0 + w]
