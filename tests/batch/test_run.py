"""``geounet run``: idempotent batches, a bad scene isolated, outputs, reserved names, the damage task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import geounet.damage.run as damage
from geounet.batch.config import load_config
from geounet.batch.run import run_pipeline
from geounet.cli.main import app
from geounet.errors import Interrupted
from geounet.io.folders import output_dir_for
from geounet.schema import ConfigError
from tests.helpers import DEMO_SCENE

OUTPUTS = ("scores.tif", "classes.tif", "features.gpkg", "run.json", "item.json", "quicklook.png")


def test_batch_twice_second_run_skips_all_and_corrupt_scene_is_isolated(
    scenes, tiny_model, clean, tmp_path, write_config, assert_complete
):
    cfg = write_config(tmp_path / "p.yaml", tiny_model, list(scenes.values()), clean)  # reuse clean's outputs
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(cfg)])
    assert res.exit_code == 1, res.output  # the corrupt scene failed ...
    good = [k for k in scenes if k != "corrupt"]
    assert f"{len(good)} skipped (up to date)" in res.output and "1 failed" in res.output
    assert f"error: {scenes['corrupt']}: " in res.output and "corrupt" in res.output
    runs = sorted((clean / "_runs").glob("*.json"))
    summary = json.loads(runs[-1].read_text())
    assert summary["counts"] == {"done": 0, "skipped_up_to_date": len(good), "skipped_locked": 0, "failed": 1}
    assert runs[-1].with_suffix(".log").is_file()
    for k in good:  # ... and the others are there, complete
        assert_complete(clean / scenes[k].stem)
    assert not (clean / "corrupt").exists()


def test_outputs_have_quicklook_and_stac_item(scenes, clean):
    folder = clean / scenes["a"].stem
    run = json.loads((folder / "run.json").read_text())
    assert {"quicklook.png", "item.json"} <= set(run["outputs"])
    item = json.loads((folder / "item.json").read_text())
    assert item["id"] == scenes["a"].stem and item["properties"]["proj:code"] == "EPSG:3857"
    assert {a["href"] for a in item["assets"].values()} == {f"./{n}" for n in OUTPUTS if n != "item.json"}


def test_output_names_cannot_escape_or_hide(tmp_path, tiny_model, write_config):
    out = tmp_path / "maps"
    for name in ("../../etc/passwd.tif", "a/../../x.tif", ".hidden.tif", "..tif", "/abs/..\\..\\y.tif"):
        d = output_dir_for(name, out)
        assert d.parent == out and not d.name.startswith(".") and d.name not in ("", ".", "..")
    reserved = shutil.copy(DEMO_SCENE, tmp_path / "_runs.tif")
    cfg = write_config(tmp_path / "p.yaml", tiny_model, [reserved], out)
    summary = run_pipeline(load_config(cfg), quiet=True)
    (r,) = summary.scenes
    assert r.status == "failed" and "reserved" in r.reason
    assert not list((out / "_runs").glob("*.tif"))


def test_damage_config_is_dispatched(damage_config: Path, monkeypatch):
    c = load_config(damage_config)
    seen = {}
    monkeypatch.setattr(damage, "run_damage", lambda *a: seen.setdefault("args", a) and {})
    summary = run_pipeline(c, quiet=True)
    assert summary.ok and summary.scenes[0].status == "done"
    folder = damage_config.parent
    assert seen["args"][:3] == ([folder / "pre.tif"], [folder / "post.tif"], folder / "o")
    assert seen["args"][5].device == "cpu"


def test_a_model_name_picks_each_scenes_variant_and_reruns_skip(tmp_path, monkeypatch, write_config):
    """model: NAME in a pipeline config: each scene gets the variant closest to its resolution, then reruns skip it."""
    import numpy as np

    from geounet.models import registry
    from tests.helpers import make_tiny_model, write_scene

    bundled = tmp_path / "bundled"
    bundled.mkdir()
    make_tiny_model(bundled / "huts.safetensors", 0.15)
    make_tiny_model(bundled / "huts_satellite.safetensors", 0.5)
    monkeypatch.setattr(registry, "bundled_dir", lambda: bundled)
    fine = write_scene(tmp_path / "fine.tif", np.full((3, 96, 96), 90, np.uint8), res=0.15)
    coarse = write_scene(tmp_path / "coarse.tif", np.full((3, 96, 96), 90, np.uint8), res=0.6)
    cfg_path = write_config(tmp_path / "p.yaml", "huts", [fine, coarse], tmp_path / "out", vector=False)
    cfg = load_config(cfg_path)
    assert cfg.model == "huts"
    first = run_pipeline(cfg, quiet=True)
    assert [r.status for r in first.scenes] == ["done", "done"], first.scenes
    for stem, variant in (("fine", "huts"), ("coarse", "huts_satellite")):
        model = json.loads((tmp_path / "out" / stem / "run.json").read_text())["model"]
        assert Path(model["path"]).stem == variant and model["requested"] == "huts"
    second = run_pipeline(cfg, quiet=True)
    assert [r.status for r in second.scenes] == ["skipped_up_to_date"] * 2
    (tmp_path / "bad.yaml").write_text(cfg_path.read_text().replace('"huts"', '"hutz"'))
    with pytest.raises(ConfigError, match=r"model: hutz: not a model file, nor a bundled model \(huts\)"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    "stop, reason", [(KeyboardInterrupt, "interrupted (Ctrl-C)"), (Interrupted, "interrupted (SIGTERM)")]
)
def test_an_interrupted_run_still_writes_its_summary(
    stop, reason, scenes, tiny_model, tmp_path, write_config, monkeypatch
):
    """Ctrl-C / SIGTERM mid-scene: that scene is recorded as interrupted, the rest as not run, and the exception goes on."""
    import geounet.batch.run as batch_run

    def interrupted(*a, **k):
        raise stop()

    monkeypatch.setattr(batch_run, "predict_scene", interrupted)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "p.yaml", tiny_model, [scenes["a"], scenes["b"]], out, vector=False)
    with pytest.raises(stop):
        run_pipeline(load_config(cfg), quiet=True)
    (summary_file,) = (out / "_runs").glob("*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["interrupted"] == reason
    assert [(s["status"], s["reason"]) for s in summary["scenes"]] == [
        ("failed", reason),
        ("failed", f"not run: {reason}"),
    ]
    assert summary["counts"]["failed"] == 2


def test_a_batch_frees_its_model_after_the_last_scene_only(scenes, tiny_model, tmp_path, write_config, monkeypatch):
    """As ``geounet predict``: without vectors the model stays between scenes and is freed once the
    last one's chunks are done (with vectors on this process's cores: after each scene's chunks)."""
    from geounet.engine import executors
    from geounet.models import registry

    released: list[int] = []
    real = registry.release_models
    monkeypatch.setattr(executors, "release_models", lambda: released.append(real()) or released[-1])
    cfg = write_config(
        tmp_path / "p.yaml", tiny_model, [scenes["a"], scenes["b"]], tmp_path / "out", vector={"enabled": False}
    )
    summary = run_pipeline(load_config(cfg), quiet=True)
    assert summary.ok, summary.lines()
    assert released == [1] and not registry._CACHE
