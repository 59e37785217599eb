"""Running the model over the tiles of one chunk: read, normalise, batch, softmax, blend.

``predict_chunk`` is the unit of work of one Dask task. It opens the scene itself
and reads only its chunk's window, so nothing but paths and small geometry objects
travel through the scheduler. The network is loaded once per process and device
(``cached_model``) and reused by every task that process runs.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from geounet.compute.blend import blend_tiles, blend_weights
from geounet.compute.grid import Box, TileGrid
from geounet.models.card import ModelCard, load_model, normalisation
from geounet.io.scene import WorkingGrid, open_working, read_box

log = logging.getLogger("geounet")

_CACHE: dict[tuple, tuple[object, ModelCard]] = {}
_CACHE_LOCK = threading.Lock()


def _may_have_cuda() -> bool:
    """False when this machine certainly has no CUDA GPU (Linux without NVIDIA or WSL GPU device nodes).

    Lets ``auto`` settle on the CPU without importing torch (1.7 s here), so that a CPU
    run through ONNX Runtime never imports it.
    """
    if not os.path.isdir("/dev"):
        return True  # not Linux: ask torch
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"))


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device == "auto" and not _may_have_cuda():
        return "cpu"
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU")
    return device


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (lower case); empty where there is none."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(device: str, precision: str = "auto") -> str:
    """'auto' -> bf16 on GPUs that have it (else fp16); on CPUs bf16 only with native support.

    On CPUs without AVX-512 BF16 or AMX, bf16 autocast is emulated and several times
    slower than fp32 (measured: 8x slower on an AVX2 machine), so auto picks fp32 there.
    """
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    flags = cpu_flags()
    if not flags:  # no /proc/cpuinfo: ask torch
        import torch

        cap = torch.backends.cpu.get_cpu_capability().upper()
        return "bf16" if ("AMX" in cap or "AVX512_BF16" in cap) else "fp32"
    return "bf16" if flags & {"amx_bf16", "avx512_bf16"} else "fp32"


BACKENDS = ("auto", "torch", "onnx")


def resolve_backend(device: str, precision: str, backend: str = "auto") -> str:
    """'auto' -> 'onnx' (ONNX Runtime) for fp32 on the CPU when onnxruntime is installed, else 'torch'.

    ``device`` and ``precision`` are resolved ones. ONNX Runtime runs here in fp32 on
    the CPU only; GPUs and autocast (bf16, fp16) use torch.
    """
    from geounet.models import onnx as onnxrt

    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return backend
    fits = device == "cpu" and precision == "fp32"
    if backend == "onnx":
        if not fits:
            raise ValueError(f"--backend onnx runs fp32 on the CPU only (asked: device {device}, precision {precision})")
        if not onnxrt.available():
            raise ValueError("--backend onnx needs onnxruntime (pip install onnxruntime)")
        return backend
    return "onnx" if fits and onnxrt.available() else "torch"


MAX_AUTO_WORKERS = 4  # chunk tasks at once on one CPU machine: each holds a batch's activations


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or a batch job's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str, backend: str) -> int:
    """Chunk tasks run at once in a local run when ``--workers`` is not given.

    ONNX Runtime on the CPU: one task per core (at most ``MAX_AUTO_WORKERS``), each
    session with the remaining cores (``threads_per_task``). On 2 cores, 2 tasks x 1
    thread beat 1 task x 2 threads end to end: one task's reading, normalising and
    blending overlap with the other's model calls (benchmarks/README.md). torch (CPU or
    GPU): one task; torch's own threads or the GPU use the machine.
    """
    if device == "cpu" and backend == "onnx":
        return min(cpu_cores(), MAX_AUTO_WORKERS)
    return 1


def default_batch_size(device: str, backend: str) -> int:
    """Tiles per model call when ``--batch-size`` is not given.

    ONNX Runtime on the CPU: 1. Tiles per second do not depend on the batch there, and
    one tile per call needs a quarter of the memory of four (peak RSS of a 4096^2 run
    1.7 -> 0.6 GB with the default model) and ran the chunk phase ~2 % faster
    (benchmarks/README.md). torch (GPUs, autocast): 4.
    """
    return 1 if device == "cpu" and backend == "onnx" else 4


def default_chunk_pixels(device: str, backend: str, stride: int) -> int:
    """Target chunk side (pixels) when not given; a chunk, the unit of one task, is whole tiles.

    ONNX Runtime on the CPU: one tile (``stride`` = tile size - overlap). Calls are one
    tile each there, so larger chunks only make the last tasks of a scene run on fewer
    cores than there are; measured chunk phase 2048^2: 4.47 -> 3.72 s, 4096^2: 15.1 ->
    14.3 s against 2048 px chunks (benchmarks/README.md). torch: 2048 px, whole batches.
    """
    return stride if device == "cpu" and backend == "onnx" else 2048


def threads_per_task(worker=None) -> int:
    """CPU threads for one task's model calls: the cores divided by the Dask worker's task threads.

    ``worker``: the Dask worker (default: the one running this task; none: all cores).
    """
    if worker is None:
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):  # not inside a Dask task
            pass
    nthreads = getattr(getattr(worker, "state", None), "nthreads", 1) or 1
    return max(1, cpu_cores() // nthreads)


def cached_model(path: str | Path, device: str, backend: str = "torch", threads: int | None = None):
    """Load the model once per (file, device, backend) in this process; later calls reuse it.

    ``backend="torch"``, for inference only: batch norms are folded into their
    convolutions (``fuse_batchnorm``) and weights are stored channels_last.
    ``backend="onnx"``: an :class:`~geounet.onnxrt.OnnxNetwork` (CPU, fp32) with
    ``threads`` intra-op threads (default :func:`threads_per_task`); torch is not
    imported unless the model must be exported first.
    """
    path = str(Path(path).resolve())
    threads = (threads or threads_per_task()) if backend == "onnx" else None  # torch: its own thread setting
    key = (path, os.stat(path).st_mtime_ns, device, backend, threads)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if backend == "onnx":
                from geounet.models.card import read_card
                from geounet.models.onnx import load_onnx

                _CACHE[key] = (load_onnx(path, threads), read_card(path))
            else:
                import torch

                net, card = load_model(path, device)
                fuse_batchnorm(net)
                net = net.to(memory_format=torch.channels_last)
                _CACHE[key] = (net, card)
        return _CACHE[key]


def fuse_batchnorm(net) -> int:
    """Fold each eval-mode BatchNorm2d into the Conv2d that feeds only it, in place; returns how many.

    The pairs come from the network's traced data flow (``torch.fx``), so only a norm
    applied directly to a convolution's sole output is folded; the module tree keeps
    its shape (``net.encoder`` still works), folded norms become ``Identity``. Outputs
    change by float rounding only (about 1e-5 on logits); measured 1.1x faster on the
    CPU. A network fx cannot trace is left as it is.
    """
    import torch
    import torch.fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if net.training:
        raise ValueError("fuse_batchnorm needs a network in eval mode")
    try:
        graph = torch.fx.symbolic_trace(net).graph
    except Exception as exc:  # noqa: BLE001 - dynamic control flow: keep the network as it is
        log.debug("batch norms not folded (%s cannot be traced: %s)", type(net).__name__, exc)
        return 0
    modules = dict(net.named_modules())
    pairs = []
    for node in graph.nodes:
        src = node.args[0] if node.args else None
        if (node.op == "call_module" and isinstance(modules.get(node.target), torch.nn.BatchNorm2d)
                and isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(modules.get(src.target), torch.nn.Conv2d)):
            pairs.append((src.target, node.target))
    for conv, norm in pairs:
        _set_module(net, conv, fuse_conv_bn_eval(modules[conv], modules[norm]))
        _set_module(net, norm, torch.nn.Identity())
    return len(pairs)


def _set_module(net, path: str, module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, name, module)


def forward_probabilities(net, batch: np.ndarray, device: str, precision: str) -> np.ndarray:
    """Normalised input ``(n, bands, h, w)`` float32 -> class probabilities ``(n, classes, h, w)`` float32."""
    return next(iter_probabilities(net, iter([batch]), device, precision))


def _forward_tensor(net, x, device: str, precision: str):
    """Softmax probabilities of a device tensor (asynchronous on CUDA)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        logits = net(x)
    with torch.inference_mode():
        return torch.softmax(logits.float(), dim=1)


