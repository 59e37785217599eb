"""Vectorizing a 100-megapixel class raster: naive whole-raster shapes vs geounet's block merge.

    python benchmarks/vectorize.py [--size 10000] [--block 1024]

Generates a size x size uint8 class raster (UTM, 1 m pixels) of random blobs of two
land-cover classes (well over 50,000 polygons), then times, each in its own process
with the peak RSS of its process tree:

(a) naive: read the whole raster, ``rasterio.features.shapes`` over it in one process,
    then the same shapely post-processing (holes, specks, simplification, metric areas)
    and a GeoPackage write: what a user would write by hand;
(b) geounet ``vectorize_scene`` on an in-process Dask cluster with 1 and 2 threads (what
    ``geounet predict`` uses), and on 2 worker processes.

All variants produce the same number of polygons and total area (checked).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _measure import run_measured  # noqa: E402

RULES = {"min_area_m2": 0.0, "hole_area_m2": 0.0, "simplify_m": 1.0}  # keep every polygon


def card():
    from geounet.models.card import ClassInfo, ModelCard

    return ModelCard(
        name="bench",
        classes=[
            ClassInfo("background", (0, 0, 0), "background"),
            ClassInfo("crop", (200, 180, 40), "landcover"),
            ClassInfo("forest", (20, 120, 40), "landcover"),
        ],
        bands=[1],
        band_names=["x"],
        mean=[0.0],
        std=[1.0],
        scale=1.0,
        input_dtypes=["uint8"],
        resolution_m=1.0,
    )


def generate(path: Path, size: int) -> None:
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(1, 0, 400000, 0, -1, 5800000),
        nodata=255,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
    )
    rng = np.random.default_rng(0)
    step = 1000
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, step):
            for c in range(0, size, step):
                h, w = min(step, size - r), min(step, size - c)
                noise = ndimage.uniform_filter(rng.random((h + 20, w + 20)), 14)[10:-10, 10:-10]
                cls = np.zeros((h, w), np.uint8)
                cls[noise > 0.56] = 1
                cls[noise < 0.44] = 2
                dst.write(cls, 1, window=((r, r + h), (c, c + w)))


def naive(classes: Path, out: Path) -> dict:
    import geopandas as gpd
    import pyogrio
    from rasterio.features import shapes

    from geounet.compute.postprocess import ClassRules, clean_polygons, metric_crs

    with rasterio.open(classes) as src:
        data = src.read(1)
        crs, transform, bounds = src.crs, src.transform, src.bounds
    geoms, values = [], []
    for geom, value in shapes(data, mask=(data > 0) & (data != 255), transform=transform, connectivity=4):
        geoms.append(geom)
        values.append(int(value))
    import shapely.geometry

    gdf = gpd.GeoDataFrame({"class": values}, geometry=[shapely.geometry.shape(g) for g in geoms], crs=crs)
    metric = metric_crs(crs, tuple(bounds))
    gdf = clean_polygons(gdf.to_crs(metric), ClassRules(**RULES)).to_crs(crs)
    pyogrio.write_dataframe(gdf, out, layer="landcover", driver="GPKG")
    return {"features": len(gdf), "area_m2": float(gdf.area_m2.sum())}


def ours(classes: Path, out: Path, workers: int, block: int, processes: bool) -> dict:
    from distributed import Client, LocalCluster

    from geounet.compute.postprocess import ClassRules
    from geounet.engine.vector_stage import vectorize_scene

    rules = {"landcover": ClassRules(**RULES)}
    spec = dict(n_workers=workers, threads_per_worker=1) if processes else dict(n_workers=1, threads_per_worker=workers)
    if processes:  # workers forked from this process start in a fraction of a second (modules already imported)
        import dask

        dask.config.set({"distributed.worker.multiprocessing-method": "fork"})
    with LocalCluster(**spec, processes=processes, dashboard_address=":0") as cluster, Client(cluster) as client:
        from geounet.engine.executors import DistributedExecutor

        info = vectorize_scene(classes, None, out, card(), DistributedExecutor(client), rules=rules, block=block)
    import pyogrio

    # The check reads back only the area column (the naive variant sums its in-memory frame).
    areas = pyogrio.read_dataframe(out, layer="landcover", columns=["area_m2"], read_geometry=False)
    return {"features": info["layers"]["landcover"], "area_m2": float(areas.area_m2.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--run", choices=["naive", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--processes", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--classes", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:  # child process: one variant
        t0 = time.perf_counter()
        result = (
            naive(args.classes, args.out)
            if args.run == "naive"
            else ours(args.classes, args.out, args.workers, args.block, args.processes)
        )
        result["seconds_inside"] = time.perf_counter() - t0
        args.out.with_suffix(".json").write_text(json.dumps(result))
        return
    work = Path(tempfile.mkdtemp(prefix="geounet-vec-"))
    try:
        classes = work / "classes.tif"
        generate(classes, args.size)
        print(f"class raster: {args.size} x {args.size} = {args.size**2 / 1e6:.0f} MP, block {args.block}", flush=True)
        rows = []
        for name, extra in (
            ("naive whole-raster shapes", ["--run", "naive"]),
            ("geounet, 1 thread", ["--run", "ours", "--workers", "1"]),
            ("geounet, 2 threads", ["--run", "ours", "--workers", "2"]),
            ("geounet, 2 processes", ["--run", "ours", "--workers", "2", "--processes"]),
        ):
            out = work / f"{len(rows)}.gpkg"
            cmd = [
                sys.executable,
                __file__,
                "--classes",
                str(classes),
                "--out",
                str(out),
                "--block",
                str(args.block),
                *extra,
            ]
            secs, peak = run_measured(cmd)
            res = json.loads(out.with_suffix(".json").read_text())
            rows.append((name, secs, peak, res))
            print(
                f"{name:<28} {secs:7.1f} s  peak RSS {peak:7.0f} MiB  {res['features']} features, "
                f"{res['area_m2']:.0f} m2",
                flush=True,
            )
        base = rows[0]
        print("\nvariant                        seconds  peak MiB  speed vs naive  features")
        for name, secs, peak, res in rows:
            print(f"{name:<28} {secs:9.1f} {peak:9.0f} {base[1] / secs:14.2f}x  {res['features']}")
        counts = {r[3]["features"] for r in rows}
        print("same features in all variants:", len(counts) == 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
