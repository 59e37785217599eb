"""``geounet run``: idempotent batches, a bad scene isolated, outputs, reserved names, the damage task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

import geounet.damage.run as damage
from geounet.batch.config import load_config
from geounet.batch.run import run_pipeline
from geounet.cli.main import app
from geounet.io.folders import output_dir_for
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
