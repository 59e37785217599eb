"""Training a damage head: ``geounet train CONFIG.yaml`` with ``task: damage_head``.

The config names labelled pre/post pairs (xBD-style footprints with a damage attribute).
:func:`train_damage_head` runs a damage run over each pair (the same measures as
``geounet damage``), fits the head (``geounet.damage.head``) on the ``train`` pairs'
buildings, scores it on the ``val`` pairs' and writes it. The config is checked through
``geounet.schema``: every problem of a file is reported at once.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np

from geounet.compute.change import GRADES
from geounet.compute.metrics import confusion_matrix, pixel_scores
from geounet.damage.head import FEATURES, fit_head, save_head
from geounet.damage.run import run_damage
from geounet.damage.settings import DamageSettings
from geounet.errors import GeounetError
from geounet.schema import ConfigError, check_fields, read_yaml

TASK = "damage_head"


@dataclass
class PairConfig:
    """One labelled pair: pre tiles, post tiles (one path or a list; a list once loaded), the labels file."""

    pre: list[Path] | Path
    post: list[Path] | Path
    labels: Path

    def __post_init__(self) -> None:
        self.pre = self.pre if isinstance(self.pre, list) else [self.pre]
        self.post = self.post if isinstance(self.post, list) else [self.post]

    def files(self) -> list[Path]:
        return [*self.pre, *self.post, self.labels]  # type: ignore[misc]


@dataclass
class HeadData:
    """The config's ``data:``: pairs to fit the head on (``train``) and to score it on (``val``)."""

    train: list[PairConfig] = field(default_factory=list)
    val: list[PairConfig] = field(default_factory=list)


@dataclass
class HeadConfig:
    """A ``task: damage_head`` training config (relative paths: relative to the config file)."""

    task: str = TASK
    name: str | None = None
    output: Path | None = None  # the .safetensors head to write (or geounet train --out)
    model: Path | None = None  # the buildings model whose measures the head learns from
    data: HeadData = field(default_factory=HeadData)
    damage_field: str = "damage"  # the labels' attribute with the grade
    value_map: dict[str, str] | None = None  # label value -> xBD grade or "ignore"; null: {}
    damage: dict[str, Any] | None = None  # DamageSettings fields for the measures; null: {}
    l2: float = 1e-3  # the head's L2 penalty
    source: Path | None = field(default=None, init=False)  # the config file

    def __post_init__(self) -> None:
        self.value_map = self.value_map or {}
        self.damage = self.damage or {}

    @property
    def train(self) -> list[PairConfig]:
        return self.data.train

    @property
    def val(self) -> list[PairConfig]:
        return self.data.val


def is_head_config(path: str | Path) -> bool:
    """True when a YAML config asks for ``task: damage_head``."""
    try:
        raw = read_yaml(path)
    except ConfigError:  # the regular loader reports unreadable configs
        return False
    return raw.get("task") == TASK


def load_head_config(path: str | Path, output: str | Path | None = None) -> HeadConfig:
    """Read and check a ``task: damage_head`` config; one :class:`ConfigError` lists every problem.

    ``output``: overrides the config's ``output`` (relative: to the config's folder, as there).
    """
    path = Path(path)
    raw = read_yaml(path)
    base = path.resolve().parent
    good, problems = check_fields(HeadConfig, raw, "", base)
    cfg = HeadConfig(**good)
    cfg.source = path
    if output is not None:
        out = Path(output).expanduser()
        cfg.output = out if out.is_absolute() else base / out
    problems += _problems(cfg, wrong=set(raw) - set(good))
    if problems:
        raise ConfigError(path, problems)
    return cfg


