"""The model on a GPU: its floor, geounet's pipelined calls against it, and what bf16/fp16 change.

Issue 20's GPU check, prepared to fit a short loan of a GPU machine: it needs only torch,
numpy and segmentation-models-pytorch (no GDAL stack), so it runs on a bare CUDA image
with the smp wheel carried. For each bundled building model, on real tiles (the Kampala
demo crop, mirror-tiled to the tile size at about the model's resolution, normalised per
its card), and for each precision and batch size:

* floor: forward passes plus softmax on tiles already on the GPU (the model alone);
* pipelined: ``geounet.models.torch_backend.iter_probabilities`` from host arrays
  (pinned host memory, copies on a side stream, results one batch late), two ways: tiles
  normalised to float32 on the host (geounet until 2026-12-04), and raw uint8 DNs with
  their masks normalised on the GPU (``prepare``: what ``geounet predict`` does since),
  each with the host CPU seconds it costs and their largest probability difference;
* synchronous: one batch at a time, copy in, compute, copy back, wait
  (``forward_probabilities``), what the pipelining saves against;
* agreement of bf16/fp16 with fp32: share of pixels whose class (argmax) is the same, and
  the largest probability difference;
* first, a check that a batch overflowing fp16 is computed again in fp32 on the pipelined path.

Megapixels per second count every pixel of every tile (halo included), as the CPU floor
in ``efficiency.py`` does. ``--device cpu`` runs the same logic on the CPU (tiny sizes:
a check of the script, not a measurement).

    python benchmarks/gpu.py [--device cuda] [--tiles 128] [--batches 4,16,64]
        [--precisions fp32,bf16,fp16] [--models buildings,buildings_satellite] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from geounet.models.card import normalisation  # noqa: E402
from geounet.models.network import fuse_batchnorm, load_model  # noqa: E402
from geounet.models.torch_backend import (  # noqa: E402
    forward_probabilities,
    iter_probabilities,
    normaliser,
)

DEMO = REPO / "data" / "demo" / "kampala_demo.tif"
MODELS = REPO / "data" / "models"


def demo_pixels() -> tuple[np.ndarray, float]:
    """The demo crop's RGB pixels (bands, rows, cols) uint8 and its pixel size in metres (about)."""
    try:
        import rasterio

        with rasterio.open(DEMO) as src:
            return src.read(), float(src.res[0])
    except ImportError:  # a bare CUDA image: tifffile reads the deflated GeoTIFF's pixels
        import tifffile

        with tifffile.TiffFile(DEMO) as tif:
            pixels = tif.pages[0].asarray()
            scale = tif.pages[0].tags["ModelPixelScaleTag"].value[0]
        return np.moveaxis(pixels, -1, 0)[:3], float(scale)


def real_tiles(card, n: int, tile: int) -> np.ndarray:
    """``n`` normalised tiles (n, bands, tile, tile) float32 of :func:`demo_raw_tiles`, as the host normalises them."""
    gain, offset = normalisation(card)
    return demo_raw_tiles(card, n, tile).astype(np.float32) * gain[:, None, None] - offset[:, None, None]


