"""The floods of the contact split: ``flood_from_seeds`` against skimage's watershed as called before.

    python benchmarks/contact_flood.py [--size 4096] [--classes CLASSES.tif] [--rounds 3]

Class map: the default drone model's on the efficiency scene (``efficiency.predicted_classes``),
or ``--classes``. Its vector stage runs once (one thread) and every flood that
``split_at_contacts`` makes is kept: the roofs (building pixels to the nearest core) and the
contacts (contact pixels to the nearest roof). Each is then run two ways, in this process,
interleaved, CPU seconds, best of ``--rounds``:

* watershed: ``skimage.segmentation.watershed(distance, seeds, mask=mask, connectivity=1)``,
  every seed pixel queued at the same priority (how the split flooded until 2026-12-05);
* flood: ``flood_from_seeds`` (seed pixels ranked in raster order, only those beside an
  unassigned pixel queued, the mask's bounding box only).

It prints the CPU ratio and how many pixels the two assign to different seeds (ties, which
the watershed settles by the order of its heap).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def captured_floods(classes_path: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(distance, seeds, mask) of every flood the vector stage makes on ``classes_path``."""
    import geounet.compute.vectorize as vectorize
    from geounet.engine.executors import ThreadedExecutor
    from geounet.engine.vector_stage import vectorize_scene
    from geounet.models.card import read_card

    floods = []
    flood = vectorize.flood_from_seeds

    def keep(distance: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
        floods.append((distance.copy(), seeds.copy(), mask.copy()))
        return flood(distance, seeds, mask)

    vectorize.flood_from_seeds = keep
    try:
        card = read_card(HERE.parent / "data" / "models" / "buildings.safetensors")
        executor = ThreadedExecutor(1)
        with tempfile.TemporaryDirectory(prefix="geounet-contact-flood-") as tmp:
            vectorize_scene(classes_path, None, Path(tmp) / "features.gpkg", card, executor)
    finally:
        vectorize.flood_from_seeds = flood
    return floods


def main() -> None:
    from efficiency import add_class_map_arguments, class_map
    from skimage.segmentation import watershed

    from geounet.compute.vectorize import flood_from_seeds

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_class_map_arguments(ap)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="geounet-contact-flood-") as tmp:
        floods = captured_floods(class_map(args, Path(tmp)))
    pixels = sum(int(mask.sum()) for _, _, mask in floods)
    print(
        f"{len(floods)} floods, {pixels / 1e6:.2f} MP of masks, {sum(m.size for _, _, m in floods) / 1e6:.2f} MP of windows"
    )

    ways = {
        "watershed": lambda d, s, m: watershed(d, s, mask=m, connectivity=1),
        "flood": flood_from_seeds,
    }
    cpu = {name: np.inf for name in ways}
    results: dict[str, list[np.ndarray]] = {}
    for r in range(args.rounds):
        for name in ways if r % 2 == 0 else reversed(list(ways)):
            t = time.process_time()
            results[name] = [ways[name](d, s, m) for d, s, m in floods]
            cpu[name] = min(cpu[name], time.process_time() - t)
    moved = sum(int((a != b).sum()) for a, b in zip(results["watershed"], results["flood"], strict=True))
    print(f"{'way':<10} {'CPU s':>7}")
    for name in ways:
        print(f"{name:<10} {cpu[name]:7.2f}")
    print(
        f"flood / watershed CPU: {cpu['flood'] / cpu['watershed']:.2f}; pixels given to another seed (ties): {moved}"
        f" of {pixels}"
    )


if __name__ == "__main__":
    main()
