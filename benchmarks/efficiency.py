"""How close `geounet predict` comes to the model's compute floor, and what beats the floor.

Scene: real Kampala drone imagery (the demo crop, read at 0.15 m, the default model's
resolution, so nothing is resampled) mirror-tiled to N x N pixels, RGB uint8, EPSG:3857.

* floor: the model's forward passes alone over exactly the tiles the scene needs (the
  pipeline's loader and backend, same tile size, overlap and precision), in this process,
  on random input of the right shape, after a warm-up. ONNX Runtime (the CPU default):
  the faster of two ways of running the calls, one per core with 1 tile each (as the
  pipeline runs by default) or one at a time on all cores with 4 tiles each; torch:
  4 tiles per call on all cores. Measured again around every end-to-end run (the VM's
  speed drifts by 10-20 % over minutes); each efficiency uses the floors next to it.
* e2e: `geounet predict` in a child process (wall time, interpreter start-up included),
  with --no-vector, with vectors, and 3 scenes in one command; where the rest goes
  comes from run.json.
* warm: `predict_scene` in a process whose client and model are ready (a batch's
  steady state): per-scene efficiency without interpreter and import start-up.
* variants of the floor (per scene: batches x seconds per batch): batch-norm folding,
  memory format, torch.compile, tile size (halo waste), torch threads.
* local schedulers: the chunk tasks of a scene through the in-process cluster (threads),
  a local cluster of worker processes, and dask's plain threaded scheduler.

    python benchmarks/efficiency.py [--size 4096] [--sections e2e,warm,variants,schedulers]

The machine may be shared: ratios are measured within one run; repeat the script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_CACHE_DIR = tempfile.mkdtemp(prefix="geounet-eff-cache-")  # exported models: measured cold once, then warm
os.environ["GEOUNET_CACHE_DIR"] = _CACHE_DIR

from _measure import run_measured_cpu, write_repeated  # noqa: E402

from geounet.compute.grid import TileGrid  # noqa: E402
from geounet.models.hardware import cpu_cores, default_batch_size, default_chunk_pixels, default_workers  # noqa: E402
from geounet.models.registry import cached_model  # noqa: E402

DEMO = REPO / "data" / "demo" / "kampala_demo.tif"
MODEL = REPO / "data" / "models" / "buildings.safetensors"
GEOUNET = Path(sys.executable).parent / "geounet"


def make_scene(path: Path, size: int, res: float = 0.15) -> Path:
    """The demo crop read at ``res`` m/px, mirror-tiled to size x size (no seams), no mask."""
    with rasterio.open(DEMO) as src:
        h, w = round(src.height * src.res[1] / res), round(src.width * src.res[0] / res)
        tile = src.read(out_shape=(src.count, h, w), resampling=Resampling.average)
        x0, y0 = src.transform.c, src.transform.f
        crs = src.crs
    row = np.concatenate([tile, tile[:, :, ::-1]], axis=2)
    block = np.concatenate([row, row[:, ::-1, :]], axis=1)
    reps = (1, 2048 // block.shape[1] + 1, 2048 // block.shape[2] + 1)
    block = np.tile(block, reps)[:, :2048, :2048]
    profile = dict(
        driver="GTiff",
        count=3,
        dtype="uint8",
        crs=crs,
        transform=Affine(res, 0, x0, 0, -res, y0),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        photometric="RGB",
    )
    return write_repeated(path, block, size, profile)


def add_class_map_arguments(ap: argparse.ArgumentParser) -> None:
    """``--size`` (the efficiency scene's side) and ``--classes`` (a class raster of the default drone model)."""
    ap.add_argument("--size", type=int, default=4096, help="side of the efficiency scene whose class map is used")
    ap.add_argument("--classes", type=Path, help="a class raster of the default drone model, instead of predicting one")


def class_map(args: argparse.Namespace, folder: Path) -> Path:
    """``args.classes``, or the default drone model's ``classes.tif`` of the ``args.size`` efficiency scene, in ``folder``."""
    return args.classes if args.classes is not None else predicted_classes(folder, args.size)


def predicted_classes(folder: Path, size: int) -> Path:
    """``classes.tif`` of the default drone model on a size x size efficiency scene written in ``folder``."""
    import subprocess

    scene = make_scene(folder / "scene.tif", size)
    cmd = [sys.executable, "-m", "geounet.cli.main", "predict", str(scene), "--out", str(folder), "--no-vector"]
    subprocess.run([*cmd, "--quiet"], check=True)
    return folder / "scene" / "classes.tif"


def n_tiles(size: int, tile: int, overlap: int) -> int:
    return TileGrid(size, size, tile, overlap, 4).n_tiles


def _time_calls(net, x, n_batches: int, warmup: int) -> float:
    for _ in range(warmup):
        net(x)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        net(x)
    return time.perf_counter() - t0


def time_batches(net, tile: int, batch: int, n_batches: int, channels_last: bool = True, warmup: int = 1) -> float:
    """Seconds for ``n_batches`` forward passes of ``batch`` random tiles (after ``warmup`` passes)."""
    import torch

    x = torch.randn(batch, 3, tile, tile)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return _time_calls(net, x, n_batches, warmup)


def time_onnx(net, tile: int, batch: int, n_batches: int, warmup: int = 1) -> float:
    """As ``time_batches`` for an ONNX Runtime network (numpy in, probabilities out)."""
    x = np.random.default_rng(0).standard_normal((batch, 3, tile, tile), dtype=np.float32)
    return _time_calls(net, x, n_batches, warmup)


def _time_onnx_concurrent(net, tile: int, batch: int, n_batches: int, callers: int) -> float:
    """Seconds for ``n_batches`` calls shared by ``callers`` threads (a shared counter: perfect balance), after a warm-up."""
    x = np.random.default_rng(0).standard_normal((batch, 3, tile, tile), dtype=np.float32)
    left = [n_batches]
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            net(x)

    warm = [threading.Thread(target=net, args=(x,)) for _ in range(callers)]  # every caller's first call, untimed
    [t.start() for t in warm]
    [t.join() for t in warm]
    threads = [threading.Thread(target=work) for _ in range(callers)]
    t0 = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return time.perf_counter() - t0


def floor_layouts(size: int, tile: int = 512, overlap: int = 64) -> dict[str, float]:
    """ONNX Runtime floors of a size x size scene, per way of running the calls (seconds).

    ``pipeline``: as `geounet predict` runs by default: ``infer.default_workers`` calls at
    once, each session with its share of the cores, ``infer.default_batch_size`` tiles per
    call. ``single``: one call at a time on all cores, 4 tiles per call (the layout before).
    """
    tiles = n_tiles(size, tile, overlap)
    callers = default_workers("cpu", "onnx")
    batch = default_batch_size("cpu", "onnx")
    net, _ = cached_model(MODEL, "cpu", "onnx", max(1, cpu_cores() // callers))
    out = {"pipeline": _time_onnx_concurrent(net, tile, batch, math.ceil(tiles / batch), callers)}
    net, _ = cached_model(MODEL, "cpu", "onnx", cpu_cores())
    full, rest = divmod(tiles, 4)
    out["single"] = time_onnx(net, tile, 4, full) + (time_onnx(net, tile, rest, 1) if rest else 0.0)
    return out


def floor_seconds(size: int, tile: int = 512, overlap: int = 64, backend: str = "onnx") -> tuple[float, int]:
    """The compute floor of a size x size scene: forward passes over exactly its tiles.

    The pipeline's own loader and backend: ``onnx`` (the CPU default: ONNX Runtime,
    softmax included): the faster of the two ways of running the calls in
    :func:`floor_layouts`; ``torch``: batch norms folded, channels_last, fp32, 4 tiles per
    call on all cores (what ``--backend torch`` runs).
    """
    tiles = n_tiles(size, tile, overlap)
    if backend == "onnx":
        layouts = floor_layouts(size, tile, overlap)
        print(f"   (floor, ONNX Runtime: {', '.join(f'{k} {v:.1f} s' for k, v in layouts.items())})", flush=True)
        return min(layouts.values()), tiles
    net, _ = cached_model(MODEL, "cpu")
    full, rest = divmod(tiles, 4)
    secs = time_batches(net, tile, 4, full)
    if rest:
        secs += time_batches(net, tile, rest, 1, warmup=1)
    return secs, tiles


def predict_cli(scenes: list[Path], out: Path, *extra: str) -> tuple[float, list[dict]]:
    wall, _, _, runs = predict_cli_measured(scenes, out, *extra)
    return wall, runs


def predict_cli_measured(scenes: list[Path], out: Path, *extra: str) -> tuple[float, float, float, list[dict]]:
    """``geounet predict`` in a child process: (wall s, CPU s and peak RSS MiB of its process tree, run.json of each)."""
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu, peak = run_measured_cpu(
        [str(GEOUNET), "predict", *map(str, scenes), "--out", str(out), "--quiet", *extra]
    )
    return wall, cpu, peak, [json.loads((out / s.stem / "run.json").read_text()) for s in scenes]


def _rest(t: dict, floor: float) -> str:
    return (
        f"chunks beyond the floor (read, normalise, softmax, blend, stitch, schedule) "
        f"{t['predict_and_stitch_s'] - floor:.1f} s + finalize {t['finalize_s']:.1f} s + COG {t['cog_s']:.1f} s"
        + (f" + vectorize {t['vectorize_s']:.1f} s" if "vectorize_s" in t else "")
    )


def section_e2e(scene: Path, size: int, work: Path, batch: int = 3) -> None:
    """`geounet predict` as a user runs it, each measurement between two floor measurements of its backend."""
    tasks, tiles = default_workers("cpu", "onnx"), default_batch_size("cpu", "onnx")
    print(
        f"\n## end to end, {size}^2 RGB uint8 at 0.15 m, default buildings model, tile 512 / overlap 64; "
        f"ONNX Runtime as geounet predict runs it: {tasks} task(s) at once x {tiles} tile(s) per call; the floor "
        "is fp32 on the backend a run used, the runs take the CLI's precision (auto: int8 on ONNX Runtime where the "
        "model's record allows it, on VNNI CPUs; else fp32)"
    )
    cache = Path(os.environ["GEOUNET_CACHE_DIR"])
    shutil.rmtree(cache, ignore_errors=True)
    wall, _ = predict_cli([scene], work / "out", "--no-vector")
    print(f"first run, empty model cache (exports the model to ONNX once): {wall:.1f} s wall")
    floors = {b: [floor_seconds(size, backend=b)[0]] for b in ("onnx", "torch")}
    tiles = n_tiles(size, 512, 64)
    rows = []

    def measure(label, scenes, backend, *extra):
        """``backend``: the one whose (fp32) floor applies, or None: the one the CLI chose (``auto``)."""
        wall, cpu, peak, runs = predict_cli_measured(scenes, work / "out", *extra)
        chosen = runs[0]["settings"]["backend"]
        assert backend in (None, chosen), chosen
        backend = chosen
        label += f" [{chosen}]" if "backend" not in label else ""
        label += f" [{runs[0]['settings']['precision']}]"
        floors[backend].append(floor_seconds(size, backend=backend)[0])
        floor = (floors[backend][-2] + floors[backend][-1]) / 2
        rows.append((label, len(scenes), wall, runs, floor, cpu, peak))

    measure("geounet predict --no-vector (default precision)", [scene], None, "--no-vector")
    measure("geounet predict --no-vector --backend torch", [scene], "torch", "--no-vector", "--backend", "torch")
    measure("geounet predict (with vectors)", [scene], None)
    measure("geounet predict --vectors-while-predicting (with vectors)", [scene], None, "--vectors-while-predicting")
    measure("geounet predict --precision fp32 (with vectors)", [scene], "onnx", "--precision", "fp32")
    naive = run_measured_cpu(
        [
            sys.executable,
            str(Path(__file__).resolve().parent / "naive_predict.py"),
            str(scene),
            str(MODEL),
            str(work / "naive"),
        ]
    )
    floors["onnx"].append(floor_seconds(size)[0])
    copies = []
    for i in range(batch):
        copies.append(work / f"scene{i}.tif")
        if not copies[-1].exists():
            os.symlink(scene, copies[-1])
    measure(f"geounet predict --no-vector, {batch} scenes in one command", copies, None, "--no-vector")
    for b, fl in floors.items():
        print(
            f"floor ({b}): {tiles} tiles per scene; measured {', '.join(f'{f:.1f}' for f in fl)} s "
            f"({size * size / min(fl) / 1e6:.3f} MP/s at best)"
        )
    print("each row uses the mean of its backend's floors before and after it")
    for label, n, wall, runs, floor, cpu, peak in rows:
        t = runs[0]["timings"]
        per_scene = [r["timings"]["total_s"] for r in runs]
        startup = wall - sum(per_scene)
        print(
            f"{label}: {wall:.1f} s wall ({n * size * size / wall / 1e6:.3f} MP/s), floor {n * floor:.1f} s, "
            f"efficiency floor/wall = {n * floor / wall:.3f}; CPU {cpu:.1f} s, peak RSS {peak:.0f} MiB "
            "(the command's process tree)"
        )
        print(
            f"   per scene in the process: {', '.join(f'{x:.1f}' for x in per_scene)} s -> efficiency "
            f"{', '.join(f'{floor / x:.3f}' for x in per_scene)}; start-up outside the scenes (interpreter, imports, "
            f"cluster, model load) {startup:.1f} s"
        )
        print(f"   first scene: {_rest(t, floor)}")
    wall, cpu, peak = naive
    vec = next(r for r in rows if r[0].startswith("geounet predict (with vectors)"))
    print(
        f"a user's naive script (benchmarks/naive_predict.py: whole scene in RAM, torch, the same network, "
        f"whole-raster polygons): {wall:.1f} s wall, CPU {cpu:.1f} s, peak RSS {peak:.0f} MiB; "
        f"geounet predict with vectors is {wall / vec[2]:.2f}x faster, CPU {cpu / vec[5]:.2f}x less, "
        f"peak RSS {peak / vec[6]:.2f}x less"
    )


def section_warm(scene: Path, size: int, work: Path, repeats: int = 2) -> None:
    """Per-scene time in a process that has started (imports, cluster, model loaded): the batch steady state."""
    from geounet.engine.predict import make_executor, predict_scene
    from geounet.engine.settings import PredictSettings
    from geounet.models.registry import DEFAULT_MODEL

    print(f"\n## warm process: predict_scene on the {size}^2 scene, client and model ready (as in a batch)")
    for vector in (False, True):
        settings = PredictSettings(vector=vector, quiet=True, vector_processes=None)  # as the CLI (backend auto)
        client = make_executor(settings, DEFAULT_MODEL)
        try:
            for _ in range(repeats if not vector else 1):
                before = floor_seconds(size)[0]
                out = work / "warm"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                rep = predict_scene(scene, out, DEFAULT_MODEL, settings, client)
                after = floor_seconds(size)[0]
                floor = (before + after) / 2
                t = json.loads((out / scene.stem / "run.json").read_text())["timings"]
                print(
                    f"{'with vectors' if vector else '--no-vector '}: scene {rep.seconds:.1f} s, floor {before:.1f}/{after:.1f} s"
                    f" -> efficiency {floor / rep.seconds:.3f}; {_rest(t, floor)}",
                    flush=True,
                )
        finally:
            client.close()


def section_variants(size: int) -> None:
    """Per-scene floor for variants: seconds per batch measured over 3 batches, times batches needed."""
    import torch

    from geounet.models.network import load_model

    net, _ = cached_model(MODEL, "cpu")
    plain, _ = load_model(MODEL, "cpu")
    x = torch.randn(2, 3, 512, 512)
    with torch.inference_mode():
        ref = net(x.contiguous(memory_format=torch.channels_last))
    print(f"\n## variants of the floor, {size}^2 scene (seconds per scene; max |diff| of logits vs baseline)")
    rows = []

    def row(label, model, tile, overlap, batch, channels_last=True, n=3):
        tiles = n_tiles(size, tile, overlap)
        per = time_batches(model, tile, batch, n, channels_last) / n
        rows.append((label, tiles, per * math.ceil(tiles / batch)))
        print(
            f"{label:<44} {tiles:4d} tiles  {rows[-1][2]:7.1f} s  ({rows[0][2] / rows[-1][2]:.2f}x baseline)",
            flush=True,
        )

    row("torch: BN folded, channels_last, fp32, 512/64, b4", net, 512, 64, 4)
    onnx_net, _ = cached_model(MODEL, "cpu", "onnx", cpu_cores())
    d = float(np.abs(onnx_net(x.numpy()) - torch.softmax(ref, 1).numpy()).max())
    tiles = n_tiles(size, 512, 64)
    per = time_onnx(onnx_net, 512, 4, 3) / 3
    rows.append(("onnx", tiles, per * math.ceil(tiles / 4)))
    print(
        f"{'ONNX Runtime (the CPU default), softmax incl.':<44} {tiles:4d} tiles  {rows[-1][2]:7.1f} s  "
        f"({rows[0][2] / rows[-1][2]:.2f}x baseline; diff of probabilities {d:.1e})",
        flush=True,
    )
    per = time_onnx(onnx_net, 768, 4, 2) / 2
    print(
        f"{'ONNX Runtime, tile 768 / overlap 64':<44} {n_tiles(size, 768, 64):4d} tiles  "
        f"{per * math.ceil(n_tiles(size, 768, 64) / 4):7.1f} s",
        flush=True,
    )
    with torch.inference_mode():
        d = (plain(x) - ref).abs().max().item()
    row(f"BN not folded, contiguous NCHW: as loaded (diff {d:.1e})", plain, 512, 64, 4, channels_last=False)
    row("BN not folded, channels_last", plain.to(memory_format=torch.channels_last), 512, 64, 4)
    row("batch 8", net, 512, 64, 8, n=2)
    row("tile 768 / overlap 64 (less halo)", net, 768, 64, 4, n=2)
    row("tile 1024 / overlap 64", net, 1024, 64, 2, n=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    row("torch 1 thread (one of 2 workers)", net, 512, 64, 4, n=2)
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        comp = torch.compile(net)
        with torch.inference_mode():
            d = (comp(x.contiguous(memory_format=torch.channels_last)) - ref).abs().max().item()
        print(f"   torch.compile: first call {time.perf_counter() - t0:.1f} s", flush=True)
        row(f"torch.compile (diff {d:.1e})", comp, 512, 64, 4)
    except Exception as exc:  # noqa: BLE001 - report, do not stop the benchmark
        print(f"torch.compile failed: {type(exc).__name__}: {str(exc)[:200]}")


def section_schedulers(scene: Path, size: int) -> None:
    """Chunk tasks of one scene (no stitching, no writing) through local schedulers, default backend (ONNX Runtime).

    Each layout gives every call its share of the cores (``threads``), as geounet does.
    """
    import dask
    from distributed import Client, LocalCluster, wait

    from geounet.engine.tiles import predict_chunk
    from geounet.io.scene import open_scene, working_grid
    from geounet.models.card import read_card

    card = read_card(MODEL)
    with open_scene(scene) as src:
        working = working_grid(src, card, 0.25)
    chunk_tiles = max(1, default_chunk_pixels("cpu", "onnx", 512 - 64) // (512 - 64))  # as geounet predict cuts it
    grid = TileGrid(working.height, working.width, 512, 64, chunk_tiles)
    idx = [c.index for c in grid.chunks()]
    cores = cpu_cores()
    batch = default_batch_size("cpu", "onnx")

    def args(i, per_call):
        return (str(scene), working, grid, i, str(MODEL), "cpu", "fp32", batch, "onnx", per_call)

    print(
        f"\n## local schedulers (ONNX Runtime, {batch} tile(s) per call): {len(idx)} chunk tasks of the {size}^2 "
        f"scene ({grid.n_tiles} tiles), {cores} cores"
    )

    def report(label, secs):
        print(f"{label:<64} {secs:7.1f} s", flush=True)

    for threads in (1, 2):
        per = max(1, cores // threads)
        predict_chunk(*args(idx[0], per))  # warm: this layout's session loaded in this process
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=threads,
                processes=False,
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            ) as lc,
            Client(lc) as c,
        ):
            t0 = time.perf_counter()
            wait([c.submit(predict_chunk, *args(i, per), pure=False) for i in idx])
            report(f"in-process cluster (geounet's), {threads} thread(s) x {per} per call", time.perf_counter() - t0)
        t0 = time.perf_counter()
        dask.compute(
            *[dask.delayed(predict_chunk)(*args(i, per)) for i in idx], scheduler="threads", num_workers=threads
        )
        report(f"dask threaded scheduler (no distributed), {threads} thread(s) x {per}", time.perf_counter() - t0)
    base = None
    for n in (1, 2):  # worker scaling: processes, one task thread each, the cores shared between them
        per = max(1, cores // n)
        with (
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
            Client(lc) as c,
        ):
            c.run(lambda: __import__("geounet.infer"))
            t0 = time.perf_counter()
            wait([c.submit(predict_chunk, *args(i, per), pure=False) for i in idx])
            report(f"{n} worker process(es) x 1 thread x {per} (model loads included)", time.perf_counter() - t0)
            t0 = time.perf_counter()
            wait([c.submit(predict_chunk, *args(i, per), pure=False) for i in idx])
            secs = time.perf_counter() - t0
            base = base or secs
            report(f"{n} worker process(es) x 1 thread x {per} (warm), speed-up {base / secs:.2f}x", secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--sections", default="e2e,warm,variants,schedulers")
    ap.add_argument("--schedulers-size", type=int, default=2048)
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="geounet-eff-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = args.sections.split(",")
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    try:
        if "e2e" in sections or "warm" in sections:
            scene = make_scene(work / "scene.tif", args.size)
        if "e2e" in sections:
            section_e2e(scene, args.size, work)
        if "warm" in sections:
            section_warm(scene, args.size, work)
        if "variants" in sections:
            section_variants(args.size)
        if "schedulers" in sections:
            section_schedulers(make_scene(work / "sched.tif", args.schedulers_size), args.schedulers_size)
    finally:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
