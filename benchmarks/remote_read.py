"""A scene read over HTTP against the same file read locally: same classes, bytes and requests, time.

A 4096^2 COG (the demo crop repeated, 512 px blocks, DEFLATE) is predicted by a tiny model
at the scene's resolution (so the pipeline, not the model, is what runs), once from the
local file and once from a loopback HTTP server that answers byte ranges (the tests'
``RangeServer``), with ``--no-vector``. Prints wall and CPU seconds of each, the server's
request count and bytes served as a multiple of the file's size, and whether the two
``classes.tif`` are pixel-identical.

    python benchmarks/remote_read.py [--size 4096] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from memory import make_model, make_scene  # noqa: E402


def cog(src: Path, dst: Path) -> Path:
    """``src`` as a COG: 512 px blocks, DEFLATE, overviews (what a scene on a server is)."""
    from rasterio.shutil import copy

    copy(src, dst, driver="COG", blocksize=512, compress="DEFLATE")
    return dst


def predict(scene: str, model: Path, out: Path) -> tuple[float, float]:
    """``geounet predict`` in this process; returns (wall s, CPU s of this process)."""
    from typer.testing import CliRunner

    from geounet.cli.main import app

    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    res = CliRunner().invoke(app, ["predict", scene, "--model", str(model), "--out", str(out), "--no-vector", "-q"])
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    if res.exit_code != 0:
        raise SystemExit(f"predict {scene} failed: {res.output}")
    return time.perf_counter() - t0, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--keep", type=Path, help="keep the scene and outputs here")
    args = ap.parse_args()
    from tests.helpers import RangeServer

    work = args.keep or Path(tempfile.mkdtemp(prefix="geounet-remote-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        www = work / "www"
        www.mkdir(exist_ok=True)
        scene = cog(make_scene(work / "plain.tif", args.size), www / "scene.tif")
        (work / "plain.tif").unlink()
        model = make_model(work / "tiny.safetensors", scene)
        size = scene.stat().st_size
        predict(str(REPO / "data" / "demo" / "kampala_demo.tif"), model, work / "warm")  # ONNX export, imports
        local_s, local_cpu = predict(str(scene), model, work / "local")
        with RangeServer(www) as server:
            remote_s, remote_cpu = predict(f"{server.url}/scene.tif", model, work / "remote")
            requests, served = server.requests, server.bytes
        with (
            rasterio.open(work / "local" / "scene" / "classes.tif") as a,
            rasterio.open(work / "remote" / "scene" / "classes.tif") as b,
        ):
            same = bool(np.array_equal(a.read(), b.read())) and a.transform == b.transform
        print(f"scene {args.size}^2 COG, {size / 2**20:.1f} MiB; tiny model, --no-vector")
        print(f"local file : {local_s:6.1f} s wall, {local_cpu:6.1f} s CPU")
        print(
            f"over HTTP  : {remote_s:6.1f} s wall, {remote_cpu:6.1f} s CPU ({remote_s / local_s:.2f}x the local wall)"
        )
        print(f"HTTP       : {requests} requests, {served / 2**20:.1f} MiB served = {served / size:.2f}x the file")
        print(f"classes.tif identical: {same}")
        if not same:
            raise SystemExit("remote and local classes differ")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
