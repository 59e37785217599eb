"""Runs stopped from outside, as in a container: SIGKILL as PID 1, SIGTERM (``docker stop``), Ctrl-C.

Real ``geounet`` processes, started at once (``stopped_runs``); PID 1 runs go through
``unshare --pid --fork --mount-proc`` (skipped, with the reason, where it cannot run).
Each process holds at a planted point (as ``test_locks.py`` plants its kills) and writes
a marker file; the test then signals it from outside.
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

import pytest

from tests.helpers import REPO

# Runs geounet's CLI, holding at one point (argv[1]) after writing the marker (argv[2], our pid inside).
DRIVER = r"""
import os, signal, sys, time
from pathlib import Path
from geounet.cli.main import main
from geounet.io.run_record import RunRecord

point, marker = sys.argv[1], Path(sys.argv[2])
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C even if the test runner ignores it


def hold():
    marker.write_text(str(os.getpid()))
    time.sleep(300)  # signalled here


if point == "swap":  # previous outputs moved aside, new ones not yet moved in
    replace = os.replace
    os.replace = lambda s, d: (replace(s, d), hold() if ".old-" in str(d) else None)[0]
elif point == "record":  # mid-scene: the rasters are written in the partial folder, run.json not yet
    write = RunRecord.write
    RunRecord.write = lambda self, *a, **k: (hold(), write(self, *a, **k))[1]
sys.argv = ["geounet"] + sys.argv[3:]
main()
"""

WAIT = 400  # s: a marker or an exit, on a busy 2-core machine


def _unshare_problem() -> str | None:
    """Why a PID namespace cannot be made here (None: it can)."""
    if shutil.which("unshare") is None:
        return "unshare not found"
    try:
        res = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", "echo $$"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unshare failed: {exc}"
    if res.returncode != 0 or res.stdout.strip() != "1":
        return f"unshare --pid --fork --mount-proc failed: {res.stderr.strip() or res.stdout.strip()}"
    return None


def _child_of(pid: int, deadline: float) -> int:
    """The (host) pid of ``pid``'s child: the PID 1 that ``unshare --fork`` started."""
    while time.monotonic() < deadline:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = Path(f"/proc/{d}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    return int(d)
        time.sleep(0.05)
    raise TimeoutError(f"no child of unshare (pid {pid})")


class Proc:
    """One geounet process held at ``point``; ``pid1``: PID 1 of its own PID namespace."""

    def __init__(self, d: Path, point: str, args: list, pid1: bool) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.marker, self.err_file = d / "held", d / "stderr"
        (d / "driver.py").write_text(DRIVER)
        cmd = [sys.executable, str(d / "driver.py"), point, str(self.marker), *map(str, args)]
        if pid1:
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *cmd]
        env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        with self.err_file.open("w") as err:
            self.popen = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        self.pid1 = pid1
        self.pid = _child_of(self.popen.pid, time.monotonic() + WAIT) if pid1 else self.popen.pid

    def wait_held(self, deadline: float) -> str:
        """Wait until the process holds at its point; its pid as it sees it."""
        while not self.marker.exists():
            if self.popen.poll() is not None:
                raise AssertionError(f"exited {self.popen.returncode} before its point: {self.err_file.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not held in time: {self.err_file.read_text()}")
            time.sleep(0.05)
        time.sleep(0.1)  # the marker is written just before the hold
        return self.marker.read_text()

    def finish(self, timeout: float = WAIT) -> tuple[int, list[str]]:
        """Exit code and stderr lines."""
        try:
            code = self.popen.wait(timeout)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()  # --kill-child takes the PID 1 with it
        return code, self.err_file.read_text().splitlines()


