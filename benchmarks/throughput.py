"""Throughput without the model: the pipeline's own megapixels per second per core, stage by stage.

The proxy for GPU hosts, where the model is nearly free. A scene (the demo crop repeated,
at the model's resolution, so every pixel is run) is predicted end to end, with vectors,
in this process, with the model replaced by a trivial one: building probability a smooth
function of the red band smoothed over 15 px (a few numpy operations per pixel; classes
come in roof-sized blobs). Everything else is geounet's real path: coverage, windowed reads,
normalisation, blending, stitching, COGs, polygons and their clean-up. Prints wall seconds
and megapixels per second per core for the whole run and for each stage recorded in
run.json, and names the stage that limits it. A tiny real U-Net's forward passes over the
same tiles are timed too, for scale.

    python benchmarks/throughput.py [--size 4096] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from memory import make_model, make_scene  # noqa: E402


def trivial_net(x: np.ndarray) -> np.ndarray:
    """(n, bands, h, w) normalised input -> (n, 2, h, w) probabilities: background / building from band 1.

    Band 1 is smoothed over 15 px first, so the classes come in blobs of about a roof's size,
    not per-pixel speckle (which would make the vector stage's work unlike a real scene's).
    """
    from scipy.ndimage import uniform_filter

    p = 1.0 / (1.0 + np.exp(-4.0 * uniform_filter(x[:, 0], size=(1, 15, 15))))
    return np.stack([1.0 - p, p], axis=1).astype(np.float32)


def model_floor(model: Path, n_tiles: int, tile: int) -> float:
    """Wall seconds of ``n_tiles`` forward passes of ``model`` alone (ONNX Runtime, batch 1, all cores)."""
    from geounet.models.onnx import load_onnx

    net = load_onnx(model, os.cpu_count() or 1)
    x = np.random.default_rng(0).normal(size=(1, 3, tile, tile)).astype(np.float32)
    net(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(n_tiles):
        net(x)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="scene side in pixels")
    ap.add_argument("--keep", type=Path, help="keep the scene and outputs here")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="geounet-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["GEOUNET_CACHE_DIR"] = str(work / "cache")
    cores = os.cpu_count() or 1
    try:
        scene = make_scene(work / "scene.tif", args.size)
        model = make_model(work / "tiny.safetensors", scene)
        import geounet.engine.executors as executors
        import geounet.engine.tiles as tiles_module
        from geounet.engine.predict import predict_batch
        from geounet.engine.settings import PredictSettings
        from geounet.models.card import read_card

        card = read_card(model)
        fake = lambda *args, **kwargs: (trivial_net, card)  # noqa: E731 - the model replaced, nothing else
        tiles_module.cached_model = fake  # type: ignore[assignment]
        executors.cached_model = fake  # type: ignore[assignment]
        settings = PredictSettings(quiet=True, precision="fp32", backend="onnx", vector_processes=False)
        t0, c0 = time.perf_counter(), time.process_time()
        [report] = predict_batch([scene], work / "out", model, settings)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not report.ok:
            sys.exit(f"run failed: {report.error}")
        record = json.loads((work / "out" / "scene" / "run.json").read_text())
        tiles, timings = record["tiles"], record["timings"]
        mp = args.size * args.size / 1e6
        print(
            f"machine: {cores} cores; scene {args.size}^2 ({mp:.1f} MP), {tiles['run']} tiles of {tiles['tile_size']} px"
        )
        print(f"{'part (model replaced by a trivial one)':44s} {'wall s':>8s} {'MP/s/core':>10s}")

        def row(name: str, seconds: float) -> None:
            print(f"{name:44s} {seconds:8.2f} {mp / max(seconds, 1e-9) / cores:10.2f}")

        row("whole run, with vectors", wall)
        stages = {
            "coverage (mask read)": "coverage_s",
            "read + trivial model + blend + stitch": "predict_and_stitch_s",
            "stage 2 (resampled scenes only)": "finalize_s",
            "COGs": "cog_s",
            "vectors": "vectorize_s",
        }
        own = {name: timings[key] for name, key in stages.items() if timings.get(key)}
        for name, seconds in own.items():
            row(f"  {name}", seconds)
        print(
            f"CPU seconds of this process: {cpu:.1f} over {wall:.1f} s wall ({cpu / wall / cores:.0%} of {cores} cores)"
        )
        limit = max(own, key=lambda k: own[k])
        print(f"limiting stage: {limit} ({own[limit]:.2f} s of {wall:.2f} s)")
        floor = model_floor(model, tiles["run"], tiles["tile_size"])
        print(f"for scale: a tiny real U-Net (resnet18, depth 3) over the same tiles alone: {floor:.1f} s")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
