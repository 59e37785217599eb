"""Unattended batch runs (``geounet run CONFIG``): pipeline configs, idempotent reruns, locks.

A pipeline config (YAML; schema in :data:`SCHEMA` and the README) names the inputs, the
model, the settings and the output folder. :func:`load_config` checks all of it and
raises one :class:`ConfigError` listing every problem before any work starts.
:func:`run_pipeline` then handles each scene on its own:

1. take a per-scene lock, ``OUTDIR/.<stem>.lock`` (``fcntl.flock``, non-blocking, holder's
   pid written inside): a scene locked by another run is skipped and reported as such;
2. clean what a killed run left for this scene: ``.<stem>.partial-<pid>`` folders of dead
   processes are removed, and if the run died between moving the previous outputs aside
   (``.<stem>.old-<pid>``) and moving the new ones in, the previous outputs are put back;
3. skip the scene if ``OUTDIR/<stem>/run.json`` says its outputs are complete and were
   made from the same input bytes, model file and output-relevant settings;
4. else run :func:`geounet.pipeline.predict_scene`; any error is recorded and the batch
   goes on.

A summary (JSON) and a log file per run are written to ``OUTDIR/_runs/``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import errno
import fcntl
import glob as _glob
import json
import logging
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geounet.errors import GeounetError
from geounet.models.card import file_sha256, read_card

log = logging.getLogger("geounet")

RUNS_DIR = "_runs"  # OUTDIR/_runs/: summaries and logs; a scene may not be called that
SCENE_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")  # a watch folder's scenes (default)

# Top-level keys of a pipeline config: key -> (accepted types, what it is)
SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "task": ((str,), "segment (default) or damage"),
    "inputs": ((str, list, dict), "glob(s), or {globs, list_file, watch}; damage: {pre, post}"),
    "model": ((str,), "path of a geounet .safetensors model"),
    "out": ((str,), "output folder"),
    "tiling": ((dict,), "{tile_size, overlap, batch_size, chunk_pixels}"),
    "device": ((str,), "auto, cpu, cuda or cuda:N"),
    "precision": ((str,), "auto, fp32, bf16 or fp16"),
    "backend": ((str,), "auto, torch or onnx (ONNX Runtime: fp32 on the CPU)"),
    "workers": ((int, type(None)), "chunks processed in parallel; null or absent: one per core with ONNX Runtime"),
    "scheduler": ((str, type(None)), "address of a dask.distributed scheduler, or null"),
    "vector": ((bool, dict), "true/false or {enabled, block}"),
    "postprocess": ((dict,), "per class kind overrides of the vector rules"),
    "hash_inputs": ((bool,), "always hash inputs for the up-to-date check (default: size + mtime)"),
    "footprints": ((str, type(None)), "damage: building footprints file"),
    "damage": ((dict,), "damage: DamageSettings fields"),
}
TILING_KEYS = {"tile_size": (int, type(None)), "overlap": (int, type(None)), "batch_size": (int, type(None)),
               "chunk_pixels": (int, type(None))}
INPUT_KEYS = {"globs": (str, list), "list_file": (str,), "watch": (str, dict)}
WATCH_KEYS = {"folder": (str,), "pattern": (str,), "settle_seconds": (int, float)}
VECTOR_KEYS = {"enabled": (bool,), "block": (int,)}
# settings that change the outputs: a change of any of them recomputes the scene
OUTPUT_SETTINGS = ("tile_size", "overlap", "precision", "device", "resample_tolerance", "vector", "vector_block")


class ConfigError(GeounetError):
    """A pipeline config with one or more problems (all of them, one per line)."""

    def __init__(self, path: str | Path | None, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(path, "; ".join(self.problems))

    def __reduce__(self):
        return (type(self), (self.path, self.problems))

    def lines(self) -> list[str]:
        return [f"{self.path}: {p}" if self.path else p for p in self.problems]


@dataclass
class WatchSpec:
    folder: Path
    pattern: str | None = None  # fnmatch pattern; None: any of SCENE_SUFFIXES
    settle_seconds: float = 60.0  # files modified more recently may still be being copied: left for next run


@dataclass
class PipelineConfig:
    """A checked pipeline config; all paths absolute."""

    source: Path | None
    task: str
    model: Path
    out: Path
    settings: Any  # geounet.pipeline.PredictSettings
    globs: list[str] = field(default_factory=list)
    list_file: Path | None = None
    watch: WatchSpec | None = None
    hash_inputs: bool = False
    postprocess: dict = field(default_factory=dict)
    damage: dict = field(default_factory=dict)  # task damage: pre, post (globs), footprints, settings


# ---------------------------------------------------------------- config


def _type_name(types: tuple[type, ...]) -> str:
    names = {str: "text", int: "an integer", float: "a number", bool: "true/false", list: "a list",
             dict: "a mapping", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_type(value, types: tuple[type, ...], where: str, problems: list[str]) -> bool:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        problems.append(f"{where}: expected {_type_name(types)}, got {type(value).__name__} {value!r}")
    return ok


def _check_keys(section: dict, allowed, where: str, problems: list[str]) -> None:
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(allowed))})"
            problems.append(f"{where}unknown key {key!r}{hint}")


def _section(raw: dict, key: str, allowed: dict, problems: list[str]) -> dict:
    sec = raw.get(key) or {}
    if not isinstance(sec, dict):
        return {}
    _check_keys(sec, allowed, f"{key}: ", problems)
    return {k: v for k, v in sec.items() if k in allowed and _check_type(v, allowed[k], f"{key}.{k}", problems)}


def _has_magic(pattern: str) -> bool:
    return _glob.has_magic(pattern)


def _abs(base: Path, p: str | Path) -> Path:
    """``p`` (``~`` expanded) made absolute against ``base``, ``..`` folded (symlinks kept)."""
    return Path(os.path.normpath(base / os.path.expanduser(str(p))))


def load_config(path: str | Path, inputs: list[str] | None = None, out: str | Path | None = None,
                cwd: Path | None = None) -> PipelineConfig:
    """Read and check a pipeline config; ``inputs`` / ``out`` (relative to ``cwd``) override its own.

    Paths in the file are relative to the file's folder. Raises :class:`ConfigError`
    with every problem found (unknown keys with a did-you-mean, wrong types, missing
    model or inputs, bad settings, unwritable output folder).
    """
    from geounet.engine.settings import PredictSettings
    from geounet.io.folders import check_output_root

    path = Path(path)
    cwd = cwd or Path.cwd()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, ["config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot read config ({exc})"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"not valid YAML ({str(exc).splitlines()[0]}{_yaml_where(exc)})"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, [f"expected a mapping of settings at the top level, got {type(raw).__name__}"])
    base = path.resolve().parent
    problems: list[str] = []
    _check_keys(raw, SCHEMA, "", problems)
    vals = {k: v for k, v in raw.items() if k in SCHEMA and _check_type(v, SCHEMA[k][0], k, problems)}

    task = vals.get("task", "segment")
    if task not in ("segment", "damage"):
        problems.append(f"task: expected segment or damage, got {task!r}")

    # model
    model = None
    card = None
    if "model" not in vals:
        if "model" not in raw:
            problems.append("model: missing (path of a .safetensors model file)")
    else:
        model = _abs(base, vals["model"])
        try:
            card = read_card(model)
        except GeounetError as exc:
            problems.append(f"model: {exc}")

    # output folder
    out_dir = _abs(cwd, out) if out is not None else (_abs(base, vals["out"]) if "out" in vals else None)
    if out_dir is None:
        if "out" not in raw:
            problems.append("out: missing (output folder; or give --out)")
    else:
        try:
            check_output_root(out_dir)
        except GeounetError as exc:
            problems.append(f"out: {exc}")

    # settings
    tiling = _section(raw, "tiling", TILING_KEYS, problems)
    vector_raw = vals.get("vector", True)
    vector = {"enabled": vector_raw} if isinstance(vector_raw, bool) else _section(raw, "vector", VECTOR_KEYS, problems)
    kwargs = dict(tiling)
    for key in ("device", "precision", "backend", "workers", "scheduler"):
        if key in vals:
            kwargs[key] = vals[key]
    kwargs["vector"] = vector.get("enabled", True)
    if "block" in vector:
        kwargs["vector_block"] = vector["block"]
    kwargs["vector_processes"] = None  # large scenes: vector workers in processes (`geounet run` has a __main__ guard)
    settings = PredictSettings(**kwargs)
    from geounet.models.hardware import BACKENDS  # no torch import

    if vals.get("backend", "auto") not in BACKENDS:
        problems.append(f"backend: expected {', '.join(BACKENDS)}, got {vals['backend']!r}")
    if vals.get("precision", "auto") not in ("auto", "fp32", "bf16", "fp16"):
        problems.append(f"precision: expected auto, fp32, bf16 or fp16, got {vals['precision']!r}")
    elif not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(vals.get("device", "auto"))):
        problems.append(f"device: expected auto, cpu, cuda or cuda:N, got {vals['device']!r}")
    elif str(vals.get("device", "")).startswith("cuda"):
        from geounet.models.hardware import resolve_device  # imports torch: only when a GPU is asked for

        try:
            resolve_device(vals["device"])
        except RuntimeError as exc:
            problems.append(f"device: {exc}".replace("--device ", ""))
    if card is not None and task == "segment":
        req = requested_settings(settings, card)
        if req["tile_size"] % 32:
            problems.append(f"tiling.tile_size: must be a multiple of 32 (the U-Net's stride), got {req['tile_size']}")
        if req["overlap"] % 2 or not 0 <= req["overlap"] < req["tile_size"]:
            problems.append(f"tiling.overlap: must be even and smaller than the tile size, got {req['overlap']}")
        for key in ("batch_size", "workers", "chunk_pixels"):
            if getattr(settings, key) is not None and getattr(settings, key) < 1:
                problems.append(f"{key}: must be at least 1, got {getattr(settings, key)}")

    # post-processing overrides
    postprocess = _check_postprocess(raw.get("postprocess") if isinstance(raw.get("postprocess"), dict) else {},
                                     settings, problems)

    if postprocess:
        settings = dataclasses.replace(settings, postprocess=postprocess)
    cfg = PipelineConfig(path, task, model or Path(), out_dir or Path(), settings,
                         hash_inputs=bool(vals.get("hash_inputs", False)), postprocess=postprocess)
    if task == "damage":
        _load_damage(raw, vals, base, cwd, inputs, cfg, problems)
    else:
        for key in ("footprints", "damage"):
            if key in raw:
                problems.append(f"{key}: only for task: damage")
        _load_inputs(raw.get("inputs"), base, cwd, inputs, cfg, problems)
    if problems:
        raise ConfigError(path, problems)
    return cfg


def _yaml_where(exc) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f", line {mark.line + 1}" if mark is not None else ""


def _check_postprocess(section: dict, settings, problems: list[str]) -> dict:
    from geounet.compute.postprocess import ClassRules

    if not section:
        return {}
    fields = {f.name for f in dataclasses.fields(ClassRules)}
    kinds = ("building", "road", "landcover")
    out = {}
    for kind, rules in section.items():
        if kind not in kinds:
            _check_keys({kind: 0}, kinds, "postprocess: ", problems)
            continue
        if not isinstance(rules, dict):
            problems.append(f"postprocess.{kind}: expected a mapping, got {type(rules).__name__}")
            continue
        _check_keys(rules, fields, f"postprocess.{kind}: ", problems)
        for k, v in rules.items():
            if k in fields:
                types = (bool,) if k == "regularize" else (int, float)
                _check_type(v, types, f"postprocess.{kind}.{k}", problems)
        out[kind] = {k: v for k, v in rules.items() if k in fields}
    if out and not any(f.name in ("rules", "postprocess") for f in dataclasses.fields(type(settings))):
        problems.append("postprocess: per-class overrides are not applied by this geounet yet (predict_scene has "
                        "no rules setting); remove the section to use the defaults listed in the README")
    return out


def _expand(patterns: list[str], base: Path, where: str, problems: list[str]) -> list[Path]:
    """Files matching the globs (relative to ``base``); a literal path that does not exist is a problem.

    A wildcard that matches nothing is not an error (a cron run may find no new scenes).
    """
    found: list[Path] = []
    for pat in patterns:
        if not isinstance(pat, str):
            problems.append(f"{where}: expected text (a path or glob), got {type(pat).__name__} {pat!r}")
            continue
        full = str(_abs(base, pat))
        if _has_magic(pat):
            hits = sorted(Path(p) for p in _glob.glob(full, recursive=True) if Path(p).is_file())
            if not hits:
                log.warning("%s: %s matches no file", where, pat)
            found += hits
        elif Path(full).is_file():
            found.append(Path(full))
        else:
            problems.append(f"{where}: {full}: {'is a folder, not a file' if Path(full).is_dir() else 'not found'}")
    return found


def _load_inputs(raw, base: Path, cwd: Path, override: list[str] | None, cfg: PipelineConfig,
                 problems: list[str]) -> None:
    if override:
        cfg.globs = [str(p) for p in _expand(list(override), cwd, "--inputs", problems)]
        return
    if raw is None:
        problems.append("inputs: missing (glob(s), list_file or watch; or give --inputs)")
        return
    if isinstance(raw, (str, list)):
        raw = {"globs": raw}
    if not isinstance(raw, dict):
        return  # type already reported
    _check_keys(raw, INPUT_KEYS, "inputs: ", problems)
    globs = raw.get("globs", [])
    globs = [globs] if isinstance(globs, str) else globs
    if not isinstance(globs, list):
        problems.append(f"inputs.globs: expected text or a list, got {type(globs).__name__}")
        globs = []
    cfg.globs = [str(p) for p in _expand(globs, base, "inputs", problems)]
    if "list_file" in raw:
        if not isinstance(raw["list_file"], str):
            problems.append(f"inputs.list_file: expected text, got {type(raw['list_file']).__name__}")
        else:
            lf = _abs(base, raw["list_file"])
            try:
                lines = [ln.strip() for ln in lf.read_text().splitlines()]
            except OSError as exc:
                problems.append(f"inputs.list_file: {lf}: {exc.strerror or exc}")
            else:
                cfg.list_file = lf
                entries = [ln for ln in lines if ln and not ln.startswith("#")]
                cfg.globs += [str(p) for p in _expand(entries, lf.parent, f"inputs.list_file {lf.name}", problems)]
    if "watch" in raw:
        w = raw["watch"]
        w = {"folder": w} if isinstance(w, str) else w
        if isinstance(w, dict):
            _check_keys(w, WATCH_KEYS, "inputs.watch: ", problems)
            ok = all(_check_type(w[k], WATCH_KEYS[k], f"inputs.watch.{k}", problems) for k in w if k in WATCH_KEYS)
            if "folder" not in w:
                problems.append("inputs.watch: missing folder")
            elif ok:
                folder = _abs(base, w["folder"])
                if not folder.is_dir():
                    problems.append(f"inputs.watch: {folder}: folder not found")
                cfg.watch = WatchSpec(folder, w.get("pattern"), float(w.get("settle_seconds", 60.0)))
        else:
            problems.append(f"inputs.watch: expected a folder or a mapping, got {type(w).__name__}")
    if not raw.get("globs") and "list_file" not in raw and "watch" not in raw:
        problems.append("inputs: give globs, list_file or watch")


def _load_damage(raw: dict, vals: dict, base: Path, cwd: Path, override: list[str] | None, cfg: PipelineConfig,
                 problems: list[str]) -> None:
    """task: damage: ``inputs: {pre: globs, post: globs}``, optional ``footprints``, ``damage:`` settings."""
    inputs = raw.get("inputs")
    if override:
        problems.append("--inputs: not supported for task: damage (give inputs.pre and inputs.post in the config)")
    if not isinstance(inputs, dict) or "pre" not in inputs or "post" not in inputs:
        problems.append("inputs: task: damage needs a mapping with pre and post (globs)")
        return
    _check_keys(inputs, ("pre", "post"), "inputs: ", problems)
    for key in ("pre", "post"):
        pats = inputs[key] if isinstance(inputs[key], list) else [inputs[key]]
        cfg.damage[key] = _expand(pats, base, f"inputs.{key}", problems)
        if not cfg.damage[key]:
            problems.append(f"inputs.{key}: no scene found")
    fp = vals.get("footprints")
    cfg.damage["footprints"] = _abs(base, fp) if fp else None
    if fp and not cfg.damage["footprints"].exists():
        problems.append(f"footprints: {cfg.damage['footprints']}: not found")
    section = vals.get("damage", {})
    try:
        from geounet.damage.run import DamageSettings
    except ImportError:
        problems.append("task: damage is not available in this geounet (no geounet.damage module)")
        return
    names = {f.name for f in dataclasses.fields(DamageSettings)}
    _check_keys(section, names, "damage: ", problems)
    section = {k: v for k, v in section.items() if k in names}
    shared = {"device": vals.get("device"), "precision": vals.get("precision"), **_section(raw, "tiling", TILING_KEYS, [])}
    section = {k: v for k, v in shared.items() if k in names and v is not None} | section  # damage: wins
    try:
        make = getattr(DamageSettings, "from_dict", None) or (lambda d: DamageSettings(**d))
        cfg.damage["settings"] = make(section)
    except (TypeError, ValueError, GeounetError) as exc:
        problems.append(str(exc) if str(exc).startswith("damage:") else f"damage: {exc}")


# ---------------------------------------------------------------- discovery


def discover_inputs(cfg: PipelineConfig, now: float | None = None) -> list[Path]:
    """The scenes of a run: globs and list file, plus the watch folder's settled scene files; absolute, unique."""
    scenes = [Path(p) for p in cfg.globs]
    if cfg.watch is not None and cfg.watch.folder.is_dir():
        now = time.time() if now is None else now
        for entry in sorted(os.scandir(cfg.watch.folder), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            if cfg.watch.pattern:
                if not Path(entry.name).match(cfg.watch.pattern):
                    continue
            elif not entry.name.lower().endswith(SCENE_SUFFIXES):
                continue
            if now - entry.stat().st_mtime < cfg.watch.settle_seconds:
                log.info("%s: modified less than %g s ago, may still be being copied: left for the next run",
                         entry.path, cfg.watch.settle_seconds)
                continue
            scenes.append(Path(entry.path))
    unique: dict[Path, Path] = {}
    for p in scenes:
        unique.setdefault(p.resolve(), p.absolute())
    return list(unique.values())


# ---------------------------------------------------------------- locks and crash recovery


class SceneLock:
    """Non-blocking exclusive ``flock`` on ``OUTDIR/.<stem>.lock``; the holder's pid is written inside.

    The kernel drops the lock when its process dies (even by SIGKILL), so a lock file
    left behind means nothing; it is never deleted (that would race with other runs).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "SceneLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(out_root: Path, stem: str) -> list[str]:
    """Clean what killed runs left for one scene (call with the scene's lock held); returns what was done.

    ``.<stem>.partial-<pid>`` / ``.<stem>.old-<pid>`` folders of processes that are gone
    are stale. If ``<stem>/`` itself is missing, a run died between moving the previous
    outputs aside and moving the new ones in: the newest stale ``.old-`` folder (complete
    previous outputs) is moved back. The rest is removed.
    """
    import shutil

    final = out_root / stem
    stale: list[tuple[str, Path]] = []
    pattern = re.compile(r"\.(partial|old)-(\d+)$")
    prefix = f".{stem}."
    try:
        entries = list(os.scandir(out_root))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        m = pattern.fullmatch(entry.name[len(stem) + 1:])
        if m and not _pid_alive(int(m.group(2))):
            stale.append((m.group(1), Path(entry.path)))
    done = []
    if not final.exists():
        olds = sorted((p for kind, p in stale if kind == "old"), key=lambda p: p.stat().st_mtime)
        if olds:
            os.replace(olds[-1], final)
            stale = [(k, p) for k, p in stale if p != olds[-1]]
            done.append(f"restored previous outputs from {olds[-1].name}")
    for _, p in stale:
        shutil.rmtree(p, ignore_errors=True)
        done.append(f"removed {p.name}")
    return done


# ---------------------------------------------------------------- up-to-date check


def requested_settings(settings, card) -> dict:
    """The output-relevant settings as asked for, tile size and overlap filled from the card (no torch import).

    ``device`` / ``precision`` stay ``"auto"`` when asked so: :func:`up_to_date` then accepts
    whatever the previous run resolved them to.
    """
    out = {k: getattr(settings, k) for k in OUTPUT_SETTINGS}
    out["tile_size"] = settings.tile_size or card.tile_size
    out["overlap"] = card.overlap if settings.overlap is None else settings.overlap
    return out


def _device_kind(device) -> str:
    return str(device or "").split(":")[0]  # cuda:0 and cuda:1 compute the same


def up_to_date(final_dir: Path, scene: Path, model_sha256: str, settings: dict, hash_inputs: bool = False) -> tuple[bool, str]:
    """(True, "") if ``final_dir`` holds complete outputs of this scene, model and settings; else (False, why).

    ``settings`` come from :func:`requested_settings`. The input is the same if
    its size and mtime (ns) match run.json's, or, when they do not (or ``hash_inputs``),
    if its sha256 does.
    """
    try:
        run = json.loads((final_dir / "run.json").read_text())
    except FileNotFoundError:
        return False, "no previous outputs"
    except (OSError, ValueError) as exc:
        return False, f"previous run.json unreadable ({exc})"
    outputs = set(run.get("outputs") or {}) | {"run.json", "item.json", "scores.tif", "classes.tif"}
    if run.get("settings", {}).get("vector"):
        outputs.add("features.gpkg")
    missing = sorted(o for o in outputs if not (final_dir / o).is_file() or (final_dir / o).stat().st_size == 0)
    if missing:
        return False, f"previous outputs incomplete ({', '.join(missing)} missing)"
    rec = run.get("input", {})
    st = scene.stat()
    if rec.get("bytes") != st.st_size:
        return False, "input changed (size)"
    if hash_inputs or rec.get("mtime_ns") != st.st_mtime_ns:
        if rec.get("sha256") != file_sha256(scene):
            return False, "input changed (sha256)"
    if run.get("model", {}).get("sha256") != model_sha256:
        return False, "model file changed"
    old = run.get("settings", {})
    changed = []
    for k in OUTPUT_SETTINGS:
        a, b = old.get(k), settings.get(k)
        if k in ("device", "precision") and b == "auto":
            continue
        if (_device_kind(a) != _device_kind(b)) if k == "device" else (a != b):
            changed.append(f"{k} {a!r} -> {b!r}")
    if changed:
        return False, "settings changed: " + ", ".join(changed)
    return True, ""


# ---------------------------------------------------------------- the batch


@dataclass
class SceneResult:
    scene: str
    status: str  # done | skipped_up_to_date | skipped_locked | failed
    reason: str = ""
    out_dir: str | None = None
    seconds: float = 0.0


@dataclass
class RunSummary:
    config: str | None
    out: str
    started_utc: str
    finished_utc: str = ""
    seconds: float = 0.0
    force: bool = False
    pid: int = field(default_factory=os.getpid)
    scenes: list[SceneResult] = field(default_factory=list)
    summary_file: str = ""
    log_file: str = ""

    def counts(self) -> dict[str, int]:
        keys = ("done", "skipped_up_to_date", "skipped_locked", "failed")
        return {k: sum(r.status == k for r in self.scenes) for k in keys}

    @property
    def ok(self) -> bool:
        return not any(r.status == "failed" for r in self.scenes)

    def to_dict(self) -> dict:
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
        out.append(f"geounet run: {c['done']} done, {c['skipped_up_to_date']} skipped (up to date), "
                   f"{c['skipped_locked']} skipped (locked by another run), {c['failed']} failed "
                   f"in {self.seconds:.1f} s; summary {self.summary_file}")
        return out


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")[:-4] + "Z"  # 1/100 s


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def run_pipeline(cfg: PipelineConfig, force: bool = False, quiet: bool = False) -> RunSummary:
    """Run a checked config over its inputs; never raises for one scene's failure.

    Writes ``OUTDIR/_runs/<UTC timestamp>-<pid>.json`` (the returned summary) and
    ``.log`` (this run's full log, tracebacks included).
    """
    out = cfg.out
    runs = out / RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    stamp = f"{_stamp().replace('.', '')}-{os.getpid()}"
    summary = RunSummary(str(cfg.source) if cfg.source else None, str(out),
                         _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), force=force,
                         summary_file=str(runs / f"{stamp}.json"), log_file=str(runs / f"{stamp}.log"))
    handler = logging.FileHandler(summary.log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    level, effective = log.level, log.getEffectiveLevel()
    others = {h: h.level for h in log.handlers if h is not handler}
    if effective > logging.INFO:  # the file gets INFO even when the console is quiet
        for h, lvl in others.items():
            h.setLevel(max(lvl, effective))
        log.setLevel(logging.INFO)
    t0 = time.perf_counter()
    try:
        log.info("run: config %s, out %s, pid %d%s", cfg.source, out, os.getpid(), ", --force" if force else "")
        if cfg.task == "damage":
            summary.scenes.append(_run_damage(cfg))
        else:
            _run_scenes(cfg, force, quiet, summary)
    finally:
        summary.seconds = round(time.perf_counter() - t0, 3)
        summary.finished_utc = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        c = summary.counts()
        log.info("run finished: %s", ", ".join(f"{k} {v}" for k, v in c.items()))
        _write_json_atomic(Path(summary.summary_file), summary.to_dict())
        log.removeHandler(handler)
        handler.close()
        log.setLevel(level)
        for h, lvl in others.items():
            h.setLevel(lvl)
    return summary


def _run_scenes(cfg: PipelineConfig, force: bool, quiet: bool, summary: RunSummary) -> None:
    from geounet.engine.predict import make_executor, predict_scene
    from geounet.io.folders import output_dir_for

    scenes = discover_inputs(cfg)
    card = read_card(cfg.model)
    settings = dataclasses.replace(cfg.settings, quiet=quiet or cfg.settings.quiet)
    requested = requested_settings(settings, card)
    model_sha = file_sha256(cfg.model)
    log.info("run: %d scene(s), model %s (sha256 %s...)", len(scenes), cfg.model, model_sha[:12])
    owners: dict[str, Path] = {}
    client = None
    try:
        cluster_error = None
        for i, scene in enumerate(scenes, 1):
            t0 = time.perf_counter()
            final = output_dir_for(scene, cfg.out)
            res = SceneResult(str(scene), "failed", out_dir=str(final))
            summary.scenes.append(res)
            if cluster_error:
                res.reason = f"not run: the Dask cluster failed earlier in this run ({cluster_error})"
            elif final.name == RUNS_DIR:
                res.reason = f"output folder name {RUNS_DIR!r} is reserved for run logs: rename the scene"
            elif final.name in owners:
                res.reason = f"writes to the same output folder {final} as {owners[final.name]}: rename one of them"
            else:
                owners[final.name] = scene
                lock = SceneLock(cfg.out / f".{final.name}.lock")
                if not lock.acquire():
                    res.status, res.reason = "skipped_locked", f"locked by another run (pid {lock.holder()})"
                    log.warning("%s: %s", scene, res.reason)
                else:
                    with lock:
                        for what in recover_interrupted(cfg.out, final.name):
                            log.warning("%s: after an interrupted run: %s", scene, what)
                        fresh, why = (False, "--force") if force else up_to_date(
                            final, scene, model_sha, requested, cfg.hash_inputs)
                        if fresh:
                            res.status = "skipped_up_to_date"
                            log.info("[%d/%d] %s: up to date, skipped", i, len(scenes), scene)
                        else:
                            log.info("[%d/%d] %s: computing (%s)", i, len(scenes), scene, why)
                            try:
                                if client is None:
                                    client = make_executor(settings, cfg.model)
                                predict_scene(scene, cfg.out, cfg.model, settings, client)
                                res.status, res.reason = "done", why
                            except GeounetError as exc:
                                res.reason = str(exc)
                            except Exception as exc:  # noqa: BLE001  one bad scene never sinks the batch
                                res.reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                                log.info("%s: traceback:\n%s", scene, traceback.format_exc())
                                if type(exc).__name__ == "ClusterError":  # pipeline: not about one scene
                                    cluster_error = res.reason
            if res.status == "failed":  # console: the CLI's summary says it; the log file gets it now
                log.info("%s", res.reason if res.reason.startswith(str(scene)) else f"{scene}: {res.reason}")
            res.seconds = round(time.perf_counter() - t0, 3)
    finally:
        if client is not None:
            client.close()


def _run_damage(cfg: PipelineConfig) -> SceneResult:
    """task: damage: one call of ``geounet.damage.run_damage`` under an output-folder lock."""
    from geounet.damage.run import run_damage

    t0 = time.perf_counter()
    res = SceneResult("damage", "failed", out_dir=str(cfg.out))
    lock = SceneLock(cfg.out / ".damage.lock")
    if not lock.acquire():
        res.status, res.reason = "skipped_locked", f"locked by another run (pid {lock.holder()})"
        return res
    with lock:
        try:
            run_damage(cfg.damage["pre"], cfg.damage["post"], cfg.out, cfg.damage.get("footprints"), cfg.model,
                       cfg.damage["settings"], None)
            res.status = "done"
        except GeounetError as exc:
            res.reason = str(exc)
        except Exception as exc:  # noqa: BLE001
            res.reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.error("damage: %s\n%s", res.reason, traceback.format_exc())
    res.seconds = round(time.perf_counter() - t0, 3)
    return res
