"""Pipeline configs: every problem reported at once in the schema's words, overrides, watch folders, damage."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geounet.batch.config import PostprocessSpec, RulesOverride, load_config
from geounet.batch.inputs import discover_inputs
from geounet.cli.main import app
from geounet.compute.postprocess import DEFAULT_RULES, ClassRules
from geounet.schema import ConfigError
from tests.helpers import DEMO_SCENE


def test_config_errors_are_all_reported_before_any_work(tmp_path, tiny_model, write_config):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "model: missing.safetensors\n"
        "inputs: [nowhere.tif]\n"
        "out: out\n"
        "tilling: {tile_size: 256}\n"
        "workers: two\n"
        "vector: {enabled: true, blok: 512}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    problems = info.value.problems
    assert "unknown key 'tilling' (did you mean 'tiling'?)" in problems
    assert any(p.startswith("workers: expected an integer") and p.endswith("got str 'two'") for p in problems)
    assert "vector: unknown key 'blok' (did you mean 'block'?)" in problems
    assert any(p.startswith("model: ") and "model file not found" in p for p in problems)
    assert any(p.startswith("inputs: ") and p.endswith("nowhere.tif: not found") for p in problems)
    res = CliRunner().invoke(app, ["run", str(cfg)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == len(problems) >= 5 and all(f"error: {cfg}: " in ln for ln in lines)
    assert not (tmp_path / "out" / "_runs").exists()  # nothing ran

    good = write_config(tmp_path / "good.yaml", tiny_model, [DEMO_SCENE], tmp_path / "o", tiling={"overlap": 33})
    with pytest.raises(ConfigError) as info:
        load_config(good)
    assert info.value.problems == ["tiling.overlap: must be even and smaller than the tile size, got 33"]


def test_value_problems_name_the_dotted_key(tmp_path, tiny_model, write_config):
    cfg = write_config(
        tmp_path / "p.yaml",
        tiny_model,
        [DEMO_SCENE],
        tmp_path / "o",
        device="gpu",
        precision="fp8",
        tiling={"tile_size": 100, "batch_size": 0},
        footprints="f.gpkg",
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert sorted(info.value.problems) == sorted(
        [
            "precision: expected one of auto, fp32, bf16, fp16, int8, got str 'fp8'",
            "device: expected auto, cpu, cuda or cuda:N, got str 'gpu'",
            "tiling.tile_size: must be a multiple of 32 (the U-Net's stride), got 100",
            "tiling.batch_size: must be at least 1, got 0",
            "footprints: only for task: damage",
        ]
    )


def test_a_section_with_a_typo_still_gets_its_other_checks(tmp_path, tiny_model, write_config):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"model: {tiny_model}\nout: o\n"
        "inputs: {list_file: scenes.txt, watch: {folder: incoming, patern: '*.tif'}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.problems == [
        "inputs.watch: unknown key 'patern' (did you mean 'pattern'?)",
        f"inputs.list_file: {tmp_path / 'scenes.txt'}: No such file or directory",
        f"inputs.watch: {tmp_path / 'incoming'}: folder not found",
    ]


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_pickled_model_is_refused_with_one_line(tmp_path, kind, write_config):
    import pickle

    import torch

    bad = tmp_path / ("m.safetensors" if kind == "pickle" else "m.pt")
    if kind == "pickle":
        bad.write_bytes(pickle.dumps({"w": [1, 2]}))
    else:
        torch.save({"w": torch.zeros(2)}, bad)
    cfg = write_config(tmp_path / "p.yaml", bad, [DEMO_SCENE], tmp_path / "o")
    res = CliRunner().invoke(app, ["run", str(cfg)])
    assert res.exit_code == 2
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert str(bad) in line and "pickle" in line and "refused" in line


def test_inputs_and_out_override_and_watch_folder(tmp_path, tiny_model, scenes):
    cfg = tmp_path / "p.yaml"
    (tmp_path / "watch").mkdir()
    shutil.copy(scenes["a"], tmp_path / "watch" / "old.tif")
    shutil.copy(scenes["b"], tmp_path / "watch" / "fresh.tif")
    os.utime(tmp_path / "watch" / "old.tif", (time.time() - 3600,) * 2)
    (tmp_path / "watch" / "notes.txt").write_text("x")
    cfg.write_text(f"model: {tiny_model}\ninputs: {{watch: {{folder: watch, settle_seconds: 600}}}}\nout: maps\n")
    c = load_config(cfg)
    assert [p.name for p in discover_inputs(c.globs, c.watch)] == ["old.tif"]  # fresh.tif may still be being copied
    assert c.out == tmp_path / "maps"
    c2 = load_config(cfg, inputs=[str(tmp_path / "watch" / "*.tif")], out="elsewhere", cwd=tmp_path)
    found = sorted(p.name for p in discover_inputs(c2.globs, c2.watch))
    assert found == ["fresh.tif", "old.tif"] and c2.out == tmp_path / "elsewhere"


def test_postprocess_overrides_are_checked_and_reach_the_settings(tmp_path, tiny_model, write_config):
    cfg = write_config(
        tmp_path / "p.yaml",
        tiny_model,
        [DEMO_SCENE],
        tmp_path / "o",
        postprocess={"building": {"min_area_m2": 10, "regularize": False}},
    )
    c = load_config(cfg)
    assert c.settings.postprocess == c.postprocess == {"building": {"min_area_m2": 10.0, "regularize": False}}
    bad = write_config(
        tmp_path / "p.yaml",
        tiny_model,
        [DEMO_SCENE],
        tmp_path / "o",
        postprocess={"buildings": {}, "road": {"spur": 3, "min_length_m": "long"}},
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    problems = info.value.problems
    assert len(problems) == 3 and problems[:2] == [
        "postprocess: unknown key 'buildings' (did you mean 'building'?)",
        "postprocess.road: unknown key 'spur' (did you mean 'spur_m'?)",
    ]
    assert problems[2].startswith("postprocess.road.min_length_m: expected a number") and problems[2].endswith("'long'")


def test_postprocess_lengths_and_areas_may_not_be_negative(tmp_path, tiny_model, write_config):
    bad = write_config(
        tmp_path / "p.yaml",
        tiny_model,
        [DEMO_SCENE],
        tmp_path / "o",
        postprocess={"building": {"simplify_m": -0.5, "seed_m": 1.5}, "road": {"min_length_m": -3}},
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.problems == [
        "postprocess.building.simplify_m: expected a number >= 0, got -0.5",
        "postprocess.road.min_length_m: expected a number >= 0, got -3.0",
    ]


def test_postprocess_schema_follows_the_class_rules():
    assert [f.name for f in dataclasses.fields(RulesOverride)] == [f.name for f in dataclasses.fields(ClassRules)]
    assert [f.name for f in dataclasses.fields(PostprocessSpec)] == list(DEFAULT_RULES)


def test_damage_config_is_checked(damage_config: Path):
    damage_config.write_text(damage_config.read_text().replace("halo: 32", "halo: 32, blok: 1"))
    with pytest.raises(ConfigError) as info:
        load_config(damage_config)
    assert info.value.problems == ["damage: unknown key 'blok' (did you mean 'block'?)"]
    damage_config.write_text(damage_config.read_text().replace(", blok: 1", ""))
    c = load_config(damage_config)
    folder = damage_config.parent
    assert c.damage["pre"] == [folder / "pre.tif"] and c.damage["post"] == [folder / "post.tif"]
    assert c.damage["settings"].halo == 32 and c.damage["settings"].device == "cpu"  # top-level device passed on
    with pytest.raises(ConfigError, match="--inputs: not supported for task: damage"):
        load_config(damage_config, inputs=["x.tif"])


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("task", "segmnt", "task: expected one of segment, damage, got str 'segmnt'"),
        ("device", "gpu", "device: expected auto, cpu, cuda or cuda:N, got str 'gpu'"),
        ("precision", "int4", "precision: expected one of auto, fp32, bf16, fp16, int8, got str 'int4'"),
        ("backend", "tensorrt", "backend: expected one of auto, torch, onnx, got str 'tensorrt'"),
        ("tta", "d8", "tta: expected one of none, flip, flips, d4, got str 'd8'"),
        ("vector", {"format": "shp"}, "vector.format: expected one of gpkg, fgb, parquet, got str 'shp'"),
        ("postprocess", {"trees": {}}, "postprocess: unknown key 'trees' (known: building, landcover, road)"),
    ],
)
def test_an_unknown_choice_is_refused_listing_the_valid_ones(key, value, expected, tmp_path, tiny_model, write_config):
    cfg = write_config(tmp_path / "p.yaml", tiny_model, [DEMO_SCENE], tmp_path / "o", **{key: value})
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2
    assert [ln for ln in result.output.splitlines() if ln.startswith("error: ")] == [f"error: {cfg}: {expected}"]


def test_an_unknown_choice_in_the_damage_section_is_refused(tmp_path, tiny_model):
    cfg = tmp_path / "d.yaml"
    cfg.write_text(
        f"task: damage\nmodel: {tiny_model}\nout: {tmp_path / 'o'}\n"
        f"inputs: {{pre: {DEMO_SCENE}, post: {DEMO_SCENE}}}\ndamage: {{precision: int4}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.problems == ["damage.precision: expected one of auto, fp32, bf16, fp16, got str 'int4'"]


def test_area_of_interest_keys_reach_the_settings_and_are_checked(tmp_path, tiny_model, write_config):
    import geopandas as gpd
    import shapely

    box = write_config(tmp_path / "b.yaml", tiny_model, [DEMO_SCENE], tmp_path / "o", bbox=[1, 2, 3, 4])
    s = load_config(box).settings
    assert s.bbox == (1.0, 2.0, 3.0, 4.0) and s.bbox_crs == "EPSG:4326" and s.aoi is None
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:4326").to_file(tmp_path / "aoi.gpkg")
    aoi = write_config(tmp_path / "a.yaml", tiny_model, [DEMO_SCENE], tmp_path / "o", aoi="aoi.gpkg")
    assert load_config(aoi).settings.aoi == str(tmp_path / "aoi.gpkg")
    gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)], crs="EPSG:4326").to_file(tmp_path / "pts.gpkg")
    for extra, expected in (
        ({"aoi": "pts.gpkg"}, f"aoi: {tmp_path / 'pts.gpkg'}: no polygon in it"),
        ({"bbox": [3, 2, 1, 4]}, "bbox: needs minx < maxx and miny < maxy, got [3.0, 2.0, 1.0, 4.0]"),
        ({"bbox": [0, 0, 1, 1], "bbox_crs": "EPSG:nope"}, "bbox_crs: not a CRS: 'EPSG:nope'"),
        ({"bbox": [0, 0, 1, 1], "aoi": "aoi.gpkg"}, "aoi, bbox: give one of them, not both"),
    ):
        bad = write_config(tmp_path / "x.yaml", tiny_model, [DEMO_SCENE], tmp_path / "o", **extra)
        with pytest.raises(ConfigError) as info:
            load_config(bad)
        assert info.value.problems == [expected]


def test_a_segment_config_takes_int8_and_a_damage_config_refuses_it(tmp_path, tiny_model, write_config):
    cfg = write_config(tmp_path / "p.yaml", tiny_model, [DEMO_SCENE], tmp_path / "o", precision="int8")
    assert load_config(cfg).settings.precision == "int8"
    d = tmp_path / "d.yaml"
    d.write_text(
        f"task: damage\nmodel: {tiny_model}\nout: {tmp_path / 'o2'}\n"
        f"inputs: {{pre: {DEMO_SCENE}, post: {DEMO_SCENE}}}\nprecision: int8\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(d)
    assert info.value.problems == ["damage.precision: expected one of auto, fp32, bf16, fp16, got str 'int8'"]


def test_vector_while_predicting_reaches_the_settings_and_is_checked(tmp_path, tiny_model, write_config):
    base = (tiny_model, [DEMO_SCENE], tmp_path / "o")
    assert load_config(write_config(tmp_path / "a.yaml", *base)).settings.vector_while_predicting is None
    cfg = write_config(tmp_path / "b.yaml", *base, vector={"while_predicting": False})
    assert load_config(cfg).settings.vector_while_predicting is False
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "c.yaml", *base, vector={"while_predicting": "later"}))
    [problem] = info.value.problems
    assert problem.startswith("vector.while_predicting: expected") and problem.endswith("'later'")


def test_decision_weights_reach_the_settings_and_are_checked_against_the_model(tmp_path, tiny_model, write_config):
    base = (tiny_model, [DEMO_SCENE], tmp_path / "o")
    assert load_config(write_config(tmp_path / "a.yaml", *base)).settings.decision_weights is None
    cfg = write_config(tmp_path / "b.yaml", *base, decision_weights={"building": 3})
    assert load_config(cfg).settings.decision_weights == {"building": 3.0}
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "c.yaml", *base, decision_weights={"roof": 3, "building": "x"}))
    problems = info.value.problems
    assert problems and problems[0].startswith("decision_weights")
    assert any("expected a number" in p or "unknown class 'roof'" in p for p in problems)
