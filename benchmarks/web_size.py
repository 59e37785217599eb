"""Size and cost of a run's web map (``web/``) against its COGs, on a large scene.

Makes an N x N scene (the demo crop repeated, written block by block as a tiled GeoTIFF,
EPSG:3857 at the demo's 0.075 m), runs `geounet predict` on it with the default buildings
model (real outputs: scores.tif, classes.tif, features.gpkg), then writes the scene
folder's `web/` in a child process (``geounet.web.folder.write_scene_web``, as
`PredictSettings(web=True)` does inside the run) and measures that step alone: wall and
CPU seconds, peak RSS of the process. Prints the web folder's bytes by part against the
COGs' bytes (scores.tif + classes.tif) and the scene's.

    python benchmarks/web_size.py [--size 16384] [--keep DIR] [--reuse]

``--reuse`` keeps a scene folder already predicted in ``--keep DIR`` (only the web step runs).
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_measured  # noqa: E402
from memory import make_scene  # noqa: E402


def web_only(folder: Path, scene: Path) -> None:
    """The child process: write ``folder/web`` as predict does, from the folder's run.json."""
    from geounet.models.card import read_card
    from geounet.web.folder import write_scene_web

    record = json.loads((folder / "run.json").read_text())
    t0 = time.perf_counter()
    summary = write_scene_web(folder, scene, read_card(record["model"]["path"]), record)
    wall = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "tiles": summary.tiles,
                "features": summary.features,
                "write_s": round(wall, 1),
                "cpu_s": round(me.ru_utime + me.ru_stime, 1),  # with the imports
                "peak_rss_mib": round(me.ru_maxrss / 1024),
            }
        )
    )


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--keep", type=Path, help="keep the scene and outputs here")
    ap.add_argument("--reuse", action="store_true", help="reuse the scene folder in --keep: time the web step only")
    ap.add_argument("--web-only", nargs=2, type=Path, metavar=("FOLDER", "SCENE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.web_only:
        web_only(*args.web_only)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="geounet-web-"))
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"scene_{args.size}.tif"
    folder = work / "out" / scene.stem
    try:
        if not (args.reuse and (folder / "run.json").is_file()):
            make_scene(scene, args.size)
            t0 = time.perf_counter()
            run_measured([sys.executable, "-m", "geounet.cli.main", "predict", str(scene), "--out", str(work / "out")])
            print(f"predict (no web): {time.perf_counter() - t0:.0f} s")
        shutil.rmtree(folder / "web", ignore_errors=True)
        cmd = [sys.executable, __file__, "--web-only", str(folder), str(scene)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(proc.stderr)
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
        web = folder / "web"
        cogs = du(folder / "scores.tif") + du(folder / "classes.tif")
        parts = {
            "tiles/scene": du(web / "tiles" / "scene"),
            "tiles/classes": du(web / "tiles" / "classes"),
            "pmtiles": sum(du(p) for p in web.glob("*.pmtiles")),
            "static": du(web / "static"),
        }
        total = du(web)
        files = sum(1 for p in web.rglob("*") if p.is_file())
        mb = 1e6
        print(
            f"scene {args.size}^2: {du(scene) / mb:.1f} MB ({scene.name}); COGs {cogs / mb:.1f} MB (scores + classes)"
        )
        print(
            f"features.gpkg {du(folder / 'features.gpkg') / mb:.1f} MB; {facts['features']} features, {facts['tiles']} raster tiles"
        )
        print(f"web/: {total / mb:.1f} MB in {files} files = {total / cogs:.2f} x the COGs")
        for k, v in parts.items():
            print(f"  {k:<14} {v / mb:8.2f} MB")
        print(
            f"web step: {facts['write_s']} s writing ({wall:.1f} s with the child's start), "
            f"CPU {facts['cpu_s']} s, peak RSS {facts['peak_rss_mib']} MiB (the child process)"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
