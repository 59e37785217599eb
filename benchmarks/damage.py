"""Benchmark: the full Joplin damage run (4 pre tiles, 6 post tiles, 2,823 footprints).

Prints the total time and the share spent reading pre, warping post onto the pre grid,
in the model, and in per-building (zonal) statistics, plus the grade counts.

    python benchmarks/damage.py [--data ../shared/data/joplin] [--out /tmp/joplin_damage]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "joplin")
    ap.add_argument("--out", type=Path, default=Path("/tmp/geounet_bench_damage"))
    ap.add_argument("--model", type=Path, default=REPO / "data" / "models" / "buildings.safetensors")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"Joplin data not found: {args.data}")

    import torch

    from geounet.damage.run import run_damage
    from geounet.damage.settings import DamageSettings

    pre = sorted((args.data / "pre").glob("*.tif"))
    post = sorted((args.data / "post").glob("*.tif"))
    t0, cpu0 = time.perf_counter(), time.process_time()
    run = run_damage(pre, post, args.out, args.data / "footprints_2020.geojson", args.model, DamageSettings())
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    t = run["timings"]
    win = run["method"]["overlap_window"]
    print(f"machine: {os.cpu_count()} CPU(s), torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(
        f"overlap: {win['width']} x {win['height']} px of the pre grid (0.6 m), "
        f"{run['method']['valid_pixels'] / 1e6:.2f} MP valid in both epochs"
    )
    print(f"footprints: {run['footprints']['used']} used, {run['buildings']['total']} in damage.gpkg")
    print(f"total: {wall:.1f} s wall, {cpu:.1f} s CPU (all threads); load average now {os.getloadavg()[0]:.1f}")
    parts = {
        "read pre (VRT)": "read_pre",
        "warp post onto pre grid (WarpedVRT)": "warp_post",
        "model (U-Net pre + post, change measures)": "model",
        "per-building statistics (rasterize + bincount)": "zonal",
    }
    print(f"  {'part':48s} {'wall':>8s} {'share':>7s} {'CPU':>8s} {'share':>7s}")
    for name, key in parts.items():
        w, c = t[f"blocks_{key}_s"], t[f"blocks_{key}_cpu_s"]
        print(f"  {name:48s} {w:7.2f}s {100 * w / wall:6.1f}% {c:7.2f}s {100 * c / cpu:6.1f}%")
    rest = {
        "inputs, footprints, VRTs": "prepare_s",
        "buildings table + GeoPackage": "buildings_s",
        "change.tif COG": "cog_s",
        "quicklook.png": "quicklook_s",
    }
    for name, key in rest.items():
        print(f"  {name:48s} {t[key]:7.2f}s {100 * t[key] / wall:6.1f}%")
    print("grades:", ", ".join(f"{k} {v}" for k, v in run["buildings"]["per_grade"].items()))
    print("not assessed:", run["buildings"]["not_assessed"])


if __name__ == "__main__":
    main()
