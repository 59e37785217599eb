"""Validation during training: pixel IoU of the network on held-out scenes, predicted as ``geounet predict`` does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from geounet.engine.tiles import predict_array
from geounet.io.labels import IGNORE_INDEX
from geounet.models.card import ModelCard, normalise
from geounet.training.config import foreground_classes
from geounet.training.data import Scene

if TYPE_CHECKING:
    import torch


def confusion(pred: np.ndarray, label: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) pixel counts [true, predicted] over pixels whose label is not the ignore index."""
    from geounet.compute.metrics import confusion_matrix

    return confusion_matrix(pred, label, n_classes, IGNORE_INDEX)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU of each class from a confusion matrix (NaN for a class absent from labels and predictions)."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def evaluate(net: torch.nn.Module, scenes: list[Scene], card: ModelCard, *, precision: str = "fp32") -> dict[str, Any]:
    """Pixel metrics of ``net`` on scenes: per-class IoU, mean IoU of the non-background classes, accuracy.

    Scenes are predicted exactly as ``geounet predict`` does (``predict_array``: the
    card's tile size and overlap, mirror padding, blended seams), on the device the
    network is on.
    """
    n = len(card.classes)
    cm = np.zeros((n, n), dtype=np.int64)
    device = str(next(net.parameters()).device)
    net.eval()
    for s in scenes:
        probs = predict_array(net, normalise(s.image, card), card.tile_size, card.overlap, device, precision)
        cm += confusion(probs.argmax(0), s.label, n)
    ious = iou_per_class(cm)
    fg = foreground_classes(card.classes)
    fg_ious = [ious[i] for i in fg if not np.isnan(ious[i])]
    return {
        "iou": {c.name: (None if np.isnan(v) else round(float(v), 4)) for c, v in zip(card.classes, ious)},
        "mean_iou": round(float(np.mean(fg_ious)), 4) if fg_ious else 0.0,
        "accuracy": round(float(np.trace(cm) / max(cm.sum(), 1)), 4),
        "pixels": int(cm.sum()),
    }
