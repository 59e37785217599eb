"""Seams: tiled prediction with blending agrees with one whole-scene forward pass (real model, real scene).

The reference is a single tile covering the whole working grid, with the same 32 px of
mirrored context past the scene border that the tiled run gets (``--overlap 64``), so
the comparison measures the tiling and blending, not the border handling.
"""

from __future__ import annotations

import numpy as np
import rasterio

from geounet.engine.predict import predict_batch
from geounet.engine.settings import PredictSettings
from geounet.io.scene import open_scene, working_grid
from geounet.models.card import read_card
from tests.helpers import DEMO_SCENE, shared_file


def _probabilities(scene, out, model, tile, overlap):
    # fp32: tiling and blending are what is measured (auto may take the int8 version; fp32 figures:
    # the model's card)
    settings = PredictSettings(tile_size=tile, overlap=overlap, quiet=True, vector=False, precision="fp32")
    predict_batch([scene], out, model, settings)
    stem = scene.name.split(".")[0]
    with rasterio.open(out / stem / "scores.tif") as s, rasterio.open(out / stem / "classes.tif") as c:
        scores, classes = s.read(), c.read(1)
    valid = classes != 255
    return scores[:, valid].astype(np.float64) / 254.0, classes[valid]


def _agreement(scene, out, model, tile):
    card = read_card(model)
    with open_scene(scene) as src:
        g = working_grid(src, card)
    whole_tile = -(-(max(g.width, g.height) + 64) // 32) * 32  # one tile: the whole grid plus the 64 px overlap
    whole_p, whole_c = _probabilities(scene, out / "whole", model, whole_tile, 64)
    tiled_p, tiled_c = _probabilities(scene, out / f"tiled{tile}", model, tile, 64)
    agree, mad = (whole_c == tiled_c).mean(), np.abs(whole_p - tiled_p).mean()
    print(f"{scene.name}, tiles {tile}/64: argmax agreement {agree:.4%}, mean |dp| {mad:.4f}")
    return agree, mad


def test_256px_tiles_match_the_whole_scene_pass_on_the_demo_scene(default_model, tmp_path):
    agree, mad = _agreement(DEMO_SCENE, tmp_path, default_model, 256)
    assert agree >= 0.995 and mad <= 0.005


def test_default_tiles_match_the_whole_scene_pass_on_kampala_b(default_model, tmp_path):
    """kampala_b at the model's own tile size (512/64). At 256/64 this model reaches
    99.3% / 0.0073 there (printed), short of 99.5% / 0.005: see data/models/buildings.md."""
    scene = shared_file("kampala/kampala_b.tif")
    _agreement(scene, tmp_path, default_model, 256)
    agree, mad = _agreement(scene, tmp_path, default_model, read_card(default_model).tile_size)
    assert agree >= 0.995 and mad <= 0.005
