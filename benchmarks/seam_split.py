"""Buildings joined across block seams, cut at contacts: unioned first (before 2026-12-03) or cut from their pieces.

    python benchmarks/seam_split.py [--size 4096] [--classes CLASSES.tif] [--block 1024] [--rounds 3]

Class map: the default drone model's (background, building, contact) on the efficiency
scene (real Kampala roofs, mirror-tiled to N x N at 0.15 m: ``efficiency.make_scene``,
predicted once with ``geounet predict --no-vector``), or ``--classes``. Its blocks are
polygonized as the vector stage does (building and contact pixels joined), the pieces on
inner block edges grouped (``seam_groups``), and each group cut into roofs
(``split_at_contacts``, default building rules) two ways, in this process, CPU seconds,
best of ``--rounds``:

* unioned: every group's pieces unioned and cleaned of seam vertices first, then cut;
* pieces: the group goes to the cut as its pieces; only the groups kept whole are unioned
  (``merge_groups(..., dissolve=False)``, what the vector stage does).

It checks that both give the same polygons (exactly) and prints the CPU ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def seam_pieces(classes_path: Path, block: int):
    """(class raster, seam pieces, their groups, building ids, member ids, pixel size m) of a drone-model class map."""
    import rasterio
    from pyproj import CRS

    from geounet.compute.vectorize import Pieces, polygonize_block, seam_groups
    from geounet.io.scene import ground_pixel_size
    from geounet.models.card import read_card

    card = read_card(HERE.parent / "data" / "models" / "buildings.safetensors")
    building = [i for i, c in enumerate(card.classes) if c.kind == "building"]
    members = [*building, *(card.contact_ids or [])]
    with rasterio.open(classes_path) as src:
        classes, transform, crs = src.read(1), src.transform, src.crs
    pixel = ground_pixel_size(CRS.from_user_input(crs), transform, classes.shape[1], classes.shape[0])
    joined = np.where(np.isin(classes, members), building[0], classes)
    h, w = classes.shape
    parts = [
        polygonize_block(
            joined[r : r + block, c : c + block], (r, c), building, None, (r > 0, r + block < h, c > 0, c + block < w)
        )
        for r in range(0, h, block)
        for c in range(0, w, block)
    ]
    cand = Pieces.concat(parts)
    cand = cand.take(cand.on_edge)
    return classes, cand, seam_groups(cand), building, members, pixel


def cut(classes, cand, groups, building, members, pixel, dissolve: bool):
    from geounet.compute.postprocess import DEFAULT_RULES
    from geounet.compute.vectorize import merge_groups, split_at_contacts

    merged = merge_groups(cand, groups, dissolve=dissolve)
    windows = [classes[y0:y1, x0:x1] for x0, y0, x1, y1 in shapely.bounds(merged.geometry).astype(np.int64)]
    return split_at_contacts(merged, windows, building, pixel, DEFAULT_RULES["building"].seed_m, members)


def main() -> None:
    from efficiency import add_class_map_arguments, class_map

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_class_map_arguments(ap)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="geounet-seam-split-") as tmp:
        data = seam_pieces(class_map(args, Path(tmp)), args.block)
    classes, cand, groups = data[:3]
    print(
        f"{len(cand)} seam pieces in {len(groups)} buildings across {args.block} px blocks,"
        f" {int(cand.pixels.sum()) / classes.size:.0%} of the {classes.size / 1e6:.1f} MP"
    )
    cpu: dict[str, float] = {}
    results = {}
    for _ in range(args.rounds):
        for name, dissolve in (("unioned", True), ("pieces", False)):
            t = time.process_time()
            results[name] = cut(*data, dissolve=dissolve)
            cpu[name] = min(cpu.get(name, np.inf), time.process_time() - t)
    a, b = results["unioned"], results["pieces"]
    same = len(a) == len(b) and bool(np.all(shapely.equals_exact(a.geometry, b.geometry, 0)))
    same = same and list(a.pixels) == list(b.pixels)
    print(f"{'way':<10} {'CPU s':>7} {'buildings':>10}")
    for name in ("unioned", "pieces"):
        print(f"{name:<10} {cpu[name]:7.2f} {len(results[name]):10d}")
    print(f"pieces / unioned CPU: {cpu['pieces'] / cpu['unioned']:.2f}; the same polygons: {same}")


if __name__ == "__main__":
    main()
