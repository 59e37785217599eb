"""Per-pixel change between co-registered pre- and post-event blocks, and damage grades. Pure.

Everything here works on arrays that are already on one grid (the pre scene's):
no file I/O, no CRS. Three per-pixel measures come out of one U-Net pass over the
pre/post pair (``pair_forward``):

* ``p_pre``, ``p_post``: the buildings model's building probability in each epoch;
* ``feature_distance``: ``1 - cosine similarity`` of the U-Net *encoder* features of
  pre and post at each pixel, averaged over the chosen encoder stages (default: the
  first, stride-2 stage; each upsampled bilinearly to the input size). Encoder
  features are ReLU outputs (non-negative), so the distance lies in [0, 1];
  identical pixels (and context) give exactly 0.

``change_score`` combines them into one score in [0, 1] per pixel (see its docstring);
a building's ``damage_score`` is the mean change score over its footprint's valid
pixels, and ``grade`` maps scores to the xBD joint damage scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRADES = ("no-damage", "minor-damage", "major-damage", "destroyed")
NOT_ASSESSED = "not_assessed"
GRADE_COLOURS = {  # each grade's colour in quicklooks and QGIS styles: RGB
    "no-damage": (40, 200, 60),
    "minor-damage": (250, 230, 40),
    "major-damage": (255, 140, 0),
    "destroyed": (230, 20, 20),
    NOT_ASSESSED: (160, 160, 160),
}
MEASURES = ("p_pre", "p_post", "feature_distance")  # channels of ``pair_forward``


@dataclass(frozen=True)
class ChangeRules:
    """How the per-pixel measures become a change score in [0, 1] (unitless).

    ``feature_low`` / ``feature_high``: encoder feature distances mapped to 0 and 1
    (linear in between): below ``feature_low`` is the difference two images of an
    unchanged place still have (other sensor, season, sun); above ``feature_high``
    the place looks different. ``prob_weight``: weight of the building-probability
    drop against the feature term (weight 1). ``prob_ref``: the pre building
    probability at which the model's opinion gets full weight (lower: proportionally
    less, so where the model does not see a building in the pre image the score
    rests on the feature distance alone).
    """

    feature_low: float = 0.2
    feature_high: float = 0.4
    prob_weight: float = 1.0
    prob_ref: float = 0.3


def pair_forward(
    net,
    pre: np.ndarray,
    post: np.ndarray,
    building_class: int,
    device: str = "cpu",
    precision: str = "fp32",
    stages: tuple[int, ...] = (1,),
) -> np.ndarray:
    """One U-Net pass over normalised pre and post tiles ``(n, bands, h, w)`` each.

    Returns ``(n, 3, h, w)`` float32: building probability pre, building probability
    post, encoder feature distance (see module docstring) averaged over the encoder
    ``stages`` (1 = the first, stride-2 stage; deeper stages are coarser and more
    invariant), all in [0, 1].
    """
    import torch
    import torch.nn.functional as F

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    n = pre.shape[0]
    x = torch.from_numpy(np.concatenate([pre, post])).to(device).contiguous(memory_format=torch.channels_last)
    size = x.shape[-2:]
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        features = net.encoder(x)
        logits = net.segmentation_head(net.decoder(features))
        probs = torch.softmax(logits.float(), dim=1)[:, building_class]
        dist = torch.zeros((n, *size), dtype=torch.float32, device=x.device)
        chosen = [features[k] for k in stages if 0 < k < len(features) and features[k].shape[1] > 0]
        if not chosen:
            raise ValueError(f"encoder stages {list(stages)} not in 1..{len(features) - 1}")
        for f in chosen:
            f = f.float()
            cos = F.cosine_similarity(f[:n], f[n:], dim=1, eps=1e-6)
            d = (1.0 - cos).clamp(0.0, 1.0)[:, None]
            dist += F.interpolate(d, size=size, mode="bilinear", align_corners=False)[:, 0]
        dist /= len(chosen)
    out = torch.stack([probs[:n], probs[n:], dist], dim=1)
    if dtype is not None and not bool(torch.isfinite(out).all()):  # autocast overflowed (fp16 ends at 65504)
        return pair_forward(net, pre, post, building_class, device, "fp32", stages)
    return out.cpu().numpy()


def probability_drop(p_pre: np.ndarray, p_post: np.ndarray) -> np.ndarray:
    """Relative loss of building probability, ``clip((p_pre - p_post) / p_pre, 0, 1)`` (0 where p_pre is 0)."""
    p_pre = np.asarray(p_pre, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(p_pre > 0, (p_pre - np.asarray(p_post, np.float32)) / p_pre, 0.0)
    return np.clip(drop, 0.0, 1.0).astype(np.float32)


def feature_change(distance: np.ndarray, rules: ChangeRules) -> np.ndarray:
    """Feature distance rescaled: ``feature_low`` -> 0, ``feature_high`` -> 1, clipped."""
    span = max(rules.feature_high - rules.feature_low, 1e-6)
    return np.clip((np.asarray(distance, np.float32) - rules.feature_low) / span, 0.0, 1.0).astype(np.float32)


def change_score(p_pre: np.ndarray, p_post: np.ndarray, distance: np.ndarray, rules: ChangeRules) -> np.ndarray:
    """Per-pixel change score in [0, 1]: a confidence-weighted mean of the two pair measures.

    ``score = (F + w c D) / (1 + w c)`` with ``F = feature_change(distance)``,
    ``D = probability_drop(p_pre, p_post)``, ``w = prob_weight`` and
    ``c = min(1, p_pre / prob_ref)`` (how sure the model is that the pre image shows a
    building here). Both terms compare pre with post; neither looks at post alone.
    """
    f = feature_change(distance, rules)
    d = probability_drop(p_pre, p_post)
    c = np.clip(np.asarray(p_pre, np.float32) / max(rules.prob_ref, 1e-6), 0.0, 1.0)
    wc = np.float32(rules.prob_weight) * c
    return ((f + wc * d) / (1.0 + wc)).astype(np.float32)


@dataclass(frozen=True)
class BuildingScore:
    """Per building (arrays of one value each): its damage score and the terms that drove it, all in [0, 1]."""

    score: np.ndarray  # the damage score graded by the thresholds
    presence_drop: np.ndarray  # D: how much of the pre-event building probability is gone after
    confidence: np.ndarray  # c: how sure the model was that pre shows a building (weight of D)
    change_term: np.ndarray  # F: image change inside the footprint (encoder features)


def building_score(p_pre: np.ndarray, p_post: np.ndarray, distance: np.ndarray, rules: ChangeRules) -> BuildingScore:
    """Damage score per building from its footprint means of ``p_pre``, ``p_post`` and feature distance.

    ``D = clip(1 - p_post / min(p_pre, prob_ref), 0, 1)``: a roof that was a building before
    and is rubble or bare ground after has lost its building probability (D near 1); a roof
    still seen as a building after (at least as sure as before, or as ``prob_ref``) has not
    (D = 0), so the model's lower confidence on another sensor's image is no damage.
    ``c = min(1, p_pre / prob_ref)``: D counts only as far as the model saw a building
    before. ``F = feature_change(distance)``: the image changed. The score combines the two
    pieces of evidence like independent probabilities, ``1 - (1 - c D)(1 - F)``: either alone
    can make a building destroyed, both together reinforce. Means over the footprint (not
    per-pixel ratios) make D robust to the model's pixel noise at roof edges. NaN in, NaN out.
    """
    p0 = np.asarray(p_pre, np.float64)
    p1 = np.asarray(p_post, np.float64)
    ref = np.minimum(p0, max(rules.prob_ref, 1e-6))
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(ref > 0, np.clip(1.0 - p1 / ref, 0.0, 1.0), 0.0)
    drop = np.where(np.isnan(p0) | np.isnan(p1), np.nan, drop)
    conf = np.clip(p0 / max(rules.prob_ref, 1e-6), 0.0, 1.0)
    f = np.where(np.isnan(distance), np.nan, feature_change(np.nan_to_num(distance), rules))
    evidence = np.clip(rules.prob_weight * conf * drop, 0.0, 1.0)
    score = 1.0 - (1.0 - evidence) * (1.0 - f)
    return BuildingScore(score, drop, conf, f)


def grade(scores: np.ndarray, thresholds: tuple[float, float, float]) -> np.ndarray:
    """Damage scores -> xBD grade names; NaN -> ``not_assessed``.

    ``thresholds`` = lower bounds of minor-damage, major-damage and destroyed
    (increasing). Below the first: no-damage.
    """
    t = np.asarray(thresholds, np.float64)
    if t.shape != (3,) or np.any(np.diff(t) < 0) or t[0] < 0 or t[-1] > 1:
        raise ValueError(f"grade thresholds must be 3 increasing values in [0, 1], got {list(thresholds)}")
    scores = np.asarray(scores, np.float64)
    names = np.array(GRADES + (NOT_ASSESSED,), dtype=object)
    idx = np.searchsorted(t, np.nan_to_num(scores, nan=-1.0), side="right")
    idx = np.where(np.isnan(scores), len(GRADES), idx)
    return names[idx]


def match_moments(pre: np.ndarray, post: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band gain and offset that give post the mean and standard deviation of pre.

    ``pre``, ``post``: ``(bands, h, w)`` co-registered samples (e.g. a decimated read of the
    overlap); ``valid``: pixels with data in both. Apply as ``post * gain + offset``
    (relative radiometric normalisation: another sensor, sun or season should not read
    as change). Returns float32 arrays of shape ``(bands,)``; identity without valid pixels.
    """
    bands = pre.shape[0]
    if not valid.any():
        return np.ones(bands, np.float32), np.zeros(bands, np.float32)
    a = pre[:, valid].astype(np.float64)
    b = post[:, valid].astype(np.float64)
    gain = a.std(axis=1) / np.maximum(b.std(axis=1), 1e-6)
    offset = a.mean(axis=1) - gain * b.mean(axis=1)
    return gain.astype(np.float32), offset.astype(np.float32)
