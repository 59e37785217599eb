"""Scoring a model on a labelled scene, through the same path as ``geounet predict``.

The scene (or a window of it: the held-out part) is predicted with
``pipeline.predict_batch`` into a temporary folder; the labels are rasterized onto
the scene's grid (``labels``); the scores come from ``metrics``: pixel IoU / F1 per
class from ``classes.tif``, object F1 of the ``buildings`` layer of ``features.gpkg``
against the label polygons, and centre-line precision / recall of the
``road_centerlines`` layer against true centre lines (within 3 m by default).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

from geounet.compute.metrics import (
    centerline_scores,
    centerline_scores_from_counts,
    confusion_matrix,
    label_shift,
    object_scores,
    object_scores_from_counts,
    pixel_scores,
)
from geounet.compute.postprocess import DEFAULT_RULES, metric_crs
from geounet.engine.predict import PredictSettings, predict_batch
from geounet.engine.settings import CLI_NAMES
from geounet.errors import GeounetError
from geounet.io.aoi import AreaOfInterest, read_area
from geounet.io.labels import (
    IGNORE_INDEX,
    RASTER_LABEL_SUFFIXES,
    labels_to_raster,
    read_label_raster,
    read_vector_labels,
)
from geounet.io.rasters import tiled_profile
from geounet.io.run_record import RunRecord
from geounet.io.scene import check_scene, ground_pixel_size, open_scene
from geounet.models.card import ModelCard, file_sha256, read_card

if TYPE_CHECKING:
    import geopandas as gpd
    from shapely.geometry.base import BaseGeometry


@dataclass
class LabelOptions:
    """How a label file maps to the model's classes (as in a training config's ``labels``)."""

    class_field: str | None = None
    default_class: str | None = None
    value_map: dict[str, str] = field(default_factory=dict)
    unlabelled: str = "background"  # pixels no label covers: "background" or "ignore"
    # areas where labels may miss buildings: a predicted building there that overlaps no label is not scored
    unlabelled_ignore_in: Path | None = None
    line_width_m: float = 3.0
    all_touched: bool = False
    layer: str | None = None


def parse_window(text: str | None) -> tuple[float, float, float, float] | None:
    """``"x0,y0,x1,y1"`` fractions of the scene's width and height from its top-left corner."""
    if not text:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise GeounetError(None, f"--window must be four fractions x0,y0,x1,y1, got {text!r}") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise GeounetError(
            None, f"--window fractions must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {text!r}"
        )
    return x0, y0, x1, y1


def evaluate_model(
    model_path: str | Path,
    scene_path: str | Path,
    labels_path: str | Path,
    *,
    label_options: LabelOptions | None = None,
    window: tuple[float, float, float, float] | None = None,
    centerlines_path: str | Path | None = None,
    settings: PredictSettings | None = None,
    tolerance_m: float = 3.0,
    iou_threshold: float = 0.5,
) -> dict:
    """Predict ``scene_path`` (or its ``window``) with the model and score it against the labels."""
    scored = evaluate_scenes(
        model_path,
        [scene_path],
        labels_path,
        label_options=label_options,
        window=window,
        centerlines_path=centerlines_path,
        settings=settings,
        tolerance_m=tolerance_m,
        iou_threshold=iou_threshold,
    )
    return scored["scenes"][0]


