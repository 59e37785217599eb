"""Unattended batch runs (``geounet run CONFIG``): each scene on its own, a summary and a log per run.

:func:`run_pipeline` takes a checked config (:mod:`geounet.batch.config`) and handles
each scene on its own:

1. take the scene's lock (``OUTDIR/.<stem>.lock``, :mod:`geounet.io.locks`): a scene
   locked by another run is skipped and reported as such;
2. clean what a killed run left for this scene (:func:`geounet.io.folders.recover_interrupted`);
3. skip the scene if its ``run.json`` says its outputs are up to date
   (:mod:`geounet.batch.state`);
4. else run :func:`geounet.engine.predict.predict_scene`; any error is recorded and
   the batch goes on (a failed Dask cluster marks the rest of the batch not run).

A ``task: damage`` config is one call of ``geounet.damage.run.run_damage`` under one
lock. A summary (JSON) and a log file per run are written to ``OUTDIR/_runs/``.

SIGTERM (as :class:`geounet.errors.Interrupted`, when the caller turns it into one: the
CLI does) and Ctrl-C stop the batch: the running scene's partial outputs are removed by
the staging folder's clean-up, the scene is recorded as ``interrupted (SIGTERM)`` /
``interrupted (Ctrl-C)``, the rest as not run, the summary is written, and the exception
goes on to the caller.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geounet.damage.run as damage
from geounet.batch.config import PipelineConfig
from geounet.batch.inputs import discover_inputs
from geounet.batch.state import requested_settings, up_to_date
from geounet.engine.executors import ClusterError, Executor
from geounet.engine.predict import make_executor, predict_scene, resolve_model
from geounet.errors import GeounetError, Interrupted, scene_failure
from geounet.io.aoi import area_of_interest
from geounet.io.folders import output_dir_for, recover_interrupted
from geounet.io.locks import SceneLock, locked_reason, scene_lock
from geounet.io.stac_input import is_stac_input
from geounet.io.stac_search import stac_scenes
from geounet.models.card import file_sha256, read_card
from geounet.models.registry import is_model_name, pick_variant

log = logging.getLogger("geounet")

RUNS_DIR = "_runs"  # OUTDIR/_runs/: summaries and logs; a scene may not be called that
STATUSES = ("done", "skipped_up_to_date", "skipped_locked", "failed")


@dataclass
class SceneResult:
    """How one scene (or the damage job) went; ``seconds`` of wall time."""

    scene: str
    status: str  # one of STATUSES
    reason: str = ""
    out_dir: str | None = None
    seconds: float = 0.0


@dataclass
class RunSummary:
    """One run of a config: what it did to each scene (written as ``OUTDIR/_runs/<stamp>.json``)."""

    config: str | None
    out: str
    started_utc: str  # ISO 8601, whole seconds
    finished_utc: str = ""
    seconds: float = 0.0  # wall time
    force: bool = False
    pid: int = field(default_factory=os.getpid)
    scenes: list[SceneResult] = field(default_factory=list)
    summary_file: str = ""
    log_file: str = ""
    interrupted: str = ""  # "interrupted (SIGTERM)" / "interrupted (Ctrl-C)": the run was stopped there

    def counts(self) -> dict[str, int]:
        """Scenes per status."""
        return {k: sum(r.status == k for r in self.scenes) for k in STATUSES}

    @property
    def ok(self) -> bool:
        """No scene failed."""
        return not any(r.status == "failed" for r in self.scenes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"counts": self.counts()}

    def lines(self, details: bool = True) -> list[str]:
        """Human summary for stderr: one line per scene that did not simply run (if ``details``), then totals."""
        out = []
        for r in self.scenes:
            if r.status == "failed":
                out.append(f"error: {r.reason}" if r.reason.startswith(r.scene) else f"error: {r.scene}: {r.reason}")
            elif details and r.status != "done":
                out.append(f"{r.status.replace('_', ' ')}: {r.scene}" + (f" ({r.reason})" if r.reason else ""))
        c = self.counts()
        out.append(
            f"geounet run: {c['done']} done, {c['skipped_up_to_date']} skipped (up to date), "
            f"{c['skipped_locked']} skipped (locked by another run), {c['failed']} failed "
            f"in {self.seconds:.1f} s; summary {self.summary_file or 'not written'}"
        )
        return out


def run_pipeline(cfg: PipelineConfig, force: bool = False, quiet: bool = False) -> RunSummary:
    """Run a checked config over its inputs; never raises for one scene's failure.

    Writes ``OUTDIR/_runs/<UTC timestamp>-<pid>.json`` (the returned summary) and
    ``.log`` (this run's full log, tracebacks included).
    """
    runs = cfg.out / RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    stamp = f"{_stamp().replace('.', '')}-{os.getpid()}"
    summary = RunSummary(
        str(cfg.source) if cfg.source else None,
        str(cfg.out),
        _utc_now(),
        force=force,
        summary_file=str(runs / f"{stamp}.json"),
        log_file=str(runs / f"{stamp}.log"),
    )
    with _run_log(Path(summary.log_file)):
        t0 = time.perf_counter()
        try:
            log.info("run: config %s, out %s, pid %d%s", cfg.source, cfg.out, os.getpid(), ", --force" if force else "")
            if cfg.task == "damage":
                _run_damage(cfg, summary)
            else:
                _run_scenes(cfg, force, quiet, summary)
        except (Interrupted, KeyboardInterrupt) as exc:
            summary.interrupted = str(Interrupted.of(exc))
            for r in summary.scenes:  # the one it was doing (the damage job; a scene is recorded as it stops)
                if r.status == "failed" and not r.reason:
                    r.reason = summary.interrupted
            log.info("run %s: summary %s", summary.interrupted, summary.summary_file)
            raise
        finally:
            summary.seconds = round(time.perf_counter() - t0, 3)
            summary.finished_utc = _utc_now()
            log.info("run finished: %s", ", ".join(f"{k} {v}" for k, v in summary.counts().items()))
            try:
                _write_json_atomic(Path(summary.summary_file), summary.to_dict())
            except OSError as exc:  # a full disk: the summary still reaches the console
                log.warning("%s", scene_failure(summary.summary_file, exc, cfg.out))
                summary.summary_file = ""
    return summary


def _run_scenes(cfg: PipelineConfig, force: bool, quiet: bool, summary: RunSummary) -> None:
    """task segment: each scene of the config in turn, its result added to ``summary`` before it starts.

    Interrupted (SIGTERM, Ctrl-C): the running scene is recorded as such, the rest as not run.
    """
    scenes = discover_inputs(cfg.globs, cfg.watch)
    if cfg.search is not None or any(is_stac_input(s) for s in scenes):  # STAC: one VRT scene per Item
        name = str(cfg.model)
        card = read_card(pick_variant(name, None).path if is_model_name(name) else Path(name))
        area = area_of_interest(cfg.settings.aoi, cfg.settings.bbox, cfg.settings.bbox_crs)
        scenes, stac_errors = stac_scenes(scenes, cfg.search, area, cfg.out, card)  # bad Items fail alone
        for exc in stac_errors:
            summary.scenes.append(SceneResult(str(exc.path), "failed", str(exc)))
            log.info("%s", exc)
    runner = _SceneRunner(cfg, force, quiet)
    log.info("run: %d scene(s), model %s", len(scenes), cfg.model)
    first, finished = len(summary.scenes), 0  # results of this segment; scenes whose result is final
    t0 = time.perf_counter()
    try:
        for i, scene in enumerate(scenes, 1):
            t0 = time.perf_counter()
            final = output_dir_for(scene, cfg.out)
            res = SceneResult(str(scene), "failed", out_dir=str(final))
            summary.scenes.append(res)
            runner.run(scene, final, res, f"[{i}/{len(scenes)}]", last=i == len(scenes))
            finished = i
            if res.status == "failed":  # console: the CLI's summary says it; the log file gets it now
                log.info("%s", res.reason if res.reason.startswith(str(scene)) else f"{scene}: {res.reason}")
            res.seconds = round(time.perf_counter() - t0, 3)
    except (Interrupted, KeyboardInterrupt) as exc:  # asked to stop: the scene running and the rest are not done
        stop = Interrupted.of(exc)
        if len(summary.scenes) - first > finished:
            res = summary.scenes[-1]
            res.status, res.reason, res.seconds = "failed", str(stop), round(time.perf_counter() - t0, 3)
            log.info("%s: %s", res.scene, res.reason)
        for rest in scenes[len(summary.scenes) - first :]:
            summary.scenes.append(
                SceneResult(str(rest), "failed", f"not run: {stop}", str(output_dir_for(rest, cfg.out)))
            )
        raise
    finally:
        runner.close()


class _SceneRunner:
    """The per-scene steps of one segment run; the executor is made when a scene first needs it."""

    def __init__(self, cfg: PipelineConfig, force: bool, quiet: bool) -> None:
        self.cfg, self.force = cfg, force
        self.settings = dataclasses.replace(cfg.settings, quiet=quiet or cfg.settings.quiet)
        self.models: dict[Path, tuple[str, dict[str, Any]]] = {}  # model file -> (sha256, requested settings)
        self.executor: Executor | None = None
        self.cluster_error: str | None = None  # set: the rest of the batch is not run
        self.owners: dict[str, str | Path] = {}  # output folder name -> the scene that writes it

    def run(self, scene: str | Path, final: Path, res: SceneResult, step: str, last: bool = False) -> None:
        """One scene into ``final``, recorded in ``res`` (``step``: its place in the batch, for the log).

        ``last``: no scene of this segment follows (the model is freed once its chunks are done).
        """
        res.reason = self._refusal(scene, final)
        if res.reason:
            return
        self.owners[final.name] = scene
        lock = scene_lock(self.cfg.out, final.name)
        if not lock.acquire():
            _locked_out(lock, res)
            log.warning("%s: %s", scene, res.reason)
            return
        with lock:
            for what in recover_interrupted(self.cfg.out, final.name):
                log.warning("%s: after an interrupted run: %s", scene, what)
            try:
                model_sha, requested = self.model_for(scene)
            except GeounetError as exc:  # the scene cannot be read: it fails alone
                res.reason = str(exc)
                return
            fresh, why = (
                (False, "--force")
                if self.force
                else up_to_date(final, scene, model_sha, requested, self.cfg.hash_inputs)
            )
            if fresh:
                res.status = "skipped_up_to_date"
                log.info("%s %s: up to date, skipped", step, scene)
            else:
                log.info("%s %s: computing (%s)", step, scene, why)
                self._predict(scene, res, why, last)

    def model_for(self, scene: str | Path) -> tuple[str, dict[str, Any]]:
        """The sha256 and requested output settings of the model file this scene uses (a name: its variant)."""
        path, _ = resolve_model(self.cfg.model, scene)
        if path not in self.models:
            self.models[path] = (file_sha256(path), requested_settings(self.settings, read_card(path)))
        return self.models[path]

    def _refusal(self, scene: str | Path, final: Path) -> str:
        """Why this scene cannot run in this batch at all ("" when it can)."""
        if self.cluster_error:
            return f"not run: the Dask cluster failed earlier in this run ({self.cluster_error})"
        if final.name == RUNS_DIR:
            return f"output folder name {RUNS_DIR!r} is reserved for run logs: rename the scene"
        if final.name in self.owners:
            return f"writes to the same output folder {final} as {self.owners[final.name]}: rename one of them"
        return ""

    def _predict(self, scene: str | Path, res: SceneResult, why: str, last: bool = False) -> None:
        """Predict the scene (the lock held); an error is recorded in ``res``, not raised."""
        try:
            if self.executor is None:
                self.executor = make_executor(self.settings, resolve_model(self.cfg.model, scene)[0])
            predict_scene(scene, self.cfg.out, self.cfg.model, self.settings, self.executor, last=last)
            res.status, res.reason = "done", why
        except GeounetError as exc:
            res.reason = str(exc)
        except Exception as exc:  # noqa: BLE001  one bad scene never sinks the batch
            res.reason = (
                _one_line(exc) if isinstance(exc, ClusterError) else str(scene_failure(scene, exc, self.cfg.out))
            )
            log.info("%s: traceback:\n%s", scene, traceback.format_exc())
            if isinstance(exc, ClusterError):  # not about one scene: the rest of the batch is not run
                self.cluster_error = res.reason

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()


def _run_damage(cfg: PipelineConfig, summary: RunSummary) -> None:
    """task damage: one call of ``geounet.damage.run.run_damage`` under an output-folder lock."""
    t0 = time.perf_counter()
    res = SceneResult("damage", "failed", out_dir=str(cfg.out))
    summary.scenes.append(res)
    lock = SceneLock(cfg.out / ".damage.lock")
    if not lock.acquire():
        _locked_out(lock, res)
        return
    with lock:
        try:
            for what in recover_interrupted(cfg.out, "damage"):  # a killed damage run's .damage.partial-* folder
                log.warning("damage: after an interrupted run: %s", what)
            damage.run_damage(
                cfg.damage["pre"],
                cfg.damage["post"],
                cfg.out,
                cfg.damage.get("footprints"),
                resolve_model(cfg.model, cfg.damage["pre"][0])[0],  # a name: the variant for the pre scene
                cfg.damage["settings"],
                None,
            )
            res.status = "done"
        except GeounetError as exc:
            res.reason = str(exc)
        except Exception as exc:  # noqa: BLE001
            res.reason = str(scene_failure("damage", exc, cfg.out))
            log.info("damage: traceback:\n%s", traceback.format_exc())
        finally:
            res.seconds = round(time.perf_counter() - t0, 3)


def _locked_out(lock: SceneLock, res: SceneResult) -> None:
    res.status, res.reason = "skipped_locked", locked_reason(lock)


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


# ---------------------------------------------------------------- the run's files


@contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """This run's log (INFO and up) also in the file ``path``, even when the console shows warnings only."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    level, effective = log.level, log.getEffectiveLevel()
    others = {h: h.level for h in log.handlers if h is not handler}
    if effective > logging.INFO:  # the file gets INFO even when the console is quiet
        for h, lvl in others.items():
            h.setLevel(max(lvl, effective))
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(level)
        for h, lvl in others.items():
            h.setLevel(lvl)


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")[:-4] + "Z"  # 1/100 s


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
