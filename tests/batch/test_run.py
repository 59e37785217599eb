"""runner / ``geounet run``: configs, idempotent reruns, SIGKILL recovery, concurrent runs, bad scenes.

Scenes are real pixels: 256x256 crops of the Kampala demo scene (and of kampala_b when
../shared/data is there), run with the tiny random model (mechanics, not accuracy).
The SIGKILL and concurrency tests start real ``geounet run`` processes, all at once
(``killed_runs``), to keep the wall time down on a small machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.windows import Window
from typer.testing import CliRunner

from tests.helpers import DEMO_SCENE, REPO, SHARED
from geounet.cli.main import app
from geounet.io.folders import output_dir_for
from geounet.batch.run import ConfigError, SceneLock, load_config, run_pipeline, up_to_date, requested_settings

OUTPUTS = ("scores.tif", "classes.tif", "features.gpkg", "run.json", "item.json", "quicklook.png")

# Imports geounet (and torch) once, then forks one real child process per job, each running
# geounet's CLI, with a SIGKILL planted at one point of the pipeline (job's kill_at).
DRIVER = r'''
import json, os, shutil, signal, sys
import geounet.engine.vector_stage as F
import geounet.engine.predict as P
from geounet.cli.main import main


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def plant(point):
    if point == "stitch":  # mid-scene: first chunk stitched into the stage-1 raster
        add = P._Stitcher.add
        P._Stitcher.add = lambda self, r: (add(self, r), die())
    elif point == "gpkg":  # GeoPackage half written
        flush = F._LayerWriter.flush
        F._LayerWriter.flush = lambda self, *a, **k: (flush(self, *a, **k), die())
    elif point == "swap":  # previous outputs moved aside, new ones not yet moved in
        replace = os.replace
        os.replace = lambda s, d: (replace(s, d), die() if ".old-" in str(d) else None)[0]
    elif point == "cleanup":  # new outputs in place, previous ones not yet removed
        rmtree = shutil.rmtree
        shutil.rmtree = lambda p, *a, **k: die() if ".old-" in str(p) else rmtree(p, *a, **k)


jobs, pid_file = json.loads(sys.argv[1]), sys.argv[2]
pids = {}
for name, point, args in jobs:
    pid = os.fork()
    if pid == 0:
        plant(point)
        sys.argv = ["geounet"] + args
        try:
            main()
        except SystemExit as exc:
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        os._exit(0)
    pids[name] = pid
with open(pid_file + ".tmp", "w") as f:
    json.dump(pids, f)
os.replace(pid_file + ".tmp", pid_file)
print(json.dumps({name: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for name, pid in pids.items()}))
'''


def crop(src_path: Path, dst: Path, row: int, col: int, size: int = 256) -> Path:
    """A real-pixel crop (with its mask) of a scene."""
    with rasterio.open(src_path) as src:
        win = Window(col, row, size, size)
        data, mask = src.read(window=win), src.dataset_mask(window=win)
        prof = src.profile | {"width": size, "height": size, "transform": src.window_transform(win),
                              "driver": "GTiff", "tiled": False}
        prof.pop("blockxsize", None), prof.pop("blockysize", None)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(dst, "w", **prof) as out:
        out.write(data)
        out.write_mask(mask)
    return dst


def write_config(path: Path, model: Path, inputs: list, out: Path, **extra) -> Path:
    cfg = {"model": str(model), "inputs": [str(p) for p in inputs], "out": str(out),
           "tiling": {"batch_size": 8}, "workers": 1, **extra}
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def fingerprint(folder: Path) -> dict:
    """What must be equal between two runs: raster arrays, feature counts and areas (not timestamps)."""
    out = {}
    for name in ("scores.tif", "classes.tif"):
        with rasterio.open(folder / name) as ds:
            out[name] = (ds.read().tobytes(), ds.crs.to_string(), tuple(ds.transform))
    for layer, _ in pyogrio.list_layers(folder / "features.gpkg"):
        if layer == "layer_styles":
            continue
        df = pyogrio.read_dataframe(folder / "features.gpkg", layer=layer)
        out[layer] = (len(df), round(float(df.geometry.area.sum()), 6))
    return out


def assert_complete(folder: Path) -> None:
    for name in OUTPUTS:
        assert (folder / name).is_file(), name
    fingerprint(folder)  # every file opens and reads fully
    json.loads((folder / "item.json").read_text())


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("scenes")
    out = {"a": crop(DEMO_SCENE, d / "kampala_a256.tif", 0, 0), "b": crop(DEMO_SCENE, d / "kampala_b256.tif", 400, 300)}
    kb = SHARED / "kampala" / "kampala_b.tif"
    if kb.exists():
        out["c"] = crop(kb, d / "kampala_shared256.tif", 300, 300)
    bad = d / "corrupt.tif"
    bad.write_bytes(out["a"].read_bytes()[: out["a"].stat().st_size // 3])  # truncated GeoTIFF
    out["corrupt"] = bad
    return out


@pytest.fixture(scope="module")
def clean(scenes, tiny_model, tmp_path_factory) -> Path:
    """A clean, uninterrupted run over the good scenes: the reference outputs."""
    d = tmp_path_factory.mktemp("clean")
    cfg = write_config(d / "p.yaml", tiny_model, [p for k, p in scenes.items() if k != "corrupt"], d / "out")
    summary = run_pipeline(load_config(cfg), quiet=True)
    assert summary.ok, summary.lines()
    return d / "out"


@pytest.fixture(scope="module")
def killed_runs(scenes, tiny_model, clean, tmp_path_factory) -> dict:
    """Real processes, forked at once from one that imported geounet: four planted SIGKILLs, one SIGKILL
    from outside (mid-scene), two concurrent runs of one config."""
    d = tmp_path_factory.mktemp("procs")
    driver = d / "driver.py"
    driver.write_text(DRIVER)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    jobs, outs = [], {}
    for point in ("stitch", "gpkg", "swap", "cleanup", "outside"):
        out = d / point / "out"
        out.mkdir(parents=True)
        if point in ("swap", "cleanup"):  # previous outputs to be replaced (--force)
            shutil.copytree(clean / scenes["a"].stem, out / scenes["a"].stem)
        cfg = write_config(d / point / "p.yaml", tiny_model, [scenes["a"]], out)
        jobs.append((point, point, [str(cfg), "--quiet"] + (["--force"] if point in ("swap", "cleanup") else [])))
        outs[point] = (out, cfg)
    conc_out = d / "concurrent" / "out"
    conc_cfg = write_config(d / "concurrent.yaml", tiny_model, [scenes["a"], scenes["b"]], conc_out)
    jobs += [(f"concurrent{i}", None, [str(conc_cfg), "--quiet"]) for i in range(2)]
    jobs = [(name, point, ["run", *args]) for name, point, args in jobs]
    pid_file = d / "pids.json"
    zygote = subprocess.Popen([sys.executable, str(driver), json.dumps(jobs), str(pid_file)], env=env,
                              stdout=subprocess.PIPE, text=True)

    # the outside kill: SIGKILL as soon as the scene's partial folder exists (mid-scene)
    out = outs["outside"][0]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not pid_file.exists():
        time.sleep(0.05)
    pid = json.loads(pid_file.read_text())["outside"]
    while time.monotonic() < deadline and not list(out.glob(f".{scenes['a'].stem}.partial-*")):
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    codes = json.loads(zygote.communicate(timeout=600)[0].strip().splitlines()[-1])
    results = {point: (codes[point], "", *outs[point]) for point in outs}
    results["concurrent"] = [(codes[f"concurrent{i}"], "") for i in range(2)] + [conc_out]
    return results


# ---------------------------------------------------------------- batches and idempotency


def test_batch_twice_second_run_skips_all_and_corrupt_scene_is_isolated(scenes, tiny_model, clean, tmp_path):
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


def test_up_to_date_notices_input_model_settings_and_missing_outputs(scenes, tiny_model, clean, tmp_path):
    from geounet.models.card import file_sha256, read_card
    from geounet.engine.settings import PredictSettings

    card = read_card(tiny_model)
    sha = file_sha256(tiny_model)
    folder = clean / scenes["a"].stem
    req = requested_settings(PredictSettings(), card)
    assert up_to_date(folder, scenes["a"], sha, req) == (True, "")
    copy = tmp_path / scenes["a"].name  # same bytes, new mtime: hashed, still up to date
    shutil.copy(scenes["a"], copy)
    assert up_to_date(folder, copy, sha, req, hash_inputs=True) == (True, "")
    with open(copy, "r+b") as f:  # one byte changed, same size
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert up_to_date(folder, copy, sha, req)[1] == "input changed (sha256)"
    assert up_to_date(folder, scenes["a"], "0" * 64, req)[1] == "model file changed"
    req2 = requested_settings(PredictSettings(overlap=16), card)
    assert up_to_date(folder, scenes["a"], sha, req2)[1] == "settings changed: overlap 32 -> 16"
    recorded = json.loads((folder / "run.json").read_text())["settings"]["precision"]  # auto settles per CPU
    other = "fp32" if recorded != "fp32" else "bf16"
    req3 = requested_settings(PredictSettings(precision=other), card)
    assert f"precision {recorded!r} -> {other!r}" in up_to_date(folder, scenes["a"], sha, req3)[1]
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    (partial / "features.gpkg").unlink()
    assert up_to_date(partial, scenes["a"], sha, req)[1] == "previous outputs incomplete (features.gpkg missing)"


def test_locked_scene_is_skipped_and_says_by_whom(scenes, tiny_model, clean, tmp_path):
    cfg = write_config(tmp_path / "p.yaml", tiny_model, [scenes["a"]], clean)
    with SceneLock(clean / f".{scenes['a'].stem}.lock") as lock:
        assert lock.acquire()
        summary = run_pipeline(load_config(cfg), quiet=True)
    (r,) = summary.scenes
    assert r.status == "skipped_locked" and r.reason == f"locked by another run (pid {os.getpid()})"
    assert summary.ok


def test_outputs_have_quicklook_and_stac_item(scenes, clean):
    folder = clean / scenes["a"].stem
    run = json.loads((folder / "run.json").read_text())
    assert {"quicklook.png", "item.json"} <= set(run["outputs"])
    item = json.loads((folder / "item.json").read_text())
    assert item["id"] == scenes["a"].stem and item["properties"]["proj:code"] == "EPSG:3857"
    assert {a["href"] for a in item["assets"].values()} == {f"./{n}" for n in OUTPUTS if n != "item.json"}


# ---------------------------------------------------------------- crashes and concurrency


@pytest.mark.parametrize("point", ["stitch", "gpkg", "swap", "cleanup", "outside"])
def test_sigkill_then_rerun_equals_clean_run(point, killed_runs, scenes, clean):
    code, err, out, cfg = killed_runs[point]
    assert code == -signal.SIGKILL, err
    final = out / scenes["a"].stem
    if point in ("stitch", "gpkg", "outside"):
        assert not final.exists()  # no outputs rather than half outputs
    elif point == "swap":
        assert not final.exists() and list(out.glob(".*.old-*"))  # the window: previous outputs set aside
    else:
        assert_complete(final)
    summary = run_pipeline(load_config(cfg), quiet=True)
    assert summary.ok, summary.lines()
    (r,) = summary.scenes
    # swap: the previous outputs are put back (and are up to date); cleanup: the new ones are complete
    assert r.status == ("skipped_up_to_date" if point in ("swap", "cleanup") else "done")
    assert_complete(final)
    assert fingerprint(final) == fingerprint(clean / scenes["a"].stem)
    leftovers = [p.name for p in out.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_two_concurrent_runs_never_do_a_scene_twice(killed_runs, scenes, clean):
    *procs, out = killed_runs["concurrent"]
    assert [code for code, _ in procs] == [0, 0], procs
    summaries = [json.loads(p.read_text()) for p in sorted((out / "_runs").glob("*.json"))]
    assert len(summaries) == 2
    done = [s["scene"] for summary in summaries for s in summary["scenes"] if s["status"] == "done"]
    assert sorted(done) == sorted(str(scenes[k]) for k in ("a", "b"))  # each exactly once
    others = [s for summary in summaries for s in summary["scenes"] if s["status"] != "done"]
    assert all(s["status"] in ("skipped_locked", "skipped_up_to_date") for s in others)
    assert all("locked by another run (pid " in s["reason"] for s in others if s["status"] == "skipped_locked")
    for k in ("a", "b"):
        assert fingerprint(out / scenes[k].stem) == fingerprint(clean / scenes[k].stem)


# ---------------------------------------------------------------- config errors and safety


def test_config_errors_are_all_reported_before_any_work(tmp_path, tiny_model):
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
    assert any("unknown key 'tilling' (did you mean 'tiling'?)" in p for p in problems)
    assert any(p.startswith("workers: expected an integer") and p.endswith("got str 'two'") for p in problems)
    assert any("vector: unknown key 'blok' (did you mean 'block'?)" in p for p in problems)
    assert any("model file not found" in p for p in problems)
    assert any("nowhere.tif: not found" in p for p in problems)
    res = CliRunner().invoke(app, ["run", str(cfg)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == len(problems) >= 5 and all(f"error: {cfg}: " in ln for ln in lines)
    assert not (tmp_path / "out" / "_runs").exists()  # nothing ran

    good = write_config(tmp_path / "good.yaml", tiny_model, [DEMO_SCENE], tmp_path / "o", tiling={"overlap": 33})
    with pytest.raises(ConfigError, match="tiling.overlap: must be even"):
        load_config(good)


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_pickled_model_is_refused_with_one_line(tmp_path, kind):
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


def test_output_names_cannot_escape_or_hide(tmp_path, tiny_model):
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


def test_inputs_and_out_override_and_watch_folder(tmp_path, tiny_model, scenes):
    cfg = tmp_path / "p.yaml"
    (tmp_path / "watch").mkdir()
    shutil.copy(scenes["a"], tmp_path / "watch" / "old.tif")
    shutil.copy(scenes["b"], tmp_path / "watch" / "fresh.tif")
    os.utime(tmp_path / "watch" / "old.tif", (time.time() - 3600,) * 2)
    (tmp_path / "watch" / "notes.txt").write_text("x")
    cfg.write_text(f"model: {tiny_model}\ninputs: {{watch: {{folder: watch, settle_seconds: 600}}}}\nout: maps\n")
    c = load_config(cfg)
    from geounet.batch.run import discover_inputs

    assert [p.name for p in discover_inputs(c)] == ["old.tif"]  # fresh.tif may still be being copied
    assert c.out == tmp_path / "maps"
    c2 = load_config(cfg, inputs=[str(tmp_path / "watch" / "*.tif")], out="elsewhere", cwd=tmp_path)
    assert sorted(p.name for p in discover_inputs(c2)) == ["fresh.tif", "old.tif"] and c2.out == tmp_path / "elsewhere"


def test_damage_config_is_checked_and_dispatched(tmp_path, monkeypatch):
    import geounet.damage.run as damage
    pre = sorted(Path(p) for p in [shutil.copy(DEMO_SCENE, tmp_path / "pre.tif")])
    post = [Path(shutil.copy(DEMO_SCENE, tmp_path / "post.tif"))]
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"task: damage\nmodel: {REPO / 'data/models/buildings.safetensors'}\n"
                   f"inputs: {{pre: pre.tif, post: [post.tif]}}\nout: o\ndevice: cpu\ndamage: {{halo: 32, blok: 1}}\n")
    with pytest.raises(ConfigError, match="damage: unknown key 'blok' \\(did you mean 'block'\\?\\)"):
        load_config(cfg)
    cfg.write_text(cfg.read_text().replace(", blok: 1", ""))
    c = load_config(cfg)
    assert c.damage["pre"] == pre and c.damage["post"] == post and c.damage["settings"].halo == 32
    seen = {}
    monkeypatch.setattr(damage, "run_damage", lambda *a: seen.setdefault("args", a) and {})
    summary = run_pipeline(c, quiet=True)
    assert summary.ok and summary.scenes[0].status == "done"
    assert seen["args"][:3] == (pre, post, tmp_path / "o") and seen["args"][5].device == "cpu"
