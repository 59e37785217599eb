"""Validation metrics: confusion matrix over labelled pixels, IoU per class."""

from __future__ import annotations

import numpy as np
import pytest

from geounet.training.validation import confusion, iou_per_class


def test_iou_from_confusion() -> None:
    label = np.array([[0, 0, 1, 1], [0, 255, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 1, 0, 1]])
    cm = confusion(pred, label, 2)
    assert cm.tolist() == [[2, 1], [1, 3]]
    assert iou_per_class(cm)[1] == pytest.approx(3 / 5)
