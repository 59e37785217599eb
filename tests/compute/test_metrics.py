import numpy as np
import pytest
from shapely.geometry import box

from geounet.compute.metrics import (
    centerline_scores,
    confusion_matrix,
    match_polygons,
    object_scores,
    pixel_scores,
)


def test_confusion_matrix_skips_ignore_in_truth_and_prediction():
    truth = np.array([[0, 0, 1, 1], [1, 255, 1, 0]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 1, 255, 0]], np.uint8)
    cm = confusion_matrix(pred, truth, 2)
    # scored pairs (t, p): (0,0) (0,1) (1,1) (1,1) (1,0) (0,0)
    assert cm.tolist() == [[2, 1], [1, 2]]


def test_pixel_scores_by_hand():
    cm = np.array([[50, 10], [5, 35]])
    s = pixel_scores(cm, ["background", "building"])
    b = s["classes"]["building"]
    assert b["iou"] == pytest.approx(35 / (35 + 10 + 5))
    assert b["f1"] == pytest.approx(70 / (70 + 15))
    assert b["precision"] == pytest.approx(35 / 45) and b["recall"] == pytest.approx(35 / 40)
    assert s["mean_iou"] == pytest.approx((50 / 65 + 35 / 50) / 2)
    assert s["pixel_accuracy"] == pytest.approx(0.85)


def test_absent_class_is_not_averaged():
    s = pixel_scores(np.array([[10, 0, 0], [0, 5, 0], [0, 0, 0]]), ["a", "b", "c"])
    assert s["classes"]["c"]["iou"] is None and s["mean_iou"] == pytest.approx(1.0)


def test_object_f1_with_a_known_matching():
    truth = np.array([box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10), box(60, 0, 70, 10)])
    pred = np.array(
        [
            box(0, 0, 10, 10),  # exact: IoU 1
            box(22, 0, 32, 10),  # shifted 2 m: IoU 80/120 = 0.67, a match
            box(40, 0, 70, 10),  # merges truths 3 and 4: IoU 1/3 with each, no match
            box(100, 0, 110, 10),  # nothing there
        ]
    )
    pairs = match_polygons(pred, truth)
    assert sorted((a, b) for a, b, _ in pairs) == [(0, 0), (1, 1)]
    s = object_scores(pred, truth)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (2, 2, 2)
    assert s.f1 == pytest.approx(0.5)


def test_matching_is_one_to_one_and_prefers_the_best_iou():
    truth = np.array([box(0, 0, 10, 10)])
    pred = np.array([box(1, 0, 11, 10), box(0, 0, 10, 10)])  # both >= 0.5; the exact one wins
    [(a, b, iou)] = match_polygons(pred, truth)
    assert (a, b, iou) == (1, 0, 1.0)
    s = object_scores(pred, truth)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 1, 0)


def test_object_scores_when_nothing_is_predicted():
    s = object_scores(np.array([], dtype=object), np.array([box(0, 0, 1, 1)]))
    assert (s.true_positives, s.false_negatives, s.f1) == (0, 1, 0.0)


def _line_mask(row: int, shape=(60, 200)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[row, 10:190] = True
    return m


def test_centerline_precision_recall_within_tolerance():
    truth = _line_mask(30)
    near = centerline_scores(_line_mask(35), truth, (0.5, 0.5), tolerance_m=3.0)  # 2.5 m away
    assert near["precision"] == 1.0 and near["recall"] == 1.0
    far = centerline_scores(_line_mask(38), truth, (0.5, 0.5), tolerance_m=3.0)  # 4 m away
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # Anisotropic pixels (degrees): 5 rows of 0.8 m = 4 m, beyond 3 m.
    assert centerline_scores(_line_mask(35), truth, (0.5, 0.8), 3.0)["precision"] == 0.0


def test_centerline_half_a_road_found():
    truth = _line_mask(30)
    pred = np.zeros_like(truth)
    pred[30, 10:100] = True
    s = centerline_scores(pred, truth, (1.0, 1.0), 3.0)
    assert s["precision"] == 1.0
    assert s["recall"] == pytest.approx(93 / 180)  # 90 px found + 3 px within 3 m of its end


def test_label_shift_finds_how_far_the_truth_sits_from_the_prediction() -> None:
    from geounet.compute.metrics import label_shift

    pred = np.zeros((60, 80), bool)
    pred[10:25, 10:30] = pred[35:50, 40:70] = True
    truth = np.roll(np.roll(pred, -3, axis=0), 2, axis=1)  # 3 rows up, 2 columns right
    valid = np.ones_like(pred)
    shift = label_shift(pred, truth, valid, max_shift=6)
    assert shift is not None and (shift.rows, shift.cols) == (3, -2)  # move the truth down 3, left 2
    assert shift.iou_moved == 1.0 and shift.iou < 0.7
    aligned = label_shift(pred, pred, valid, max_shift=6)
    assert aligned is not None and (aligned.rows, aligned.cols, aligned.iou) == (0, 0, 1.0)
    # unscored pixels do not count: the truth's copy in an invalid area cannot pull the shift
    valid[:, 60:] = False
    assert label_shift(np.zeros_like(pred), np.zeros_like(pred), valid) is None
