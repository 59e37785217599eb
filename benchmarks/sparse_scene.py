"""Cost of a mostly empty scene: a huge VRT holding one small real source, against the source alone.

Writes one random 512^2 RGB GeoTIFF (EPSG:32615, 0.5 m, values 1-255) and, for each size N,
a VRT of N x N pixels (nodata 0) that places it once, away from the tile grid's lines;
builds a tiny random-weight U-Net at 0.5 m (tiles 512, overlap 64: no resampling) and runs
``geounet predict`` (rasters and vectors) on the source alone, then on each VRT, each in
a child process. Prints wall time, CPU seconds and peak RSS of the process tree, and their
ratios to the source-alone run measured in the same invocation.

    python benchmarks/sparse_scene.py [--sizes 40000 200000] [--timeout 900] [--keep DIR]

``--geounet DIR`` runs another checkout of the package (e.g. ``git archive HEAD`` unpacked
somewhere) for a before/after comparison; a run that passes ``--timeout`` is stopped and
reported with what it had used by then.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio
from affine import Affine

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from _measure import tiny_model  # noqa: E402

from tests.helpers import sparse_vrt  # noqa: E402  (the same mostly empty mosaic as tests/engine/test_sparse.py)

RES = 0.5
ORIGIN = (300000.0, 5000000.0)  # EPSG:32615, upper-left corner of every VRT
SOURCE = 512


def write_source(path: Path, col: int, row: int) -> Path:
    """The real data: a random RGB 512^2 GeoTIFF whose upper-left pixel is VRT pixel (row, col)."""
    data = np.random.default_rng(0).integers(1, 256, (3, SOURCE, SOURCE), dtype=np.uint8)
    transform = Affine(RES, 0, ORIGIN[0] + col * RES, 0, -RES, ORIGIN[1] - row * RES)
    profile = dict(driver="GTiff", width=SOURCE, height=SOURCE, count=3, dtype="uint8", crs="EPSG:32615")
    with rasterio.open(path, "w", transform=transform, tiled=True, **profile) as dst:
        dst.write(data)
    return path


def measure(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path) -> dict[str, float | bool]:
    """Run ``cmd``; wall seconds, CPU seconds, peak RSS (MiB) summed over its process tree and of its main process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL)  # cwd: no checkout on sys.path
    root = psutil.Process(proc.pid)
    peak, main_peak, cpu_seen, timed_out = 0, 0, {}, False
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    cpu_seen[p.pid] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        peak = max(peak, total)
        try:
            main_peak = max(main_peak, root.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
        if time.perf_counter() - t0 > timeout:
            timed_out = True
            for p in [*root.children(recursive=True), root]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            proc.wait()
            break
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode and not timed_out:
        raise SystemExit(f"{cmd} failed with exit code {proc.returncode}")
    return {
        "wall_s": wall,
        "cpu_s": max(cpu, sum(cpu_seen.values())),
        "peak_mib": max(peak, after.ru_maxrss * 1024) / 2**20,
        "main_mib": main_peak / 2**20,
        "timed_out": timed_out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[40000, 200000])
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is stopped")
    ap.add_argument("--geounet", type=Path, help="run the geounet package of this checkout instead of this one")
    ap.add_argument("--keep", type=Path, help="keep inputs and outputs here")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="geounet-sparse-"))
    work.mkdir(parents=True, exist_ok=True)
    repo = (args.geounet or Path(__file__).resolve().parent.parent).resolve()
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "GEOUNET_CACHE_DIR": str(work / "cache"),  # the random model's ONNX export: not in ~/.cache
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    os.environ["GEOUNET_CACHE_DIR"] = env["GEOUNET_CACHE_DIR"]
    try:
        model = tiny_model(work / "tiny.safetensors", RES)
        from geounet.models.onnx import load_onnx

        load_onnx(model, 1)  # exported once now: the measured runs use the cache, as a user's do
        scenes = [("source alone", write_source(work / "source.tif", 0, 0))]
        for n in args.sizes:
            at = (n // 2 // 448) * 448 + 200  # mid-scene, off the 448 px tile stride and the 512 px blocks
            src = write_source(work / f"source_{n}.tif", at, at)
            scenes.append((f"VRT {n}^2", sparse_vrt(work / f"sparse_{n}.vrt", n, src, at, at)))
        exe = [sys.executable, "-m", "geounet.cli.main", "predict"]
        rows = []
        for label, scene in scenes:
            out = work / "out"
            m = measure(
                exe + [str(scene), "--out", str(out), "--model", str(model), "--quiet"], env, args.timeout, work
            )
            record = out / scene.stem / "run.json"
            tiles, timings = {}, {}
            if record.exists() and not m["timed_out"]:
                run = json.loads(record.read_text())
                tiles, timings = run["tiles"], run["timings"]
            rows.append((label, m, tiles, timings))
            stop = " (stopped: timeout)" if m["timed_out"] else ""
            print(
                f"{label:>14}: {m['wall_s']:8.1f} s wall {m['cpu_s']:8.1f} s CPU {m['peak_mib']:8.1f} MiB peak"
                f" ({m['main_mib']:.1f} MiB main process){stop}",
                flush=True,
            )
            if tiles:
                print(f"{'':>16}tiles {tiles}")
                print(f"{'':>16}timings {', '.join(f'{k} {v:.2f}' for k, v in timings.items())}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0][1]
    print("\nscene              wall s    CPU s   peak MiB   main MiB   wall / alone   CPU / alone   peak / alone")
    for label, m, _, _ in rows:
        print(
            f"{label:<15} {m['wall_s']:9.1f} {m['cpu_s']:8.1f} {m['peak_mib']:10.1f} {m['main_mib']:10.1f}"
            f" {m['wall_s'] / base['wall_s']:14.2f} {m['cpu_s'] / base['cpu_s']:13.2f}"
            f" {m['peak_mib'] / base['peak_mib']:14.2f}" + ("  (stopped)" if m["timed_out"] else "")
        )
    print("(peak: the process tree, vector worker processes included; main: the geounet process alone)")


if __name__ == "__main__":
    main()
