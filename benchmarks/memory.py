"""Peak memory of `geounet predict` against scene size: it must not grow with the scene.

Generates scenes of N x N pixels (the demo crop repeated, written block by block as a
tiled GeoTIFF, EPSG:3857 at the demo's 0.075 m), builds a tiny random-weight U-Net
at the scene's own resolution (so the model runs on every pixel, no resampling), runs
`geounet predict --no-vector` (the raster pipeline; benchmarks/vectorize.py measures vectors) in a child process and samples the resident memory of the process
tree every 0.1 s.

    python benchmarks/memory.py --sizes 4096 16384 32768 [--workers N] [--backend auto] [--keep DIR]

(32768^2 is a 3 GiB scene and takes about 20 min on an idle 2-core machine.)

Prints one row per size: seconds, megapixels/s, peak RSS (MiB), and the ratio to the
smallest size's peak.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured, tiny_model, write_repeated  # noqa: E402

DEMO = REPO / "data" / "demo" / "kampala_demo.tif"


def make_scene(path: Path, size: int) -> Path:
    with rasterio.open(DEMO) as src:
        tile = src.read()
        profile = src.profile | dict(
            width=size, height=size, compress=None, tiled=True, blockxsize=512, blockysize=512, BIGTIFF="YES"
        )
    th, tw = tile.shape[1:]
    return write_repeated(path, np.tile(tile, (1, 2048 // th + 1, 2048 // tw + 1)), size, profile)


def make_model(path: Path, scene: Path) -> Path:
    """The tiny bench model at the scene's own resolution (so the model runs on every pixel)."""
    sys.path.insert(0, str(REPO))
    from geounet.io.scene import ground_resolution

    with rasterio.open(scene) as s:
        res = ground_resolution(s.crs, s.transform, s.width, s.height)
    return tiny_model(path, res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    ap.add_argument("--workers", type=int, help="default: geounet's (one chunk task per core with ONNX Runtime)")
    ap.add_argument("--backend", default="auto", help="auto (ONNX Runtime on this CPU), torch or onnx")
    ap.add_argument("--keep", type=Path, help="keep generated scenes and outputs here")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="geounet-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["GEOUNET_CACHE_DIR"] = str(work / "cache")  # the ONNX export of the random model: not in ~/.cache
    exe = [sys.executable, "-m", "geounet.cli.main"]
    rows = []
    try:
        model = None
        for n in args.sizes:
            scene = make_scene(work / f"scene_{n}.tif", n)
            if model is None:
                model = make_model(work / "tiny.safetensors", scene)
                if args.backend != "torch":  # export once now: the measured runs use the cache, as a user's do
                    from geounet.models.onnx import load_onnx

                    load_onnx(model, 1)
            workers = ["--workers", str(args.workers)] if args.workers else []
            secs, peak = run_measured(
                exe
                + [
                    "predict",
                    str(scene),
                    "--out",
                    str(work / "out"),
                    "--model",
                    str(model),
                    *workers,
                    "--backend",
                    args.backend,
                    "--no-vector",
                    "--quiet",
                ]
            )
            rows.append((n, secs, n * n / secs / 1e6, peak))
            print(f"{n:>6} x {n:<6} {secs:8.1f} s {n * n / secs / 1e6:7.2f} MP/s  peak RSS {peak:8.1f} MiB", flush=True)
            scene.unlink()
            shutil.rmtree(work / "out", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0][3]
    print("\nsize        seconds   MP/s   peak RSS MiB   ratio to smallest")
    for n, secs, mps, peak in rows:
        print(f"{n:>6}^2  {secs:9.1f}  {mps:5.2f}  {peak:12.1f}   {peak / base:6.3f}")


if __name__ == "__main__":
    main()