def _problems(cfg: HeadConfig, wrong: set[str]) -> list[str]:
    """What types cannot say: missing files and pairs, unknown grades, the damage settings' values."""
    problems = []
    if "data" not in wrong:
        for name, pairs in (("train", cfg.train), ("val", cfg.val)):
            for i, pair in enumerate(pairs):
                problems += [f"data.{name}[{i}]: {f}: file not found" for f in pair.files() if not f.exists()]
            if not pairs:
                problems.append(f"data.{name}: no pre/post/labels pairs")
    if cfg.output is None:
        problems.append("output: missing (the .safetensors head to write)")
    if "model" not in wrong and (cfg.model is None or not cfg.model.exists()):
        problems.append(f"model: {cfg.model}: buildings model file not found")
    bad = sorted({v for v in (cfg.value_map or {}).values() if v not in GRADES and v != "ignore"})
    if bad:
        problems.append(f"value_map: {bad} are not xBD grades {list(GRADES)} or 'ignore'")
    if "damage" not in wrong:
        problems += DamageSettings.check(cfg.damage, "damage")[1]
    return problems


def _features(cfg: HeadConfig, pairs: list[PairConfig], work: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Run the damage measures over labelled pairs -> (features, grade indexes, labels skipped)."""
    settings = DamageSettings.from_dict({**(cfg.damage or {}), "head": None, "quiet": True})
    value_map = cfg.value_map or {}
    xs, ys, skipped = [], [], 0
    for i, pair in enumerate(pairs):
        labels = gpd.read_file(pair.labels)
        if cfg.damage_field not in labels.columns:
            raise GeounetError(
                pair.labels, f"labels have no field {cfg.damage_field!r} (fields: {list(labels.columns)})"
            )
        raw = labels[cfg.damage_field].astype(str).map(lambda v: value_map.get(v, v))
        unknown = sorted(set(raw) - set(GRADES) - {"ignore"} - set(value_map))
        out = work / f"pair{i}"
        run_damage(pair.pre, pair.post, out, pair.labels, cfg.model, settings)  # type: ignore[arg-type]
        res = gpd.read_file(out / "damage.gpkg", layer="buildings")
        grade_of = raw.to_numpy()[res.footprint_id.to_numpy()]
        ok = np.isin(grade_of, GRADES) & res.damage_score.notna().to_numpy()
        skipped += int((~ok).sum())
        if unknown and ok.sum() == 0:
            raise GeounetError(pair.labels, f"field {cfg.damage_field!r} has no xBD grade, only {unknown[:5]}")
        xs.append(res.loc[ok, list(FEATURES)].to_numpy(np.float64))
        ys.append(np.array([GRADES.index(g) for g in grade_of[ok]], np.int64))
    return np.concatenate(xs), np.concatenate(ys), skipped


def train_damage_head(cfg: HeadConfig, command: str | None = None) -> dict[str, Any]:
    """Fit the head on the train pairs, score it on the val pairs, write ``cfg.output``; returns the facts."""
    assert cfg.output is not None  # load_head_config checked it
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="geounet-head-"))
    try:
        x, y, skipped_train = _features(cfg, cfg.train, work / "train")
        try:
            head = fit_head(x, y, l2=cfg.l2)
        except ValueError as exc:
            raise GeounetError(cfg.source, str(exc)) from None
        xv, yv, skipped_val = _features(cfg, cfg.val, work / "val")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pred, _ = head.predict(xv)
    scores = pixel_scores(confusion_matrix(pred, yv, len(GRADES)), list(GRADES))
    f1 = [s["f1"] for s in scores["classes"].values() if s["f1"] is not None]
    head.facts = {
        "command": command,
        "model": str(cfg.model),
        "damage_settings": cfg.damage,
        "l2": cfg.l2,
        "train": {
            "buildings": int(len(y)),
            "per_grade": np.bincount(y, minlength=len(GRADES)).tolist(),
            "skipped": skipped_train,
        },
        "val": {
            "buildings": int(len(yv)),
            "accuracy": scores["pixel_accuracy"],
            "macro_f1": float(np.mean(f1)) if f1 else None,
            "f1": {g: s["f1"] for g, s in scores["classes"].items()},
            "skipped": skipped_val,
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    save_head(cfg.output, head)
    return head.facts | {"output": str(cfg.output)}
