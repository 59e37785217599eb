"""Segmentation losses on logits (B, K, H, W) and class-index targets (B, H, W), ignoring unlabelled pixels."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from geounet.io.labels import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

Loss = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def make_loss(
    name: str, ignore_index: int = IGNORE_INDEX, class_weights: list[float] | None = None, device: str = "cpu"
) -> Loss:
    """Loss on logits (B, K, H, W) and targets (B, H, W); smp losses, CE from torch.

    ``dice_ce`` is smp's multiclass DiceLoss plus cross-entropy. Cross-entropy is
    torch's, which averages over labelled pixels only (smp's SoftCrossEntropyLoss
    also counts ignored pixels in the mean). ``bce`` is one-vs-rest binary
    cross-entropy of each class channel against the one-hot target, over labelled
    pixels. ``class_weights`` (one per class) weight the CE / BCE term.
    """
    import torch

    from geounet._torchvision_compat import ensure_torchvision

    ensure_torchvision()  # before smp imports torchvision
    from segmentation_models_pytorch import losses

    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32, device=device)
    ce = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
    if name == "ce":
        return ce
    if name == "bce":
        return lambda logits, target: bce(logits, target, ignore_index, weight)
    if name == "dice":
        return losses.DiceLoss("multiclass", ignore_index=ignore_index)
    if name == "focal":
        return losses.FocalLoss("multiclass", ignore_index=ignore_index)
    if name == "tversky":
        return losses.TverskyLoss("multiclass", ignore_index=ignore_index, alpha=0.3, beta=0.7)
    if name == "dice_ce":
        dice = losses.DiceLoss("multiclass", ignore_index=ignore_index)
        return lambda logits, target: ce(logits, target) + dice(logits, target)
    raise ValueError(f"unknown loss {name!r}")


def bce(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """One-vs-rest BCE with logits over the labelled pixels; ``weight`` (K,) weights each class channel."""
    import torch

    keep = target != ignore_index
    k = logits.shape[1]
    onehot = torch.nn.functional.one_hot(torch.where(keep, target, 0), k).permute(0, 3, 1, 2).to(logits.dtype)
    per_px = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    if weight is not None:
        per_px = per_px * weight[None, :, None, None]
    per_px = per_px.mean(1)[keep]
    return per_px.mean() if per_px.numel() else logits.sum() * 0.0