def _hidden(out: Path) -> list[str]:
    """Staging, set-aside and liveness files left in ``out`` (lock files are left on purpose)."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def stopped_runs(scenes, tiny_model, clean, tmp_path_factory, write_config) -> dict:
    """Three processes at once: ``geounet run`` as PID 1 SIGKILLed while the previous outputs are set aside;
    ``geounet predict`` (PID 1 when possible) sent SIGTERM mid-scene; ``geounet run`` sent SIGINT mid-scene."""
    problem = _unshare_problem()
    d = tmp_path_factory.mktemp("stopped")
    a, b = scenes["a"], scenes["b"]
    res: dict = {"unshare": problem}
    procs = {}

    if problem is None:  # previous outputs of a and b, recomputed with --force
        out = d / "pid1" / "out"
        for k in (a, b):
            shutil.copytree(clean / k.stem, out / k.stem)
        cfg = write_config(d / "pid1" / "p.yaml", tiny_model, [a, b], out)
        procs["kill"] = Proc(d / "pid1", "swap", ["run", cfg, "--quiet", "--force"], pid1=True)
        res["kill"] = (out, cfg)

    out = d / "sigterm" / "out"
    shutil.copytree(clean / a.stem, out / a.stem)
    args = ["predict", a, "--out", out, "--model", tiny_model, "--no-vector", "--workers", "1", "--quiet"]
    procs["sigterm"] = Proc(d / "sigterm", "record", args, pid1=problem is None)
    res["sigterm"] = (out,)

    out = d / "ctrl_c" / "out"
    out.mkdir(parents=True)
    cfg = write_config(d / "ctrl_c" / "p.yaml", tiny_model, [a, b], out, vector=False)
    procs["ctrl_c"] = Proc(d / "ctrl_c", "record", ["run", cfg, "--quiet"], pid1=False)
    res["ctrl_c"] = (out,)

    deadline = time.monotonic() + WAIT
    try:
        for name, sig in (("kill", signal.SIGKILL), ("sigterm", signal.SIGTERM), ("ctrl_c", signal.SIGINT)):
            if name not in procs:
                continue
            p = procs[name]
            seen_pid = p.wait_held(deadline)
            if name == "kill":  # what the killed run left: the window between the two renames
                out = res["kill"][0]
                res["at_kill"] = (sorted(p.name for p in out.iterdir()), list(out.glob(f".{a.stem}.old-*")))
            os.kill(p.pid, sig)
            res[name] = (*p.finish(), seen_pid, *res[name])
    finally:
        for p in procs.values():
            if p.popen.poll() is None:
                p.popen.kill()
    return res


def test_sigkill_as_pid1_then_rerun_as_pid1_equals_clean_run(
    stopped_runs, scenes, clean, tmp_path, fingerprint, assert_complete
):
    if stopped_runs["unshare"]:
        pytest.skip(stopped_runs["unshare"])
    code, err, seen_pid, out, cfg = stopped_runs["kill"]
    a, b = scenes["a"].stem, scenes["b"].stem
    # unshare re-raises its child's signal on itself, which fails for SIGKILL: it exits 1 and says so
    assert seen_pid == "1" and code in (-signal.SIGKILL, 1), err
    assert not list((out / "_runs").glob("*.json"))  # killed: no summary written
    names, olds = stopped_runs["at_kill"]
    assert a not in names and len(olds) == 1 and olds[0].name.startswith(f".{a}.old-1-")
    assert_complete(olds[0])  # the previous outputs, set aside, complete
    # an older geounet (pid-only names), also PID 1, killed in the same window for scene b
    os.replace(out / b, out / f".{b}.old-1")
    (out / f".{b}.partial-1").mkdir()

    rerun = Proc(tmp_path, "none", ["run", cfg, "--quiet"], pid1=True)
    code, err = rerun.finish()
    assert code == 0, err
    summary = json.loads(sorted((out / "_runs").glob("*.json"))[-1].read_text())
    assert [s["status"] for s in summary["scenes"]] == ["skipped_up_to_date"] * 2  # previous outputs put back
    assert summary["pid"] == 1
    log = Path(summary["log_file"]).read_text()
    assert f"restored previous outputs from .{a}.old-1-" in log and f"restored previous outputs from .{b}.old-1" in log
    for stem in (a, b):
        assert_complete(out / stem)
        assert sorted(p.name for p in (out / stem).iterdir()) == sorted(p.name for p in (clean / stem).iterdir())
        assert (out / stem / "run.json").read_text() == (clean / stem / "run.json").read_text()
        assert fingerprint(out / stem) == fingerprint(clean / stem)
    assert _hidden(out) == []


def test_sigterm_mid_predict_removes_partial_keeps_previous_exits_143(stopped_runs, scenes, clean):
    code, err, seen_pid, out = stopped_runs["sigterm"]
    if not stopped_runs["unshare"]:
        assert seen_pid == "1"  # as docker stop does it: PID 1 ignores a SIGTERM it has no handler for
    assert code == 143 and err == ["error: interrupted (SIGTERM)"], err
    stem = scenes["a"].stem
    for f in (clean / stem).iterdir():  # previous outputs untouched
        assert (out / stem / f.name).read_bytes() == f.read_bytes(), f.name
    assert _hidden(out) == []  # partial folder and liveness lock gone


def test_ctrl_c_mid_run_records_it_and_exits_130(stopped_runs, scenes):
    code, err, _, out = stopped_runs["ctrl_c"]
    assert code == 130 and err == ["error: interrupted (Ctrl-C)"], err
    (summary_file,) = (out / "_runs").glob("*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["interrupted"] == "interrupted (Ctrl-C)"
    assert [(s["scene"], s["status"], s["reason"]) for s in summary["scenes"]] == [
        (str(scenes["a"]), "failed", "interrupted (Ctrl-C)"),
        (str(scenes["b"]), "failed", "not run: interrupted (Ctrl-C)"),
    ]
    assert not (out / scenes["a"].stem).exists() and _hidden(out) == []
