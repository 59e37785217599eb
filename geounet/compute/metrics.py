"""Segmentation metrics on arrays and geometries. Pure: no I/O.

- Pixel metrics from a confusion matrix: per-class IoU, F1, precision, recall, and the
  mean IoU over the classes present in the truth or the prediction.
- Object F1 (the SpaceNet building metric): predicted and true polygons are matched
  one to one, greedily by decreasing IoU, a pair counting only when IoU >= 0.5.
- Centre-line precision and recall (road graphs): the share of predicted centre-line
  pixels within a tolerance (metres) of a true centre-line pixel, and the reverse.
- Label registration: the whole-pixel shift of the true mask that best overlaps the
  predicted mask (labels drawn on other imagery, or footprints under leaning roofs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import shapely
from scipy import ndimage

IGNORE_INDEX = 255


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, n_classes: int, ignore: int = IGNORE_INDEX) -> np.ndarray:
    """``cm[t, p]``: pixels of true class ``t`` predicted as ``p``. ``ignore`` in either array is skipped."""
    pred = np.asarray(pred).ravel()
    truth = np.asarray(truth).ravel()
    ok = (truth != ignore) & (pred != ignore) & (truth < n_classes) & (pred < n_classes)
    idx = truth[ok].astype(np.int64) * n_classes + pred[ok].astype(np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def pixel_scores(cm: np.ndarray, class_names: list[str]) -> dict:
    """Per-class IoU / F1 / precision / recall and mean IoU from a confusion matrix.

    A class absent from both truth and prediction has no score (``None``) and is left
    out of the mean.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    per_class: dict[str, dict[str, float | None]] = {}
    ious = []
    for i, name in enumerate(class_names):
        support = tp[i] + fn[i]
        if tp[i] + fp[i] + fn[i] == 0:
            per_class[name] = {"iou": None, "f1": None, "precision": None, "recall": None, "pixels": 0}
            continue
        iou = tp[i] / (tp[i] + fp[i] + fn[i])
        ious.append(iou)
        per_class[name] = {
            "iou": float(iou),
            "f1": float(2 * tp[i] / (2 * tp[i] + fp[i] + fn[i])),
            "precision": float(tp[i] / (tp[i] + fp[i])) if tp[i] + fp[i] else 0.0,
            "recall": float(tp[i] / support) if support else 0.0,
            "pixels": int(support),
        }
    total = cm.sum()
    return {
        "classes": per_class,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "pixels_scored": int(total),
    }