def iter_probabilities(net, batches: Iterator, device: str, precision: str) -> Iterator[np.ndarray]:
    """Class probabilities for each batch ``(n, bands, h, w)`` of ``batches``, in order.

    A batch is a normalised float32 array or CPU tensor (any memory format).

    On the CPU each batch is computed when asked for. On a CUDA device the work is
    pipelined (GPU-only part, untested on this project's CPU-only machine): batches
    are copied from pinned host memory on a side stream, and each result is handed
    back one batch late, so that while the GPU computes batch i the caller blends
    batch i-1 and this generator reads and stacks batch i+1 and starts its copy.
    """
    import torch

    if not device.startswith("cuda"):
        for batch in batches:
            yield _forward_tensor(net, torch.as_tensor(batch).to(device), device, precision).cpu().numpy()
        return
    # --- GPU path (not run here: no GPU on this project's machine) ---------------------
    dev = torch.device(device)
    copy_stream = torch.cuda.Stream(dev)
    compute = torch.cuda.current_stream(dev)
    pending = None  # (pinned host result, CUDA event) of the previous batch
    for batch in batches:
        host = torch.as_tensor(batch).pin_memory()
        with torch.cuda.stream(copy_stream):
            x = host.to(dev, non_blocking=True)
        compute.wait_stream(copy_stream)  # the forward waits for its own copy only
        x.record_stream(compute)
        probs = _forward_tensor(net, x, device, precision)
        out = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
        out.copy_(probs, non_blocking=True)
        done = torch.cuda.Event()
        done.record(compute)
        if pending is not None:
            pending[1].synchronize()
            yield pending[0].numpy()
        pending = (out, done)
    if pending is not None:
        pending[1].synchronize()
        yield pending[0].numpy()