def evaluate_scenes(
    model_path: str | Path,
    scene_paths: Sequence[str | Path],
    labels_path: str | Path,
    *,
    label_options: LabelOptions | None = None,
    window: tuple[float, float, float, float] | None = None,
    centerlines_path: str | Path | None = None,
    settings: PredictSettings | None = None,
    tolerance_m: float = 3.0,
    iou_threshold: float = 0.5,
) -> dict:
    """Each scene (or its ``window``) predicted and scored against the labels, then all of them pooled.

    Every input (model, labels, area, each scene, tiling) is checked before any scene is
    predicted. The result holds each scene's scores (``scenes``, :func:`evaluate_model`'s
    result) and the pooled ones (``pooled``: :func:`pool_scores`).
    """
    model_path, labels_path = Path(model_path), Path(labels_path)
    opts = label_options or LabelOptions()
    card = read_card(model_path)
    if not labels_path.exists():
        raise GeounetError(labels_path, "label file not found")
    if centerlines_path is not None and not Path(centerlines_path).exists():
        raise GeounetError(centerlines_path, "centre-line file not found")
    # read before the prediction: a bad area file fails first, not after minutes of work
    stale_area = None if opts.unlabelled_ignore_in is None else read_area(opts.unlabelled_ignore_in)
    settings = replace(settings or PredictSettings(quiet=True), vector=True)
    for scene_path in scene_paths:  # a bad last scene fails first, not after the others' minutes of work
        with open_scene(scene_path) as src:
            check_scene(src, card, rescale=settings.rescale == "auto")
    problems = settings.tiling_problems(card, CLI_NAMES)
    if problems:  # before minutes of prediction, not after
        raise GeounetError(None, "; ".join(problems))
    shared = {
        "model": {"path": str(model_path), "name": card.name, "sha256": file_sha256(model_path)},
        "labels": str(labels_path),
        "centerlines_file": str(centerlines_path) if centerlines_path else None,
        "window": list(window) if window else None,
        "label_options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
    }
    results = []
    for scene_path in map(Path, scene_paths):
        work = Path(tempfile.mkdtemp(prefix="geounet-eval-"))
        try:
            scene = _crop(scene_path, window, work / f"{scene_path.stem}.tif") if window else scene_path
            [report] = predict_batch([scene], work / "out", model_path, settings)
            if not report.ok:
                raise GeounetError(scene_path, f"prediction failed: {report.error}")
            assert report.out_dir is not None  # an ok report names its folder
            out = Path(report.out_dir)
            scores = _score(out, card, labels_path, opts, centerlines_path, tolerance_m, iou_threshold, stale_area)
            record = RunRecord.read(out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results.append(
            {"model": shared["model"], "scene": str(scene_path)} | shared | {"settings": record.settings, **scores}
        )
    return shared | {
        "settings": results[0]["settings"],
        "scenes": results,
        "pooled": pool_scores(results, card),
    }


def pool_scores(results: Sequence[dict], card: ModelCard) -> dict:
    """Scores of several scenes' results (:func:`evaluate_model`) as if they were one scene.

    Pixels: the confusion matrices summed. Buildings: matched, unmatched predicted and
    unmatched true polygons summed (each scene's matches are its own), the polygons' pixel
    overlap and union summed. Centre lines: their near and total pixels summed. The label
    offset is each scene's own and is not pooled.
    """
    cm = np.sum([np.asarray(r["confusion_matrix"], dtype=np.int64) for r in results], axis=0)
    pooled: dict = {"scenes": len(results), "pixel": _pixel_result(cm, card), "confusion_matrix": cm.tolist()}
    objects = [r["objects"] for r in results if "objects" in r]
    if objects:
        tp = sum(o["true_positives"] for o in objects)
        matched = sum(o["mean_matched_iou"] * o["true_positives"] for o in objects if o["true_positives"])
        scores = object_scores_from_counts(
            tp,
            sum(o["false_positives"] for o in objects),
            sum(o["false_negatives"] for o in objects),
            objects[0]["iou_threshold"],
            matched / tp if tp else None,
        )
        overlap = sum(o["polygon_pixels_overlap"] for o in objects)
        union = sum(o["polygon_pixels_union"] for o in objects)
        pooled["objects"] = scores.to_dict() | {
            "predicted": sum(o["predicted"] for o in objects),
            "true": sum(o["true"] for o in objects),
            "polygon_iou": overlap / union if union else None,
            "polygon_pixels_overlap": overlap,
            "polygon_pixels_union": union,
            "unscored_in_area": sum(o["unscored_in_area"] for o in objects),
        }
    lines = [r["centerlines"] for r in results if "centerlines" in r]
    if lines:
        pooled["centerlines"] = centerline_scores_from_counts(
            sum(c["pred_near"] for c in lines),
            sum(c["pred_pixels"] for c in lines),
            sum(c["true_near"] for c in lines),
            sum(c["true_pixels"] for c in lines),
            lines[0]["tolerance_m"],
        ) | {"scenes": len(lines)}
    return pooled


def _crop(scene: Path, window: tuple[float, float, float, float], dst: Path) -> Path:
    """Copy a window of the scene (fractions) to a GeoTIFF, block by block, keeping its mask."""
    x0, y0, x1, y1 = window
    with open_scene(scene) as src:
        c0, r0 = int(round(x0 * src.width)), int(round(y0 * src.height))
        c1, r1 = int(round(x1 * src.width)), int(round(y1 * src.height))
        win = Window(c0, r0, c1 - c0, r1 - r0)
        # a fresh profile (the source's own creation options, e.g. JPEG's YCbCr, need not suit a deflated copy)
        profile = tiled_profile(
            src.crs, src.window_transform(win), win.width, win.height, src.count, src.dtypes[0], src.nodata
        ) | {"compress": "deflate"}
        has_mask = src.nodata is None and any(rasterio.enums.MaskFlags.per_dataset in f for f in src.mask_flag_enums)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(dst, "w", **profile) as out:
            for r in range(0, win.height, 1024):
                for c in range(0, win.width, 1024):
                    sub = Window(c, r, min(1024, win.width - c), min(1024, win.height - r))
                    read = Window(c0 + c, r0 + r, sub.width, sub.height)
                    out.write(src.read(window=read), window=sub)
                    if has_mask:
                        out.write_mask(src.dataset_mask(window=read), window=sub)
    return dst


class _Prediction(NamedTuple):
    """The predicted ``classes.tif``: class indexes (rows, cols; 255 = nodata) and its grid (CRS, transform, bounds)."""

    classes: np.ndarray
    crs: Any
    transform: Any
    shape: tuple[int, int]
    bounds: Any


def _score(
    out: Path,
    card: ModelCard,
    labels_path: Path,
    opts: LabelOptions,
    centerlines_path: str | Path | None,
    tolerance_m: float,
    iou_threshold: float,
    stale_area: AreaOfInterest | None = None,
) -> dict:
    """Pixel, object (buildings) and centre-line (roads) scores of the prediction in ``out`` against the labels.

    ``stale_area``: where the labels may miss buildings (``opts.unlabelled_ignore_in``, read).
    """
    with rasterio.open(out / "classes.tif") as ds:
        pred = _Prediction(ds.read(1), ds.crs, ds.transform, (ds.height, ds.width), ds.bounds)
    fill = _unlabelled_fill(card, opts)
    truth, label_gdf = _truth(labels_path, card, opts, pred, fill)
    names = card.class_names
    building_ids = [i for i, c in enumerate(card.classes) if c.kind == "building"]
    preds = _building_polygons(out) if building_ids else None
    unscored = None
    if stale_area is not None:
        in_area = stale_area.on_grid(pred.crs, pred.transform, pred.shape)
        polygons = preds.geometry if preds is not None else []
        unscored = _unlabelled_detections(pred, truth, building_ids, in_area, polygons)
        truth[unscored.pixels] = IGNORE_INDEX
    cm = confusion_matrix(pred.classes, truth, len(names))
    result: dict = {"pixel": _pixel_result(cm, card), "confusion_matrix": cm.tolist()}

    if building_ids:
        result["objects"] = _object_result(preds, pred, truth, label_gdf, building_ids, iou_threshold, unscored)
        result["label_offset"] = _label_offset(pred, truth, building_ids)
    road_ids = [i for i, c in enumerate(card.classes) if c.kind == "road"]
    if road_ids:
        lines_src = centerlines_path
        if lines_src is None and label_gdf is not None:
            lines_src = labels_path if _has_lines(labels_path, opts.layer) else None
        if lines_src is not None:
            result["centerlines"] = _centerline_result(out, Path(lines_src), pred, tolerance_m)
    return result


def _pixel_result(cm: np.ndarray, card: ModelCard) -> dict:
    """Pixel scores of a confusion matrix, with the mean IoU of the classes that are not background
    (as training's validation reports it)."""
    pixel = pixel_scores(cm, card.class_names)
    fg = [pixel["classes"][c.name]["iou"] for c in card.classes if c.kind != "background"]
    fg = [v for v in fg if v is not None]
    pixel["mean_iou_foreground"] = float(np.mean(fg)) if fg else None
    return pixel


class _Unscored(NamedTuple):
    """What ``--unlabelled-ignore-in`` leaves unscored: pixels (rows, cols bool) and building polygons (bool each)."""

    pixels: np.ndarray
    polygons: np.ndarray


def _unlabelled_detections(
    pred: _Prediction, truth: np.ndarray, building_ids: list[int], in_area: np.ndarray, polygons: Any
) -> _Unscored:
    """The detections inside ``in_area`` that overlap no true building: left unscored, pixels and polygons.

    Where labels may miss buildings (footprints newer than the image, say), such a detection
    may be right or wrong. A detection is a polygon of the ``buildings`` layer (``polygons``,
    the scene's CRS): it is unscored when every pixel it covers (pixel centres on the
    prediction's grid; a polygon smaller than a pixel: the pixel under its representative
    point) is in the area and none holds a true building. Its pixels are unscored with it,
    and so are the predicted building pixels that no polygon covers (specks, outline edges)
    in 8-connected regions wholly in the area that meet no true building.
    """
    from rasterio.features import rasterize
    from scipy import ndimage

    predicted = np.isin(pred.classes, building_ids)
    true = np.isin(truth, building_ids)
    geoms = list(polygons)
    ids = np.zeros(pred.shape, np.int32)
    shapes = [(g, i + 1) for i, g in enumerate(geoms) if g is not None and not g.is_empty]
    if shapes:
        ids = rasterize(shapes, out_shape=pred.shape, transform=pred.transform, fill=0, dtype="int32")
    n = len(geoms) + 1
    covered = np.bincount(ids.ravel(), minlength=n)
    covered_in_area = np.bincount(ids[in_area], minlength=n)
    meets_truth = np.bincount(ids[true], minlength=n) > 0
    unscored = (covered == covered_in_area) & ~meets_truth
    present = np.array([g is not None and not g.is_empty for g in geoms], bool)
    tiny = np.flatnonzero((covered[1:] == 0) & present)
    if len(tiny):  # smaller than a pixel: the pixel under its representative point decides
        points = shapely.point_on_surface(np.asarray(geoms, dtype=object)[tiny])
        rows, cols = rasterio.transform.rowcol(pred.transform, shapely.get_x(points), shapely.get_y(points))
        rows = np.clip(np.asarray(rows), 0, pred.shape[0] - 1)
        cols = np.clip(np.asarray(cols), 0, pred.shape[1] - 1)
        unscored[tiny + 1] = in_area[rows, cols] & ~true[rows, cols]
    unscored[0] = False
    unscored[1:] &= present
    regions, _ = ndimage.label(predicted, structure=np.ones((3, 3), bool))
    stray = _stray_unscored(regions, predicted, true, in_area) & (ids == 0)
    return _Unscored(unscored[ids] | stray, unscored[1:])


def _stray_unscored(regions: np.ndarray, predicted: np.ndarray, true: np.ndarray, in_area: np.ndarray) -> np.ndarray:
    """Predicted pixels of the 8-connected ``regions`` that lie wholly in the area and meet no true building."""
    meets_truth = np.unique(regions[predicted & true])
    outside = np.unique(regions[predicted & ~in_area])
    return predicted & ~np.isin(regions, np.union1d(meets_truth, outside))


def _unlabelled_fill(card: ModelCard, opts: LabelOptions) -> int:
    """The class index of pixels no label covers: the background class, or the ignore index."""
    background = next((i for i, c in enumerate(card.classes) if c.kind == "background"), None)
    if opts.unlabelled == "ignore":
        return IGNORE_INDEX
    if opts.unlabelled == "background":
        if background is None:
            raise GeounetError(None, f"model '{card.name}' has no background class: use --unlabelled ignore")
        return background
    raise GeounetError(None, f"--unlabelled must be 'background' or 'ignore', got {opts.unlabelled!r}")


def _truth(
    labels_path: Path, card: ModelCard, opts: LabelOptions, pred: _Prediction, fill: int
) -> tuple[np.ndarray, gpd.GeoDataFrame | None]:
    """``(true class indexes on the prediction's grid, the label polygons for vector labels else None)``."""
    names = card.class_names
    if labels_path.suffix.lower() in RASTER_LABEL_SUFFIXES:
        return read_label_raster(labels_path, pred.crs, pred.transform, pred.shape, names, opts.value_map or None), None
    default_class = opts.default_class
    foreground = [c.name for c in card.classes if c.kind != "background"]
    if opts.class_field is None and default_class is None and len(foreground) == 1:
        default_class = foreground[0]  # e.g. every OSM outline is a building
    label_gdf = read_vector_labels(
        labels_path,
        pred.crs,
        tuple(pred.bounds),
        names,
        class_field=opts.class_field,
        default_class=default_class,
        value_map=opts.value_map,
        line_width_m=opts.line_width_m,
        layer=opts.layer,
    )
    truth = labels_to_raster(label_gdf, pred.shape, pred.transform, all_touched=opts.all_touched, unlabelled=fill)
    return truth, label_gdf


def _building_polygons(out: Path) -> gpd.GeoDataFrame | None:
    """The ``buildings`` layer of ``out/features.gpkg`` (the scene's CRS), or None when there is none."""
    import geopandas as gpd
    import pyogrio

    layers = {name for name, _ in pyogrio.list_layers(out / "features.gpkg")}
    return gpd.read_file(out / "features.gpkg", layer="buildings") if "buildings" in layers else None


def _object_result(
    preds: gpd.GeoDataFrame | None,
    pred: _Prediction,
    truth: np.ndarray,
    label_gdf: gpd.GeoDataFrame | None,
    building_ids: list[int],
    iou_threshold: float,
    unscored: _Unscored | None = None,
) -> dict:
    """Object scores of the ``buildings`` layer (``preds``) against the true buildings, matched in a metric CRS.

    ``unscored``: what :func:`_unlabelled_detections` leaves out: those polygons are neither
    right nor wrong, and are left out of the polygon IoU with their pixels.
    """
    import geopandas as gpd
    from shapely.geometry import box

    metric = metric_crs(pred.crs, tuple(pred.bounds))
    if label_gdf is not None:
        true = label_gdf[label_gdf.class_value.isin(building_ids)].geometry
    else:  # raster labels: one polygon per connected component of the building classes
        from geounet.compute.vectorize import apply_affine, polygonize_block

        pieces = polygonize_block(truth, (0, 0), building_ids)
        true = gpd.GeoSeries(apply_affine(pieces.geometry, pred.transform), crs=pred.crs)
    true = true.make_valid().intersection(box(*pred.bounds))  # OSM has self-intersecting outlines
    true = true[~true.is_empty]
    # Truth in the scene's nodata (e.g. outside a drone footprint) cannot be predicted: left out.
    points = true.representative_point()
    rows, cols = rasterio.transform.rowcol(pred.transform, points.x, points.y)
    rows, cols = np.clip(rows, 0, pred.shape[0] - 1), np.clip(cols, 0, pred.shape[1] - 1)
    true = true[pred.classes[rows, cols] != 255]
    true_m = true.to_crs(metric)
    true_m = true_m[true_m.area >= DEFAULT_RULES["building"].min_area_m2]
    scored = preds.geometry if preds is not None else gpd.GeoSeries([], crs=pred.crs)
    n_unscored = 0
    if unscored is not None and len(scored):
        scored = scored[~unscored.polygons]
        n_unscored = int(unscored.polygons.sum())
    pred_m = scored.to_crs(metric)
    scores = object_scores(np.asarray(pred_m.values), np.asarray(true_m.values), iou_threshold)
    overlap, union = _polygon_overlap(scored, truth, pred, building_ids)
    return scores.to_dict() | {
        "predicted": len(pred_m),
        "true": len(true_m),
        "polygon_iou": overlap / union if union else None,
        "polygon_pixels_overlap": overlap,
        "polygon_pixels_union": union,
        "unscored_in_area": n_unscored,
    }


def _label_offset(pred: _Prediction, truth: np.ndarray, building_ids: list[int], max_px: int = 8) -> dict | None:
    """How far the true buildings sit from the predicted ones: the move (metres east, north) that overlaps best.

    A diagnostic for labels drawn on other imagery, or footprints under roofs that lean in an
    off-nadir view: scores against such labels are capped by the offset. Searched in whole
    pixels within ``max_px``, on the 2048-pixel square holding the most true building pixels.
    """
    is_true = np.isin(truth, building_ids)
    rows, cols = _densest_square(is_true, 2048)
    window = np.s_[rows : rows + 2048, cols : cols + 2048]
    valid = (truth != IGNORE_INDEX) & (pred.classes != 255)
    shift = label_shift(np.isin(pred.classes[window], building_ids), is_true[window], valid[window], max_px)
    if shift is None:
        return None
    size_x, size_y = ground_pixel_size(pred.crs, pred.transform, pred.shape[1], pred.shape[0])
    return {
        "east_m": round(shift.cols * size_x, 3),
        "north_m": round(-shift.rows * size_y, 3),
        "pixels": [shift.rows, shift.cols],
        "iou": shift.iou,
        "iou_moved": shift.iou_moved,
        "max_px": max_px,
    }


def _densest_square(mask: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left (row, col), on a ``size // 4`` step, of the ``size`` square holding the most true pixels."""
    h, w = mask.shape
    if h <= size and w <= size:
        return 0, 0
    step = size // 4
    best, where = -1, (0, 0)
    for r in range(0, max(1, h - size + step), step):
        for c in range(0, max(1, w - size + step), step):
            n = int(mask[r : r + size, c : c + size].sum())
            if n > best:
                best, where = n, (r, c)
    return where


def _polygon_overlap(
    polygons: Iterable[BaseGeometry | None], truth: np.ndarray, pred: _Prediction, building_ids: list[int]
) -> tuple[int, int]:
    """Pixels of (intersection, union) of the delivered building polygons, burnt on the prediction's grid
    (pixel centres), and the true buildings: their IoU scores ``features.gpkg``.

    The pixel IoU scores ``classes.tif``; this scores the polygons after cleaning,
    simplification and regularisation. Pixels without labels or scene data are left out.
    """
    from rasterio.features import rasterize

    shapes = [(g, 1) for g in polygons if g is not None and not g.is_empty]
    burnt = np.zeros(pred.shape, bool)
    if shapes:
        burnt = rasterize(shapes, out_shape=pred.shape, transform=pred.transform, fill=0, dtype="uint8") > 0
    scored = (truth != IGNORE_INDEX) & (pred.classes != 255)
    true = np.isin(truth, building_ids)
    return int((burnt & true & scored).sum()), int(((burnt | true) & scored).sum())


def _has_lines(path: Path, layer: str | None) -> bool:
    """Whether the vector file (layer) holds lines."""
    import pyogrio

    info = pyogrio.read_info(path, layer=layer)
    return "LineString" in str(info.get("geometry_type", ""))


def _centerline_result(out: Path, lines_path: Path, pred: _Prediction, tolerance_m: float) -> dict:
    """Precision / recall of the ``road_centerlines`` layer against the true lines, within ``tolerance_m`` metres."""
    import geopandas as gpd
    from shapely.geometry import box

    truth_lines = gpd.read_file(lines_path).to_crs(pred.crs)
    truth_lines = truth_lines[truth_lines.geometry.intersects(box(*pred.bounds))]
    pred_lines = gpd.read_file(out / "features.gpkg", layer="road_centerlines")
    true_mask = _burn(truth_lines.geometry, pred.shape, pred.transform)
    pred_mask = _burn(pred_lines.geometry, pred.shape, pred.transform)
    size = ground_pixel_size(pred.crs, pred.transform, pred.shape[1], pred.shape[0])
    scores = centerline_scores(pred_mask, true_mask, size, tolerance_m, valid=pred.classes != 255)
    return scores | {"truth_file": str(lines_path)}


def _burn(geoms: Iterable[BaseGeometry | None], shape: tuple[int, int], transform: Any) -> np.ndarray:
    """A (rows, cols) bool mask of the pixels the geometries touch (rasterio's default rule)."""
    from rasterio.features import rasterize

    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros(shape, bool)
    return rasterize(((g, 1) for g in geoms), out_shape=shape, transform=transform, fill=0, dtype="uint8") > 0


def format_report(result: dict) -> str:
    """A short plain-text table of the scores: of one scene, or of each scene and then pooled (:func:`evaluate_scenes`)."""
    window = f" window {result['window']}" if result["window"] else ""
    if "pooled" in result:
        parts = [format_report(r) for r in result["scenes"]]
        n = len(result["scenes"])
        header = f"model {result['model']['name']} on {n} scenes, pooled (pixels and objects summed){window}"
        return "\n\n".join([*parts, "\n".join([header, *_score_lines(result["pooled"])])])
    header = f"model {result['model']['name']} on {Path(result['scene']).name}{window}"
    return "\n".join([header, *_score_lines(result)])


def _score_lines(result: dict) -> list[str]:
    """The lines of :func:`format_report` under its header."""
    lines: list[str] = []
    lines.append(f"{'class':<16}{'IoU':>8}{'F1':>8}{'prec':>8}{'recall':>8}{'pixels':>11}")
    for name, s in result["pixel"]["classes"].items():
        if s["iou"] is None:
            lines.append(f"{name:<16}{'-':>8}{'-':>8}{'-':>8}{'-':>8}{0:>11}")
        else:
            lines.append(
                f"{name:<16}{s['iou']:8.3f}{s['f1']:8.3f}{s['precision']:8.3f}{s['recall']:8.3f}{s['pixels']:>11}"
            )
    p = result["pixel"]
    fg = p.get("mean_iou_foreground")
    lines.append(
        f"mean IoU {p['mean_iou']:.3f} (all classes), "
        + (f"{fg:.3f} (non-background)   " if fg is not None else "  ")
        + f"pixel accuracy {p['pixel_accuracy']:.3f}   ({p['pixels_scored']} pixels)"
    )
    if "objects" in result:
        o = result["objects"]
        lines.append(
            f"buildings, objects at IoU >= {o['iou_threshold']}: F1 {o['f1']:.3f} "
            f"precision {o['precision']:.3f} recall {o['recall']:.3f} "
            f"({o['true_positives']} matched of {o['predicted']} predicted, {o['true']} true)"
            + (
                f"; {o['unscored_in_area']} predicted in the areas without a label to meet: not scored"
                if o.get("unscored_in_area")
                else ""
            )
        )
        if o.get("polygon_iou") is not None:
            lines.append(f"buildings, polygons (features.gpkg) burnt on the grid: IoU {o['polygon_iou']:.3f}")
    off = result.get("label_offset")
    if off is not None and off["pixels"] != [0, 0]:
        lines.append(
            f"buildings, labels vs prediction: the labels overlap best moved {off['east_m']:+.1f} m east, "
            f"{off['north_m']:+.1f} m north (IoU {off['iou']:.3f} as given, {off['iou_moved']:.3f} moved): "
            "labels drawn on other imagery or at ground level under leaning roofs cap these scores"
        )
    if "centerlines" in result:
        c = result["centerlines"]
        lines.append(
            f"road centre lines within {c['tolerance_m']:g} m: precision {c['precision']:.3f} "
            f"recall {c['recall']:.3f} F1 {c['f1']:.3f}"
        )
    return lines


def write_json(result: dict, path: str | Path) -> None:
    """Write atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