def demo_raw_tiles(card, n: int, tile: int) -> np.ndarray:
    """``n`` tiles (n, bands, tile, tile) uint8 of the demo at about the card's resolution.

    Block-averaged by the whole factor nearest the resolution ratio (at least 1), mirror-tiled
    to cover a tile, then shifted by a different offset for each tile so no two are the same.
    """
    pixels, res = demo_pixels()
    f = max(1, round(card.resolution_m / res))
    b, h, w = pixels.shape
    small = pixels[:, : h - h % f, : w - w % f].reshape(b, h // f, f, w // f, f).mean(axis=(2, 4))
    row = np.concatenate([small, small[:, :, ::-1]], axis=2)
    block = np.concatenate([row, row[:, ::-1, :]], axis=1)
    reps = (1, -(-2 * tile // block.shape[1]), -(-2 * tile // block.shape[2]))
    big = np.tile(block, reps)
    rng = np.random.default_rng(0)
    out = np.empty((n, b, tile, tile), np.uint8)
    for i in range(n):
        r, c = rng.integers(0, big.shape[1] - tile), rng.integers(0, big.shape[2] - tile)
        out[i] = np.rint(big[:, r : r + tile, c : c + tile])
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_floor(net, tiles: np.ndarray, batch: int, device: str, precision: str, repeats: int) -> float:
    """Seconds per pass over ``tiles`` for forward + softmax on tiles already on the device."""
    import torch

    from geounet.models.torch_backend import _forward_tensor

    x = torch.as_tensor(tiles[:batch]).to(device).contiguous(memory_format=torch.channels_last)
    n_batches = -(-len(tiles) // batch)
    for _ in range(2):
        _forward_tensor(net, x, device, precision)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats * n_batches):
        _forward_tensor(net, x, device, precision)
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def time_pipelined(
    net, tiles: np.ndarray, batch: int, device: str, precision: str, repeats: int, card=None
) -> tuple[float, float, np.ndarray]:
    """(wall s, host CPU s) per pass over ``tiles`` through ``iter_probabilities``, and the first batch's result.

    ``card`` given: ``tiles`` are raw DNs, sent with all-valid masks and normalised on the
    device, as ``geounet predict`` sends them; else normalised float32 tiles. The host CPU
    counts this process's threads (stacking, pinning, copies, waits).
    """
    prepare = normaliser(*normalisation(card), device) if card is not None else None

    def batches():
        for i in range(0, len(tiles), batch):
            part = tiles[i : i + batch]
            yield part if card is None else (part, np.ones((len(part), *part.shape[2:]), bool))

    first = next(iter_probabilities(net, batches(), device, precision, prepare))
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        for _ in iter_probabilities(net, batches(), device, precision, prepare):
            pass
    return (time.perf_counter() - t0) / repeats, (time.process_time() - c0) / repeats, first


def time_synchronous(net, tiles: np.ndarray, batch: int, device: str, precision: str, repeats: int) -> float:
    """Seconds per pass over ``tiles``, one batch at a time: copy in, compute, copy back, wait."""
    batches = [tiles[i : i + batch] for i in range(0, len(tiles), batch)]
    forward_probabilities(net, batches[0], device, precision)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for b in batches:
            forward_probabilities(net, b, device, precision)
    return (time.perf_counter() - t0) / repeats


def agreement(net, tiles: np.ndarray, device: str, precision: str) -> dict[str, float]:
    """Pixels whose class is the same as fp32's (share) and the largest probability difference."""
    ref = forward_probabilities(net, tiles, device, "fp32")
    got = forward_probabilities(net, tiles, device, precision)
    return {
        "same_class": float((ref.argmax(1) == got.argmax(1)).mean()),
        "max_probability_difference": float(np.abs(ref - got).max()),
    }


def check_overflow_redo(device: str) -> dict[str, bool]:
    """The pipelined path's fp32 redo of a batch that overflows fp16, on this device (GPU-only code on CUDA).

    A convolution whose logits pass fp16's range (65504) in the second of three batches:
    every result must be finite, that batch equal to fp32's, the others fp16's own.
    """
    import torch

    net = torch.nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        net.weight.fill_(1000.0)
        net.weight[1] *= -1
        net.bias.zero_()
    net = net.to(device).eval()
    batches = [np.full((2, 3, 64, 64), v, np.float32) for v in (0.001, 10.0, 0.002)]
    got = list(iter_probabilities(net, iter(batches), device, "fp16"))
    fp32 = [forward_probabilities(net, b, device, "fp32") for b in batches]
    result = {
        "in_order": len(got) == 3,
        "all_finite": all(bool(np.isfinite(p).all()) for p in got),
        "overflowed_batch_is_fp32": bool(np.array_equal(got[1], fp32[1])),
        "others_close_to_fp32": all(bool(np.abs(got[i] - fp32[i]).max() < 1e-2) for i in (0, 2)),
    }
    print(f"fp16 overflow redo on {device}: {'ok' if all(result.values()) else 'FAILED'} {result}", flush=True)
    return result


def measure_model(name: str, args: argparse.Namespace) -> dict:
    import torch

    net, card = load_model(MODELS / f"{name}.safetensors", args.device)
    fuse_batchnorm(net)
    net = net.to(memory_format=torch.channels_last)
    raw = demo_raw_tiles(card, args.tiles, args.tile)
    tiles = real_tiles(card, args.tiles, args.tile)
    mp = len(tiles) * args.tile * args.tile / 1e6
    out: dict = {"model": name, "resolution_m": card.resolution_m, "tiles": len(tiles), "megapixels": mp, "runs": []}
    for precision in args.precisions:
        for batch in args.batches:
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(args.device)
            floor = time_floor(net, tiles, batch, args.device, precision, args.repeats)
            piped, piped_cpu, piped_first = time_pipelined(net, tiles, batch, args.device, precision, args.repeats)
            raw_s, raw_cpu, raw_first = time_pipelined(net, raw, batch, args.device, precision, args.repeats, card)
            sync = time_synchronous(net, tiles, batch, args.device, precision, args.repeats)
            run = {
                "precision": precision,
                "batch": batch,
                "floor_mp_s": mp / floor,
                "pipelined_mp_s": mp / piped,
                "pipelined_raw_mp_s": mp / raw_s,
                "synchronous_mp_s": mp / sync,
                "pipelined_of_floor": floor / piped,
                "pipelined_raw_of_floor": floor / raw_s,
                "synchronous_of_floor": floor / sync,
                "host_cpu_s_per_mp": piped_cpu / mp,
                "host_cpu_s_per_mp_raw": raw_cpu / mp,
                "raw_max_probability_difference": float(np.abs(piped_first - raw_first).max()),
            }
            if args.device.startswith("cuda"):
                run["peak_gpu_mib"] = torch.cuda.max_memory_allocated(args.device) / 2**20
            out["runs"].append(run)
            print(
                f"{name:20s} {precision:5s} batch {batch:3d}: floor {run['floor_mp_s']:8.1f} MP/s, "
                f"pipelined {run['pipelined_mp_s']:8.1f} ({run['pipelined_of_floor']:.2f} of the floor), "
                f"synchronous {run['synchronous_mp_s']:8.1f} ({run['synchronous_of_floor']:.2f}); raw DNs "
                f"{run['pipelined_raw_mp_s']:8.1f} ({run['pipelined_raw_of_floor']:.2f}); host CPU s/MP "
                f"{run['host_cpu_s_per_mp']:.4f} float32, {run['host_cpu_s_per_mp_raw']:.4f} raw "
                f"(max |diff| {run['raw_max_probability_difference']:.1e})",
                flush=True,
            )
    sample = tiles[: min(8, len(tiles))]
    out["agreement_with_fp32"] = {p: agreement(net, sample, args.device, p) for p in args.precisions if p != "fp32"}
    for p, a in out["agreement_with_fp32"].items():
        print(
            f"{name:20s} {p} against fp32 on {len(sample)} real tiles: same class {100 * a['same_class']:.3f} % of "
            f"pixels, largest probability difference {a['max_probability_difference']:.4f}",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="buildings,buildings_satellite")
    ap.add_argument("--tiles", type=int, default=128, help="tiles per pass (a 4096^2 scene needs 100 of 512 px)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--batches", default="4,16,64")
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.precisions = args.precisions.split(",")
    import torch

    env = {"torch": torch.__version__, "device": args.device}
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda: torch sees no CUDA device here")
        env["gpu"] = torch.cuda.get_device_name(args.device)
        torch.backends.cudnn.benchmark = True  # one tile size: let cuDNN pick its fastest kernels once
    print(json.dumps(env), flush=True)
    results = {
        "environment": env,
        "overflow_redo": check_overflow_redo(args.device),
        "models": [measure_model(m, args) for m in args.models.split(",")],
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