@dataclass
class ObjectScores:
    """One-to-one polygon matching at an IoU threshold."""

    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float
    recall: float
    f1: float
    iou_threshold: float
    mean_matched_iou: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` and ``b[i]`` for each i (arrays of polygons in one CRS); 0 where both are empty."""
    inter = shapely.area(shapely.intersection(a, b))
    union = shapely.area(a) + shapely.area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_polygons(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """Pairs ``(pred index, truth index, IoU)`` matched one to one, greedily by decreasing IoU.

    Only pairs with IoU >= ``iou_threshold`` are matched. Both inputs are arrays of
    (Multi)Polygons in the same (preferably equal-area) CRS.
    """
    pred = np.asarray(pred, dtype=object)
    truth = np.asarray(truth, dtype=object)
    if not len(pred) or not len(truth):
        return []
    tree = shapely.STRtree(truth)
    p_idx, t_idx = tree.query(pred, predicate="intersects")
    if not len(p_idx):
        return []
    iou = pairwise_iou(pred[p_idx], truth[t_idx])
    ok = iou >= iou_threshold
    p_idx, t_idx, iou = p_idx[ok], t_idx[ok], iou[ok]
    used_p, used_t, pairs = set(), set(), []
    for k in np.argsort(-iou, kind="stable"):
        a, b = int(p_idx[k]), int(t_idx[k])
        if a not in used_p and b not in used_t:
            used_p.add(a)
            used_t.add(b)
            pairs.append((a, b, float(iou[k])))
    return pairs


def object_scores(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> ObjectScores:
    """SpaceNet-style object precision, recall and F1 (see :func:`match_polygons`)."""
    pairs = match_polygons(pred, truth, iou_threshold)
    tp = len(pairs)
    mean_iou = float(np.mean([p[2] for p in pairs])) if pairs else None
    return object_scores_from_counts(tp, len(pred) - tp, len(truth) - tp, iou_threshold, mean_iou)


def object_scores_from_counts(
    tp: int, fp: int, fn: int, iou_threshold: float, mean_matched_iou: float | None
) -> ObjectScores:
    """Precision, recall and F1 of matched (``tp``), unmatched predicted (``fp``) and unmatched true (``fn``) objects.

    Counts summed over several scenes give their pooled scores.
    """
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ObjectScores(tp, fp, fn, precision, recall, f1, iou_threshold, mean_matched_iou)


def centerline_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    pixel_size_m: tuple[float, float],
    tolerance_m: float = 3.0,
    valid: np.ndarray | None = None,
) -> dict:
    """Precision / recall of centre-line pixels within ``tolerance_m`` of the other set.

    pred, truth: boolean (rows, cols) rasters of one-pixel-wide centre lines on the same
    grid; pixel_size_m: ground size (metres) of a pixel step in (x, y); valid: optional
    mask of the evaluated area (pixels outside count for neither side).
    """
    pred = np.asarray(pred, bool)
    truth = np.asarray(truth, bool)
    if valid is not None:
        pred, truth = pred & valid, truth & valid
    sampling = (pixel_size_m[1], pixel_size_m[0])  # rows (y), cols (x)
    n_pred, n_true = int(pred.sum()), int(truth.sum())
    near_truth = (
        ndimage.distance_transform_edt(~truth, sampling=sampling) <= tolerance_m if n_true else np.zeros_like(pred)
    )
    near_pred = (
        ndimage.distance_transform_edt(~pred, sampling=sampling) <= tolerance_m if n_pred else np.zeros_like(truth)
    )
    pred_near, true_near = int((pred & near_truth).sum()), int((truth & near_pred).sum())
    return centerline_scores_from_counts(pred_near, n_pred, true_near, n_true, tolerance_m)


def centerline_scores_from_counts(
    pred_near: int, pred_pixels: int, true_near: int, true_pixels: int, tolerance_m: float
) -> dict:
    """Centre-line scores from pixel counts: predicted pixels near a true line (of all predicted), and the reverse.

    Counts summed over several scenes give their pooled scores.
    """
    precision = pred_near / pred_pixels if pred_pixels else 0.0
    recall = true_near / true_pixels if true_pixels else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tolerance_m": tolerance_m,
        "pred_pixels": pred_pixels,
        "true_pixels": true_pixels,
        "pred_near": pred_near,
        "true_near": true_near,
    }


@dataclass(frozen=True)
class LabelShift:
    """How far the true mask sits from the predicted one, in whole pixels of their shared grid.

    Moving the truth ``rows`` down and ``cols`` right (negative: up, left) overlaps the
    prediction best: IoU ``iou_moved`` there against ``iou`` where it is.
    """

    rows: int
    cols: int
    iou: float
    iou_moved: float


def label_shift(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray, max_shift: int = 8) -> LabelShift | None:
    """The shift of the true mask (rows, cols; bool) within ``max_shift`` pixels that best overlaps ``pred``.

    Only pixels where ``valid`` is true at both ends of a shift count. None when neither
    mask has a pixel in the scored area.
    """
    m = max_shift
    h, w = pred.shape
    if h <= 2 * m or w <= 2 * m:
        return None
    core = np.s_[m : h - m, m : w - m]
    a, va = pred[core], valid[core]
    best, at_zero = (-1.0, 0, 0), 0.0
    for dr in range(-m, m + 1):
        for dc in range(-m, m + 1):
            moved = np.s_[m - dr : h - m - dr, m - dc : w - m - dc]  # truth pixel that lands on each core pixel
            scored = va & valid[moved]
            b = truth[moved] & scored
            aa = a & scored
            union = int((aa | b).sum())
            if not union:
                continue
            iou = float((aa & b).sum() / union)
            if (dr, dc) == (0, 0):
                at_zero = iou
            if iou > best[0] + 1e-9 or (abs(iou - best[0]) <= 1e-9 and abs(dr) + abs(dc) < abs(best[1]) + abs(best[2])):
                best = (iou, dr, dc)
    if best[0] < 0:
        return None
    return LabelShift(best[1], best[2], at_zero, best[0])
