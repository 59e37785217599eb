"""int8 against fp32 on the CPU, and the halo waste of the tile size, measured in one run.

Scene: real Kampala drone imagery, the demo crop read at 0.15 m (the default model's
resolution, nothing resampled) and mirror-tiled to N x N pixels (``efficiency.make_scene``).
Model: the default ``buildings`` model and its shipped int8 version.

* forward: the model's forward passes alone over every tile of that scene, normalised
  as ``geounet predict`` feeds them (``geounet.cli.quantize.training_tiles``), one tile per
  call on a 1-thread ONNX Runtime session (the pipeline's default layout on 2 cores),
  fp32 and int8 interleaved tile by tile (``geounet.models.quantize.compare_speed``):
  wall and CPU seconds of this process.
* e2e: ``geounet predict --no-vector`` in a child process with ``--precision fp32`` and
  ``--precision int8``, alternating, on the N x N scene and on the demo scene itself:
  wall seconds, and CPU seconds of the children (user + system, every thread).
* halo: for each tile size / overlap, the share of the model's pixels that are re-runs
  (1 - scene pixels / pixels of all tiles run, on this scene; and per interior tile,
  1 - stride^2 / tile^2), and the CPU seconds per megapixel of the forward passes over
  every tile the scene needs (real tiles, fp32 and int8, tilings alternating within each
  round): of this scene, and per new megapixel of an interior tile (a large scene's
  limit). ``--halo-e2e`` also times ``geounet predict --no-vector`` with each tiling.

    python benchmarks/int8.py [--size 2048] [--repeats 2] [--sections forward,e2e,halo] [--halo-e2e]

The machine may be shared: every ratio is measured within one run, interleaved.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from efficiency import DEMO, GEOUNET, MODEL, make_scene  # noqa: E402

TILINGS = ((512, 64), (768, 64), (1024, 64), (512, 32), (768, 96))


def children_cpu() -> float:
    """CPU seconds (user + system) of the waited-for children of this process so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def predict(scene: Path, out: Path, *extra: str) -> tuple[float, float]:
    """``geounet predict --no-vector`` in a child process: (wall s, CPU s)."""
    shutil.rmtree(out, ignore_errors=True)
    c0, t0 = children_cpu(), time.perf_counter()
    subprocess.run(
        [str(GEOUNET), "predict", str(scene), "--out", str(out), "--quiet", "--no-vector", "--device", "cpu", *extra],
        check=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    return time.perf_counter() - t0, children_cpu() - c0


def section_forward(scene: Path) -> None:
    from geounet.cli.quantize import training_tiles
    from geounet.models.onnx import load_onnx
    from geounet.models.quantize import compare_speed

    tiles = list(training_tiles(scene, MODEL))
    fp32, int8 = load_onnx(MODEL, 1), load_onnx(MODEL, 1, "int8")
    s = compare_speed(fp32, int8, tiles, rounds=2)
    print(f"\n## forward passes: {s['tiles']} tiles of {scene.name} x {s['rounds']} rounds, 1 thread, interleaved\n")
    print("| | fp32 | int8 | fp32 / int8 |")
    print("|---|---|---|---|")
    print(f"| wall s | {s['wall_fp32_s']:.2f} | {s['wall_int8_s']:.2f} | **{s['speedup_wall']:.2f}x** |")
    print(f"| CPU s | {s['cpu_fp32_s']:.2f} | {s['cpu_int8_s']:.2f} | **{s['speedup_cpu']:.2f}x** |")


def section_e2e(scenes: list[Path], work: Path, repeats: int) -> None:
    print(f"\n## geounet predict --no-vector, {repeats} repeat(s), fp32 and int8 alternating\n")
    print("| scene | fp32 wall s | int8 wall s | wall ratio | fp32 CPU s | int8 CPU s | CPU ratio |")
    print("|---|---|---|---|---|---|---|")
    for scene in scenes:
        for precision in ("fp32", "int8"):  # the fp32 ONNX export made and cached; files in the page cache
            predict(scene, work / "warm", "--precision", precision)
        totals = {"fp32": [0.0, 0.0], "int8": [0.0, 0.0]}
        for r in range(repeats):
            for precision in ("fp32", "int8") if r % 2 == 0 else ("int8", "fp32"):
                wall, cpu = predict(scene, work / precision, "--precision", precision)
                totals[precision][0] += wall
                totals[precision][1] += cpu
        (fw, fc), (iw, ic) = totals["fp32"], totals["int8"]
        n = repeats
        print(
            f"| {scene.name} | {fw / n:.2f} | {iw / n:.2f} | **{fw / iw:.2f}x** | {fc / n:.2f} | {ic / n:.2f} | "
            f"**{fc / ic:.2f}x** |"
        )


def section_halo(scene: Path, size: int, work: Path, repeats: int, precisions: list[str], e2e: bool) -> None:
    from geounet.cli.quantize import training_tiles
    from geounet.models.onnx import load_onnx

    nets = {p: load_onnx(MODEL, 1, p) for p in precisions}
    tiles = {(t, o): list(training_tiles(scene, MODEL, t, o)) for t, o in TILINGS}
    cpu = {(t, o, p): 0.0 for t, o in TILINGS for p in precisions}
    for net in nets.values():
        for ts in tiles.values():
            net(ts[0][None])  # warm-up per shape
    for r in range(repeats):  # interleaved: tilings and precisions alternate within each round
        for t, o in TILINGS if r % 2 == 0 else TILINGS[::-1]:
            for p in precisions if r % 2 == 0 else precisions[::-1]:
                c0 = time.process_time()
                for tile in tiles[(t, o)]:
                    nets[p](tile[None])
                cpu[(t, o, p)] += (time.process_time() - c0) / repeats
    mpx = size * size / 1e6
    print(
        f"\n## halo waste on {scene.name} ({size} x {size} px at 0.15 m): forward passes, CPU s, {repeats} round(s)\n"
    )
    print("Every tile the scene needs, one per call, 1 thread. s/MP: of the scene; interior: per megapixel")
    print("of new pixels of one interior tile (a large scene's limit, no scene-edge padding).\n")
    head = " | ".join(f"{p} s/MP | interior s/MP | vs 512/64" for p in precisions)
    print(f"| tile / overlap | tiles | re-run pixels (this scene) | re-run pixels (interior tile) | {head} |")
    print("|---|---|---|---|" + "---|---|---|" * len(precisions))
    for t, o in TILINGS:
        n = len(tiles[(t, o)])
        cells = []
        for p in precisions:
            per_tile = cpu[(t, o, p)] / n
            interior = per_tile / ((t - o) ** 2 / 1e6)
            base = cpu[(*TILINGS[0], p)] / len(tiles[TILINGS[0]]) / ((TILINGS[0][0] - TILINGS[0][1]) ** 2 / 1e6)
            cells.append(f"{cpu[(t, o, p)] / mpx:.3f} | {interior:.3f} | {base / interior:.2f}x")
        scene_waste = 1 - size * size / (n * t * t)
        print(f"| {t} / {o} | {n} | {scene_waste:.1%} | {1 - (t - o) ** 2 / (t * t):.1%} | {' | '.join(cells)} |")
    if not e2e:
        return
    seconds = {(t, o, p): 0.0 for t, o in TILINGS for p in precisions}
    for r in range(repeats):
        for t, o in TILINGS if r % 2 == 0 else TILINGS[::-1]:
            for p in precisions:
                wall, _ = predict(
                    scene, work / f"h{t}-{o}", "--precision", p, "--tile-size", str(t), "--overlap", str(o)
                )
                seconds[(t, o, p)] += wall / repeats
    print(f"\n## the same tilings end to end: geounet predict --no-vector, wall s per MP, {repeats} repeat(s)\n")
    print("| tile / overlap | " + " | ".join(f"{p} s/MP | vs 512/64" for p in precisions) + " |")
    print("|---|" + "---|---|" * len(precisions))
    for t, o in TILINGS:
        cells = [
            f"{seconds[(t, o, p)] / mpx:.3f} | {seconds[(*TILINGS[0], p)] / seconds[(t, o, p)]:.2f}x"
            for p in precisions
        ]
        print(f"| {t} / {o} | {' | '.join(cells)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="scene side, pixels at 0.15 m")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sections", default="forward,e2e,halo")
    ap.add_argument("--halo-precisions", default="fp32,int8")
    ap.add_argument("--halo-e2e", action="store_true", help="also time each tiling with geounet predict (noisy)")
    args = ap.parse_args()
    sections = args.sections.split(",")
    print(f"# int8 vs fp32 ({MODEL.name}), load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory(prefix="geounet-int8-") as tmp:
        work = Path(tmp)
        scene = make_scene(work / f"kampala_{args.size}.tif", args.size)
        if "forward" in sections:
            section_forward(scene)
        if "e2e" in sections:
            section_e2e([scene, DEMO], work, args.repeats)
        if "halo" in sections:
            section_halo(scene, args.size, work, args.repeats, args.halo_precisions.split(","), args.halo_e2e)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