def input_batch(pixels: np.ndarray, valid: np.ndarray, windows: list[tuple[slice, slice]], card: ModelCard):
    """Raw DNs of several tiles -> one normalised float32 batch ``(n, bands, h, w)``, channels_last.

    ``pixels`` (bands, rows, cols) and ``valid`` (rows, cols) cover the chunk; ``windows``
    are the tiles' (rows, cols) slices in it. Same values as ``model.normalise`` (up to
    float rounding), computed per batch in torch instead of once over the whole chunk:
    one conversion pass straight into the model's memory format. Invalid pixels become
    0, the band mean, so nodata does not disturb its neighbours.
    """
    import torch

    raw = torch.from_numpy(np.stack([pixels[:, r, c] for r, c in windows]))
    x = torch.empty(raw.shape, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    x.copy_(raw)
    gain, offset = normalisation(card)
    x.mul_(torch.from_numpy(gain).view(1, -1, 1, 1)).sub_(torch.from_numpy(offset).view(1, -1, 1, 1))
    ok = torch.from_numpy(np.stack([valid[r, c] for r, c in windows]))
    if not bool(ok.all()):
        x.masked_fill_(~ok[:, None], 0.0)
    return x


def input_array(pixels: np.ndarray, valid: np.ndarray, windows: list[tuple[slice, slice]], card: ModelCard) -> np.ndarray:
    """As :func:`input_batch`, as a C-ordered numpy array (what ONNX Runtime takes)."""
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
) -> ChunkResult:
    """Predict every tile of one chunk and blend them into the chunk's buffer (backend: resolved, torch or onnx).

    ``threads``: ONNX Runtime's threads per call (default :func:`threads_per_task`).
    """
    net, card = cached_model(model_path, device, backend, threads)
    chunk = grid.chunk(*chunk_index)
    with open_working(scene_path, working) as ds:
        pixels, valid = read_box(ds, card.bands, chunk.box, (working.height, working.width))
    todo = []
    for tile in chunk.tiles:
        rows, cols = tile.box.relative_to(chunk.box)
        if valid[rows, cols].any():
            todo.append((tile, rows, cols))
    if not todo:
        return ChunkResult(chunk_index, chunk.box, None, 0, len(chunk.tiles), valid)
    out = np.zeros((len(card.classes), chunk.box.height, chunk.box.width), np.float32)
    parts = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    if backend == "onnx":  # numpy in, numpy out: no torch in this process
        probabilities = (net(input_array(pixels, valid, [(r, c) for _, r, c in part], card)) for part in parts)
    else:
        batches = (input_batch(pixels, valid, [(r, c) for _, r, c in part], card) for part in parts)  # lazily, one ahead on GPUs
        probabilities = iter_probabilities(net, batches, device, precision)
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
