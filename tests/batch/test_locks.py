"""Locks and crash recovery: locked scenes are skipped, SIGKILLed runs are recovered, concurrent runs share the work.

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

import pytest

from geounet.batch.config import load_config
from geounet.batch.run import run_pipeline
from geounet.io.folders import recover_interrupted
from geounet.io.locks import SceneLock, alive, scene_lock
from tests.helpers import REPO

# Imports geounet (and torch) once, then forks one real child process per job, each running
# geounet's CLI, with a SIGKILL planted at one point of the pipeline (job's kill_at).
DRIVER = r"""
import json, os, shutil, signal, sys
from geounet.cli.main import main
from geounet.engine.stitch import Stitcher
from geounet.io.vectors import LayerWriter


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def plant(point):
    if point == "stitch":  # mid-scene: first chunk stitched into the stage-1 raster
        add = Stitcher.add
        Stitcher.add = lambda self, r: (add(self, r), die())
    elif point == "gpkg":  # GeoPackage half written
        flush = LayerWriter.flush
        LayerWriter.flush = lambda self, *a, **k: (flush(self, *a, **k), die())
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
"""


@pytest.fixture(scope="module")
def killed_runs(scenes, tiny_model, clean, tmp_path_factory, write_config) -> dict:
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
    zygote = subprocess.Popen(
        [sys.executable, str(driver), json.dumps(jobs), str(pid_file)], env=env, stdout=subprocess.PIPE, text=True
    )

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


def test_locked_scene_is_skipped_and_says_by_whom(scenes, tiny_model, clean, tmp_path, write_config):
    cfg = write_config(tmp_path / "p.yaml", tiny_model, [scenes["a"]], clean)
    with SceneLock(clean / f".{scenes['a'].stem}.lock") as lock:
        assert lock.acquire()
        summary = run_pipeline(load_config(cfg), quiet=True)
    (r,) = summary.scenes
    assert r.status == "skipped_locked" and r.reason == f"locked by another run (pid {os.getpid()})"
    assert summary.ok


def test_recovery_restores_previous_outputs_and_removes_only_dead_runs_leftovers(tmp_path):
    """Folders of older versions (``-<pid>``) and of this one (``-<token>``, a live liveness lock)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # an older version, still running
    try:
        (tmp_path / f".a.old-{dead.pid}").mkdir()
        (tmp_path / f".a.old-{dead.pid}" / "run.json").write_text("{}")
        (tmp_path / f".a.partial-{dead.pid}").mkdir()
        (tmp_path / f".a.partial-{os.getpid()}").mkdir()  # pid-only and ours: left by a previous holder of our pid
        (tmp_path / f".a.partial-{running.pid}").mkdir()
        (tmp_path / f".ab.partial-{dead.pid}").mkdir()  # another scene's
        with alive(tmp_path) as token, scene_lock(tmp_path, "a") as lock:
            (tmp_path / f".a.partial-{token}").mkdir()  # a live run's work in progress
            assert lock.acquire() and not scene_lock(tmp_path, "a").acquire()
            done = recover_interrupted(tmp_path, "a")
            assert done[0] == f"restored previous outputs from .a.old-{dead.pid}"
            assert sorted(done[1:]) == sorted([f"removed .a.partial-{dead.pid}", f"removed .a.partial-{os.getpid()}"])
            assert (tmp_path / "a" / "run.json").is_file()
            kept = [".a.lock", f".a.partial-{running.pid}", f".a.partial-{token}", f".ab.partial-{dead.pid}"]
            assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".a")) == sorted(kept)
    finally:
        running.kill()
        running.wait()


@pytest.mark.parametrize("point", ["stitch", "gpkg", "swap", "cleanup", "outside"])
def test_sigkill_then_rerun_equals_clean_run(point, killed_runs, scenes, clean, fingerprint, assert_complete):
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


def test_two_concurrent_runs_never_do_a_scene_twice(killed_runs, scenes, clean, fingerprint):
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


def test_predict_takes_the_scene_lock_and_cleans_dead_runs_leftovers(scenes, tiny_model, tmp_path, caplog):
    """``geounet predict``'s batch: a locked scene fails alone (saying by whom); the next one is recovered and run."""
    from geounet.engine.predict import predict_batch
    from geounet.engine.settings import PredictSettings

    a, b = scenes["a"], scenes["b"]
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{b.stem}.partial-1-0badc0de").mkdir()  # a SIGKILLed run's (its liveness lock is gone)
    settings = PredictSettings(quiet=True, vector=False, workers=1, batch_size=8)
    with scene_lock(out, a.stem) as lock, caplog.at_level("WARNING", logger="geounet"):
        assert lock.acquire()
        reports = predict_batch([a, b], out, tiny_model, settings)
    assert [r.ok for r in reports] == [False, True]
    assert reports[0].error == f"{a}: locked by another run (pid {os.getpid()})"
    assert f"{b}: after an interrupted run: removed .{b.stem}.partial-1-0badc0de" in caplog.messages
    assert sorted(p.name for p in out.iterdir()) == [f".{a.stem}.lock", f".{b.stem}.lock", b.stem]
