"""A damage head trained from damage-labelled buildings replaces the fixed thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from geounet.compute.change import GRADES
from geounet.cli.main import app
from geounet.damage.run import DamageSettings, run_damage
from geounet.damage.head import fit_head, load_head, save_head
from geounet.errors import GeounetError
from tests.helpers import DEFAULT_MODEL, make_tiny_model
from tests.damage.test_run import ERASED, SETTINGS, _footprints, pair  # noqa: F401 - pair is a fixture


def test_fit_head_learns_separable_grades_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    score = rng.uniform(0, 1, 400)
    y = np.digitize(score, [0.25, 0.5, 0.75])  # the grade follows the first feature
    x = np.column_stack([score, rng.uniform(0, 1, 400), rng.uniform(0, 1, 400), rng.uniform(0, 1, 400)])
    head = fit_head(x, y)
    idx, sev = head.predict(x)
    assert (idx == y).mean() > 0.9
    assert np.corrcoef(sev, score)[0, 1] > 0.9 and ((sev >= 0) & (sev <= 1)).all()
    save_head(tmp_path / "head.safetensors", head)
    again = load_head(tmp_path / "head.safetensors")
    assert np.allclose(again.probabilities(x), head.probabilities(x))
    with pytest.raises(ValueError, match="two grades"):
        fit_head(x[:5], np.zeros(5, int))


def test_a_model_file_is_not_a_damage_head():
    with pytest.raises(GeounetError, match="not a geounet damage head"):
        load_head(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def labelled_pair(pair):
    """test_damage's synthetic pair, its footprints labelled: the erased ones destroyed."""
    d = pair
    labels = _footprints()
    labels["subtype"] = ["destroyed" if k in ERASED else "no-damage" for k in range(len(labels))]
    labels.to_file(d / "labels.geojson")
    if not (d / "tiny.safetensors").exists():
        make_tiny_model(d / "tiny.safetensors")
    return d


def test_train_a_head_with_geounet_train_and_grade_with_it(labelled_pair, tmp_path):
    d = labelled_pair
    pair = {"pre": str(d / "pre.tif"), "post": str(d / "post.tif"), "labels": str(d / "labels.geojson")}
    cfg = {"task": "damage_head", "output": str(tmp_path / "head.safetensors"), "model": str(d / "tiny.safetensors"),
           "damage_field": "subtype", "data": {"train": [pair], "val": [pair]},
           "damage": {k: v for k, v in SETTINGS.items()}}
    (tmp_path / "head.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", str(tmp_path / "head.yaml")])
    assert res.exit_code == 0, res.output
    assert "validation accuracy 1.000" in res.output
    # Grade with the head; its thresholds are set so that the fixed rule would call everything destroyed.
    settings = DamageSettings(**(SETTINGS | {"thresholds": [0.0, 0.0, 0.0], "head": str(tmp_path / "head.safetensors")}))
    run = run_damage([d / "pre.tif"], [d / "post.tif"], tmp_path / "out", d / "labels.geojson", d / "tiny.safetensors",
                     settings)
    import geopandas as gpd

    out = gpd.read_file(tmp_path / "out" / "damage.gpkg", layer="buildings").sort_values("footprint_id")
    expected = ["destroyed" if k in ERASED else "no-damage" for k in range(len(out))]
    assert out.damage.tolist() == expected
    assert (out.damage_score[out.damage == "destroyed"] > 0.5).all() and (out.damage_score[out.damage == "no-damage"] < 0.5).all()
    assert run["method"]["grades"]["damage_head"].endswith("head.safetensors")
    assert json.loads((tmp_path / "out" / "run.json").read_text())["buildings"]["per_grade"]["destroyed"] == len(ERASED)


def test_head_config_errors_are_reported_together(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({
        "task": "damage_head", "outptu": "x", "model": "missing.safetensors",
        "data": {"train": [{"pre": "a.tif", "post": "b.tif", "labels": "c.geojson"}]},
        "value_map": {"1": "wrecked"},
    }))
    res = CliRunner().invoke(app, ["train", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "unknown config key 'outptu' (did you mean 'output'?)" in line
    assert "a.tif: file not found" in line and "data.val: no pre/post/labels pairs" in line
    assert "missing.safetensors: buildings model file not found" in line and "'wrecked'" in line
    assert len(line.splitlines()) == 1
