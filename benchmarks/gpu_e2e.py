"""``geounet predict --device cuda`` end to end on a GPU machine (``--no-vector``; with ``--vectors`` also with them).

For a short loan of a bare CUDA machine: the GDAL stack travels as wheels (rasterio, pyproj,
shapely, geopandas, dask, pystac; about 53 MB), but pyogrio (33 MB more) does not fit beside
the repository in what one call may carry, so only runs without vectors are possible there;
modules that are not installed and that a run without vectors never calls (pyogrio, boto3,
distributed) are stood in for (``gpu_train.stand_in_missing``). Scene: the efficiency
scene (the Kampala demo crop at 0.15 m, mirror-tiled) at ``--size``; each run is a child
process, wall and CPU seconds of its whole tree (``_measure.run_measured_cpu``), interpreter
and CUDA start-up included; a first small run warms the disk cache and cuDNN's choices
are made again in each process. Floor: ``benchmarks/gpu.py`` on the same machine kind.

    python3 benchmarks/gpu_e2e.py --size 8192 --out $OUT [--batches 4,16] [--workers 1,4] [--vectors]

``--device cpu --backend torch --tiny-model --workers 1,2`` is the CPU proxy of a GPU host: a
tiny network (``_measure.tiny_model``) stands for a model that is nearly free, on torch as a
GPU run is, so what the number of chunk tasks changes is the pipeline's own CPU stages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

RUNNER = """import sys
sys.path.insert(0, {here!r})
from gpu_train import stand_in_missing
stand_in_missing()
from geounet.cli.main import main
sys.argv = ["geounet", *sys.argv[1:]]
main()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="4,16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--workers", default="", help="chunk tasks, comma-separated (default: geounet's default)")
    ap.add_argument("--tiny-model", action="store_true", help="a tiny random network instead of the default model")
    ap.add_argument("--vectors", action="store_true", help="also with vectors (needs pyogrio installed there)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_e2e"))
    args = ap.parse_args()
    from gpu_train import stand_in_missing

    print("stood in:", stand_in_missing(), flush=True)
    from _measure import run_measured_cpu, tiny_model
    from efficiency import make_scene

    args.work.mkdir(parents=True, exist_ok=True)
    runner = args.work / "geounet_runner.py"
    runner.write_text(RUNNER.format(here=str(HERE)))
    model = ["--model", str(tiny_model(args.work / "tiny.safetensors", 0.15))] if args.tiny_model else []
    small = make_scene(args.work / "warm.tif", 2048)
    scene = make_scene(args.work / "scene.tif", args.size)
    mp = args.size**2 / 1e6
    cores = os.cpu_count() or 1
    results: dict = {"size": args.size, "megapixels": mp, "cores": cores, "device": args.device, "runs": []}

    def predict(path: Path, name: str, *extra: str) -> dict:
        out = args.work / name
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, str(runner), "predict", str(path), "--out", str(out)]
        cmd += ["--device", args.device, "--backend", args.backend, *model, *extra]
        wall, cpu, rss = run_measured_cpu(cmd)
        record = json.loads(next(out.rglob("run.json")).read_text())
        return {"name": name, "args": list(extra), "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss, "run": record}

    predict(small, "warm", "--no-vector")
    for vectors in (["--no-vector"], []) if args.vectors else (["--no-vector"],):
        for batch in args.batches.split(","):
            for workers in args.workers.split(",") if args.workers else [""]:
                extra = [*vectors, "--batch-size", batch] + (["--workers", workers] if workers else [])
                name = f"batch{batch}_workers{workers or 'default'}{'_vectors' if not vectors else ''}"
                r = predict(scene, name, *extra)
                r["mp_s"] = mp / r["wall_s"]
                results["runs"].append(r)
                print(
                    f"{args.size}^2 --device {args.device} {' '.join(extra)}: {r['wall_s']:.1f} s wall, "
                    f"{r['mp_s']:.1f} MP/s ({r['mp_s'] / cores:.2f} per core), CPU {r['cpu_s']:.1f} s, "
                    f"geounet's own {r['run']['timings']['total_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
                (args.out / "gpu_e2e.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
