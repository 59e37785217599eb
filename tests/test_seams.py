"""Seams: tiled prediction with blending agrees with one whole-scene forward pass (real model, real scene)."""

from __future__ import annotations

import numpy as np
import rasterio

from geounet.pipeline import PredictSettings, predict_batch
from tests.conftest import DEMO_SCENE, SHARED


def _probabilities(scene, out, model, tile, overlap):
    predict_batch([scene], out, model, PredictSettings(tile_size=tile, overlap=overlap, quiet=True))
    stem = scene.name.split(".")[0]
    with rasterio.open(out / stem / "scores.tif") as s, rasterio.open(out / stem / "classes.tif") as c:
        scores, classes = s.read(), c.read(1)
    valid = classes != 255
    return scores[:, valid].astype(np.float64) / 254.0, classes[valid]


def test_tiled_prediction_matches_whole_scene_pass(default_model, tmp_path):
    scenes = [DEMO_SCENE] + ([SHARED / "kampala/kampala_b.tif"] if (SHARED / "kampala/kampala_b.tif").exists() else [])
    for scene in scenes:
        # The model runs at 0.15 m: the 0.075 m scene becomes a 384 (demo) or 508 px working grid.
        # One tile of 544 px covers it whole: a single forward pass over the full scene.
        whole_p, whole_c = _probabilities(scene, tmp_path / "whole", default_model, 544, 0)
        tiled_p, tiled_c = _probabilities(scene, tmp_path / "tiled", default_model, 256, 64)
        agree = (whole_c == tiled_c).mean()
        mad = np.abs(whole_p - tiled_p).mean()
        print(f"{scene.name}: argmax agreement {agree:.4%}, mean |dp| {mad:.4f}")
        assert agree >= 0.995, (scene, agree)
        assert mad <= 0.005, (scene, mad)
