"""Benchmark: the full Joplin damage run (4 pre tiles, 6 post tiles, 2,823 footprints).

Prints the total time and the share spent reading pre, warping post onto the pre grid,
in the model, and in per-building (zonal) statistics, plus the grade counts; then the
checks that need no damage map: the buildings along the northern edge of the overlap
(the post image shows them standing) against the rest (the tornado track crosses it),
and the pre tiles against unchanged copies of themselves (re-exposed; as another
acquisition would see them), whose buildings should come out ``no-damage``.

    python benchmarks/damage.py [--data ../shared/data/joplin] [--out /tmp/joplin_damage] [--no-null]
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
    ap.add_argument("--model", type=Path, default=None, help="default: the bundled buildings variant for 0.6 m")
    ap.add_argument("--no-null", action="store_true", help="skip the unchanged-scene runs")
    args = ap.parse_args()
    from geounet.models.registry import pick_variant

    args.model = args.model or pick_variant("buildings", 0.6).path
    print(f"model: {args.model.name}")
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
    _track_check(args.out / "damage.gpkg")
    if not args.no_null:
        _unchanged_checks(pre, args)


def _severe(grades) -> float:
    return float(grades.isin(["major-damage", "destroyed"]).mean())


def _track_check(gpkg: Path) -> None:
    """Northern edge of the overlap (top 15 % of the graded buildings by northing) against the rest."""
    import geopandas as gpd
    import numpy as np
    from scipy.stats import rankdata

    t = gpd.read_file(gpkg, layer="buildings")
    t = t[t["damage"] != "not_assessed"]
    b = t.geometry.bounds
    north = ((b.miny + b.maxy) / 2 >= np.quantile((b.miny + b.maxy) / 2, 0.85)).to_numpy()
    s_n, s_r = _severe(t["damage"][north]), _severe(t["damage"][~north])
    ranks = rankdata(t["damage_score"].to_numpy())  # AUC = Mann-Whitney U / (n_rest n_edge)
    n_r, n_n = (~north).sum(), north.sum()
    auc = (ranks[~north].sum() - n_r * (n_r + 1) / 2) / (n_r * n_n)
    print(
        f"northern edge (n={north.sum()}): {100 * s_n:.1f} % major/destroyed; rest (n={(~north).sum()}): "
        f"{100 * s_r:.1f} %; ratio {s_r / max(s_n, 1e-9):.2f}; damage_score AUC rest > edge {auc:.3f}"
    )
    for name, m in (("edge", north), ("rest", ~north)):
        q = t[m][["building_prob_pre", "building_prob_post", "feature_distance", "presence_drop", "change_term"]]
        print(f"  {name}: medians " + ", ".join(f"{k} {v:.3f}" for k, v in q.median().items()))


def _unchanged_checks(pre: list[Path], args: argparse.Namespace) -> None:
    """Pre against itself re-exposed, and as another acquisition (colour cast, blur, 1.5 px shift)."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    from scipy.ndimage import gaussian_filter, shift

    from geounet.damage.run import run_damage
    from geounet.damage.settings import DamageSettings

    def reexposed(a: np.ndarray) -> np.ndarray:
        return 255.0 * (1.12 * (a / 255.0) ** 0.85 + 0.02)

    def other_acquisition(a: np.ndarray) -> np.ndarray:
        cast = np.array([1.05, 0.97, 0.92])[:, None, None]
        moved = np.stack([gaussian_filter(shift(b, (1.5, -1.0), order=1, mode="nearest"), 0.8) for b in a])
        return 255.0 * (0.9 * (moved / 255.0) ** 1.1 * cast + 0.03)

    for name, change in (("re-exposed", reexposed), ("other acquisition", other_acquisition)):
        folder = args.out.parent / f"{args.out.name}_unchanged_{name.replace(' ', '_')}"
        folder.mkdir(parents=True, exist_ok=True)
        post = []
        for tile in pre:
            with rasterio.open(tile) as src:
                a, profile = src.read().astype(np.float64), src.profile
            with rasterio.open(folder / tile.name, "w", **profile) as dst:
                dst.write(np.clip(np.rint(change(a)), 0, 255).astype(np.uint8))
            post.append(folder / tile.name)
        t0 = time.perf_counter()
        run_damage(pre, post, folder / "out", args.data / "footprints_2020.geojson", args.model, DamageSettings())
        t = gpd.read_file(folder / "out" / "damage.gpkg", layer="buildings")
        t = t[t["damage"] != "not_assessed"]
        print(
            f"unchanged, {name}: {len(t)} graded, {100 * _severe(t['damage']):.1f} % major/destroyed, "
            f"{100 * (t['damage'] == 'no-damage').mean():.1f} % no-damage ({time.perf_counter() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main()
