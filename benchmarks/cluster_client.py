"""The client's share of a cluster run: its CPU seconds against the workers', per megapixel.

A loopback cluster (a ``dask scheduler`` and ``dask worker`` processes, one thread
each, started here) predicts the same scene with the default buildings model, with the
client (this process) in each of the ways a cluster run can stitch:

* ``client``: every chunk's blended buffer travels to the client, which stitches and
  writes the rasters and the COGs (geounet before the workers wrote blocks);
* ``workers``: the workers blend and write whole output blocks and a worker task writes
  the COGs; the client schedules and receives tile counts.

Runs alternate between the two, ``--repeats`` times each, with vectors and without.
CPU seconds are read from the processes themselves (``psutil``): the client's around
the scene only (the cluster is connected and the model loaded first, as in a batch),
each worker's and the scheduler's over the same span. Prints each run and the medians.

    python benchmarks/cluster_client.py [--size 4096] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from efficiency import make_scene  # noqa: E402

BIN = Path(sys.executable).parent
MODEL = REPO / "data" / "models" / "buildings.safetensors"


def start_cluster(work: Path, n_workers: int) -> tuple[str, list[subprocess.Popen]]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    file = work / "scheduler.json"
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0"]
            + ["--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    ]
    while not file.exists():
        time.sleep(0.2)
    time.sleep(0.3)
    procs.append(
        subprocess.Popen(
            [str(BIN / "dask"), "worker", "--scheduler-file", str(file), "--host", "127.0.0.1"]
            + ["--nthreads", "1", "--nworkers", str(n_workers), "--no-dashboard"]
            + ["--local-directory", str(work / "workers")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    )
    return json.loads(file.read_text())["address"], procs


def _cpu_of_this_process() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="geounet-cluster-client-"))
    os.environ["GEOUNET_CACHE_DIR"] = str(work / "cache")
    scene = make_scene(work / "scene.tif", args.size)
    address, procs = start_cluster(work, args.workers)
    from geounet.engine.predict import make_executor, predict_scene
    from geounet.engine.settings import PredictSettings

    try:
        executor = make_executor(PredictSettings(scheduler=address), MODEL)
        executor.client.wait_for_workers(args.workers, timeout=120)
        executor.load_model(MODEL, "cpu", "onnx", "auto")
        scheduler = psutil.Process(procs[0].pid)

        def workers_cpu() -> float:
            return sum(executor.run_on_workers(_cpu_of_this_process).values())

        mp = args.size * args.size / 1e6
        rows: dict[tuple[str, bool], list[tuple[float, float, float, float]]] = {}
        # a first run of each, not counted: the workers' model sessions and imports warm up
        for stitch_on in ("client", "workers"):
            settings = PredictSettings(scheduler=address, quiet=True, stitch_on=stitch_on, vector=False)
            predict_scene(scene, work / "warm", MODEL, settings, executor)
            shutil.rmtree(work / "warm")
        print(
            f"loopback cluster: {args.workers} worker processes x 1 thread; scene {args.size}^2 ({mp:.1f} MP), "
            f"default buildings model; {os.cpu_count()} cores on this host"
        )
        for r in range(args.repeats):
            for vector in (False, True):
                for stitch_on in ("client", "workers"):
                    settings = PredictSettings(scheduler=address, quiet=True, stitch_on=stitch_on, vector=vector)
                    w0, s0 = workers_cpu(), sum(scheduler.cpu_times()[:2])
                    c0, t0 = time.process_time(), time.perf_counter()
                    report = predict_scene(scene, work / "out", MODEL, settings, executor)
                    wall, client = time.perf_counter() - t0, time.process_time() - c0
                    workers, sched = workers_cpu() - w0, sum(scheduler.cpu_times()[:2]) - s0
                    assert report.ok, report.error
                    shutil.rmtree(work / "out")
                    rows.setdefault((stitch_on, vector), []).append((wall, client, workers, sched))
                    print(
                        f"  run {r + 1}: stitch on {stitch_on:7s} vectors {'yes' if vector else 'no ':3s}: "
                        f"wall {wall:5.1f} s; CPU s: client {client:5.2f}, workers {workers:5.1f}, scheduler {sched:4.2f}"
                    )
        print("\nmedians | wall s | client CPU s | client CPU s/MP | workers CPU s | client / workers CPU")
        for (stitch_on, vector), vals in rows.items():
            wall, client, workers, _ = (statistics.median(v[k] for v in vals) for k in range(4))
            print(
                f"stitch on {stitch_on}, {'with' if vector else 'no'} vectors | {wall:.1f} | {client:.2f} | "
                f"{client / mp:.3f} | {workers:.1f} | {client / workers:.1%}"
            )
        executor.close()
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
