"""registry: bundled models install as package data; a model name picks the variant closest to the scene."""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geounet.errors import ModelError
from geounet.models import registry
from tests.helpers import DEFAULT_MODEL, make_tiny_model, write_scene


def test_bundled_models_are_package_data():
    path = Path(str(importlib.resources.files("geounet.bundled")))
    assert (path / "buildings.safetensors").is_file()
    assert registry.bundled_dir() == path and registry.DEFAULT_MODEL.samefile(DEFAULT_MODEL)
    names = {b.name for b in registry.bundled_models()}
    assert {"buildings", "roads", "landcover"} <= names


@pytest.fixture()
def two_variants(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "bundled"
    folder.mkdir()
    make_tiny_model(folder / "huts.safetensors", 0.15)
    make_tiny_model(folder / "huts_satellite.safetensors", 0.5)
    shutil.copy(DEFAULT_MODEL, folder / "other.safetensors")
    monkeypatch.setattr(registry, "bundled_dir", lambda: folder)
    return folder


@pytest.mark.parametrize(
    "res,variant",
    [
        (0.05, "huts"),
        (0.15, "huts"),
        (0.27, "huts"),
        (0.28, "huts_satellite"),
        (0.6, "huts_satellite"),
        (30.0, "huts_satellite"),
        (None, "huts"),
    ],
)
def test_the_variant_closest_on_a_log_scale_is_picked(two_variants, res, variant):
    assert registry.pick_variant("huts", res).variant == variant  # 0.15 * 0.5 = 0.274^2: the geometric midpoint


def test_unknown_names_list_the_bundled_ones(two_variants):
    with pytest.raises(ModelError, match=r"roofs: not a model file, nor a bundled model \(huts, other\)"):
        registry.pick_variant("roofs", 0.5)
    assert registry.is_model_name("huts") and not registry.is_model_name("m.safetensors")
    assert not registry.is_model_name(str(DEFAULT_MODEL)) and not registry.is_model_name("models/huts")


def test_predict_by_name_uses_each_scenes_variant_and_says_so(two_variants, tmp_path, caplog):
    import json
    import logging

    from geounet.engine.predict import predict_batch
    from geounet.engine.settings import PredictSettings

    fine = write_scene(tmp_path / "fine.tif", np.full((3, 128, 128), 90, np.uint8), res=0.15)
    coarse = write_scene(tmp_path / "coarse.tif", np.full((3, 128, 128), 90, np.uint8), res=0.6)
    with caplog.at_level(logging.INFO, logger="geounet"):
        reports = predict_batch(
            [fine, coarse], tmp_path / "out", "huts", PredictSettings(quiet=True, vector=False, precision="fp32")
        )
    assert all(r.ok for r in reports), reports
    for stem, variant in (("fine", "huts"), ("coarse", "huts_satellite")):
        model = json.loads((tmp_path / "out" / stem / "run.json").read_text())["model"]
        assert model["requested"] == "huts" and Path(model["path"]).stem == variant
    assert "coarse.tif: model huts: variant huts_satellite (0.5 m/px) for a 0.6 m/px scene" in caplog.text


def test_models_lists_a_variants_decision_weights(two_variants):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from geounet.cli.main import app
    from geounet.models.card import CARD_KEY, read_card

    path = two_variants / "huts_satellite.safetensors"
    card = read_card(path)
    card.decision_weights = {"building": 3.0}
    with safe_open(str(path), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={CARD_KEY: card.to_json()})
    output = CliRunner().invoke(app, ["models"]).output
    [line] = [x for x in output.splitlines() if "decision" in x]
    assert line.strip() == "decision:   building x3 (--decision-weight overrides)"
    assert output.index("huts_satellite") < output.index("decision:")
