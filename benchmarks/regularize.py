"""Building regularisation: geounet's own (compute/regularize.py) against buildingregulariser.

    python benchmarks/regularize.py [--size 4096] [--classes CLASSES.tif]

Outlines: the building polygons of the default drone model's class map of the efficiency
scene (real Kampala roofs, mirror-tiled to N x N at 0.15 m: ``efficiency.make_scene``,
predicted once with ``geounet predict --no-vector``), or of ``--classes``: every
4-connected component of building and contact pixels (not split at contacts: larger and
more complex outlines than the delivered buildings), as ``rasterio.features.shapes`` gives it, in the
scene's local equal-area CRS (metres), holes and specks under 4 m2 removed as geounet does.
Each regulariser then runs over the same outlines in this process, timed in CPU seconds:

* geounet: ``regularize_outlines`` with the default building rules (simplify 0.5 m);
* simplified only (Douglas-Peucker 0.5 m): what ``regularize: false`` delivers;
* buildingregulariser (geounet's regulariser until 2026-12-02; ``pip install
  buildingregulariser`` to compare; skipped when it is not installed), as geounet called it:
  simplify tolerance 0.5 m, parallel threshold 1 m, no 45-degree walls, no circles, 1 core.

For each it prints CPU milliseconds per outline, how much of the pixels the outlines
keep (IoU of each regularised outline with its pixel outline: mean, 5th percentile, and
the IoU of all of them together), the share of corners that are right angles (turns over
10 degrees within 10 degrees of 90), and the vertices per outline.
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


def outlines(classes_path: Path) -> np.ndarray:
    """Building outlines of a class raster in its local equal-area CRS (metres), cleaned of holes and specks."""
    import rasterio
    from pyproj import CRS, Transformer
    from rasterio import features

    from geounet.compute.postprocess import fill_holes, metric_crs
    from geounet.models.card import read_card

    card = read_card(HERE.parent / "data" / "models" / "buildings.safetensors")
    building = [i for i, c in enumerate(card.classes) if c.kind == "building"]
    contact = card.contact_ids or []
    with rasterio.open(classes_path) as src:
        classes, transform, crs, bounds = src.read(1), src.transform, src.crs, src.bounds
    mask = np.isin(classes, [*building, *contact])
    geoms = np.array(
        [shapely.geometry.shape(g) for g, _ in features.shapes(mask.astype(np.uint8), mask=mask, transform=transform)],
        dtype=object,
    )
    metric = metric_crs(CRS.from_user_input(crs), tuple(bounds))
    to_metric = Transformer.from_crs(crs, metric, always_xy=True)
    geoms = shapely.transform(geoms, lambda xy: np.column_stack(to_metric.transform(xy[:, 0], xy[:, 1])))
    geoms = fill_holes(shapely.normalize(shapely.simplify(geoms, 0.0)), 4.0)
    return geoms[shapely.area(geoms) >= 4.0]


def right_angle_share(geoms: np.ndarray) -> float:
    turns = []
    for poly in shapely.get_parts(geoms):
        ring = np.asarray(poly.exterior.coords)[:-1]
        v1, v2 = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
        cross = v1[:, 0] * v2[:, 1] - v1[:, 1] * v2[:, 0]
        turn = np.degrees(np.abs(np.arctan2(cross, (v1 * v2).sum(1))))
        turns.extend(turn[turn > 10])
    turns = np.asarray(turns)
    return float(np.mean(np.abs(turns - 90) < 10)) if len(turns) else float("nan")


def report(name: str, pixels: np.ndarray, result: np.ndarray, cpu: float) -> None:
    from geounet.compute.metrics import pairwise_iou

    result = shapely.make_valid(result)
    iou = pairwise_iou(result, pixels)
    inter = shapely.area(shapely.intersection(result, pixels))
    total = inter.sum() / (shapely.area(result).sum() + shapely.area(pixels).sum() - inter.sum())
    vertices = shapely.get_num_coordinates(result) / np.maximum(shapely.get_num_geometries(result), 1)
    print(
        f"{name:<22} {1000 * cpu / len(pixels):10.2f} {iou.mean():8.3f} {np.percentile(iou, 5):8.3f} {total:8.3f}"
        f" {right_angle_share(result):8.2f} {np.median(vertices):8.0f}",
        flush=True,
    )


def main() -> None:
    from efficiency import add_class_map_arguments, class_map

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_class_map_arguments(ap)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="geounet-regularize-") as tmp:
        pixels = outlines(class_map(args, Path(tmp)))
    print(f"{len(pixels)} building outlines (pixel staircases, metres), from {args.classes or f'{args.size}^2 scene'}")
    print(
        f"{'regulariser':<22} {'ms/outline':>10} {'IoU mean':>8} {'IoU p5':>8} {'IoU all':>8} {'right ∠':>8} {'vertices':>8}"
    )
    from geounet.compute.regularize import regularize_outlines

    t = time.process_time()
    ours = regularize_outlines(pixels, simplify_m=0.5, min_wall_m=1.0)
    report("geounet", pixels, ours, time.process_time() - t)
    t = time.process_time()
    simplified = shapely.simplify(pixels, 0.5, preserve_topology=True)
    report("simplified only", pixels, simplified, time.process_time() - t)
    try:
        import geopandas as gpd
        from buildingregulariser import regularize_geodataframe
    except ImportError:
        print("buildingregulariser: not installed (pip install buildingregulariser to compare)")
        return
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    gdf = gpd.GeoDataFrame({"outline": np.arange(len(pixels))}, geometry=gpd.GeoSeries(pixels))
    t = time.process_time()
    theirs = regularize_geodataframe(
        gdf,
        parallel_threshold=1.0,
        simplify=True,
        simplify_tolerance=0.5,
        allow_45_degree=False,
        allow_circles=False,
        num_cores=1,
    )
    cpu = time.process_time() - t
    # it returns the parts of a multi-part outline as rows of their own
    joined = theirs.groupby("outline").geometry.agg(lambda g: shapely.union_all(np.asarray(g.values)))
    result = np.array([shapely.Polygon()] * len(pixels), dtype=object)
    result[joined.index.to_numpy()] = joined.to_numpy()
    report("buildingregulariser", pixels, result, cpu)


if __name__ == "__main__":
    main()
