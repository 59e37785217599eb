"""Training a damage head (geounet train, task: damage_head) and grading with it; its config's checks."""

from __future__ import annotations

import json

import geopandas as gpd
import pytest
import yaml
from typer.testing import CliRunner

from geounet.cli.main import app
from geounet.damage.head_training import is_head_config, load_head_config
from geounet.damage.run import run_damage
from geounet.schema import ConfigError


def test_train_a_head_with_geounet_train_and_grade_with_it(labelled_pair, tmp_path):
    d = labelled_pair.folder
    pair = {"pre": str(d / "pre.tif"), "post": str(d / "post.tif"), "labels": str(d / "labels.geojson")}
    cfg = {
        "task": "damage_head",
        "output": str(tmp_path / "head.safetensors"),
        "model": str(labelled_pair.model),
        "damage_field": "subtype",
        "data": {"train": [pair], "val": [pair]},
        "damage": labelled_pair.settings_dict,
    }
    (tmp_path / "head.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", str(tmp_path / "head.yaml")])
    assert res.exit_code == 0, res.output
    assert "validation accuracy 1.000" in res.output
    # Grade with the head; its thresholds are set so that the fixed rule would call everything destroyed.
    settings = labelled_pair.settings(thresholds=[0.0, 0.0, 0.0], head=str(tmp_path / "head.safetensors"))
    run = run_damage(
        [d / "pre.tif"], [d / "post.tif"], tmp_path / "out", d / "labels.geojson", labelled_pair.model, settings
    )
    out = gpd.read_file(tmp_path / "out" / "damage.gpkg", layer="buildings").sort_values("footprint_id")
    assert out.damage.tolist() == [labelled_pair.expected(k) for k in range(len(out))]
    assert (out.damage_score[out.damage == "destroyed"] > 0.5).all()
    assert (out.damage_score[out.damage == "no-damage"] < 0.5).all()
    assert run["method"]["grades"]["damage_head"].endswith("head.safetensors")
    per_grade = json.loads((tmp_path / "out" / "run.json").read_text())["buildings"]["per_grade"]
    assert per_grade["destroyed"] == len(labelled_pair.erased)


def test_head_config_errors_are_reported_together(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "damage_head",
                "outptu": "x",
                "model": "missing.safetensors",
                "data": {"train": [{"pre": "a.tif", "post": "b.tif", "labels": "c.geojson"}]},
                "value_map": {"1": "wrecked"},
                "damage": {"halo": "x"},
            }
        )
    )
    res = CliRunner().invoke(app, ["train", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "unknown key 'outptu' (did you mean 'output'?)" in line
    assert "a.tif: file not found" in line and "data.val: no pre/post/labels pairs" in line
    assert "missing.safetensors: buildings model file not found" in line and "'wrecked'" in line
    assert "damage.halo: expected an integer, got str 'x'" in line
    assert len(line.splitlines()) == 1


def test_head_config_paths_are_relative_to_the_file_and_types_are_checked(labelled_pair, tmp_path):
    d = labelled_pair.folder
    pre, post, labels = str(d / "pre.tif"), str(d / "post.tif"), str(d / "labels.geojson")
    (tmp_path / "ok.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "damage_head",
                "output": "heads/h.safetensors",
                "model": str(labelled_pair.model),
                "data": {
                    "train": [{"pre": pre, "post": [post], "labels": labels}],
                    "val": [{"pre": [pre], "post": post, "labels": labels}],
                },
            }
        )
    )
    assert is_head_config(tmp_path / "ok.yaml") and not is_head_config(tmp_path / "missing.yaml")
    cfg = load_head_config(tmp_path / "ok.yaml")
    assert cfg.output == tmp_path / "heads" / "h.safetensors"
    assert cfg.train[0].pre == [d / "pre.tif"] and cfg.val[0].post == [d / "post.tif"]  # one path or a list
    assert load_head_config(tmp_path / "ok.yaml", output="other.safetensors").output == tmp_path / "other.safetensors"
    (tmp_path / "types.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "damage_head",
                "output": "h.safetensors",
                "model": str(labelled_pair.model),
                "l2": "small",
                "data": {"train": [{"pre": 3, "post": "b.tif", "labels": "c.geojson"}], "test": []},
            }
        )
    )
    with pytest.raises(ConfigError) as info:
        load_head_config(tmp_path / "types.yaml")
    assert "l2: expected a number, got str 'small'" in info.value.problems
    assert any(p.startswith("data: unknown key 'test'") for p in info.value.problems)
    assert any(p.startswith("data.train[0].pre: expected") for p in info.value.problems)
