"""A trained damage head: per-building change measures -> xBD damage grade.

It replaces the fixed thresholds of a damage run when damage-labelled buildings exist
(xBD-style polygons with a damage attribute). Features, per building, are the means over
its footprint that every damage run computes (``FEATURES``: the heuristic change score,
the building probability in pre and in post, the encoder feature distance). The head is a
multinomial logistic regression over the four xBD grades, fitted with class-balanced
weights and an L2 penalty (pure numpy, :func:`fit_head`). It is saved as a safetensors
file (arrays + a JSON card in the metadata; loading never unpickles).

``geounet train CONFIG.yaml`` with ``task: damage_head`` runs the damage measures over
labelled pre/post pairs (:func:`train_damage_head`), fits the head on the ``train``
pairs and scores it on the ``val`` pairs; ``geounet damage --config`` with
``damage: {head: FILE}`` then grades with it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geounet.compute.change import GRADES
from geounet.errors import GeounetError

FEATURES = ("damage_score", "building_prob_pre", "building_prob_post", "feature_distance")
SEVERITY = np.linspace(0.0, 1.0, len(GRADES))  # damage_score of each grade: 0, 1/3, 2/3, 1
CARD_KEY = "geounet_damage_head"


@dataclass
class DamageHead:
    """Softmax regression over standardised features: ``p = softmax(((x - mean) / std) @ weights + bias)``."""

    weights: np.ndarray  # (features, grades)
    bias: np.ndarray  # (grades,)
    mean: np.ndarray  # (features,)
    std: np.ndarray
    facts: dict = field(default_factory=dict)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """``(n, features)`` -> ``(n, grades)`` probabilities (rows with NaN give NaN)."""
        z = ((np.asarray(x, np.float64) - self.mean) / self.std) @ self.weights + self.bias
        z -= np.nanmax(z, axis=1, keepdims=True) if len(z) else 0.0
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grade index (argmax) and damage_score (expected severity in [0, 1]) per row."""
        p = self.probabilities(x)
        return np.argmax(np.nan_to_num(p, nan=-1.0), axis=1), p @ SEVERITY


def fit_head(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 3000, lr: float = 0.5) -> DamageHead:
    """Fit the head on features ``x`` (n, features) and grade indexes ``y`` (n,), full-batch gradient descent.

    Each grade present gets the same total weight (class-balanced); absent grades get
    no examples and end with low probabilities.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.int64)
    if len(x) == 0 or len(np.unique(y)) < 2:
        raise ValueError("a damage head needs labelled buildings of at least two grades")
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-9, std, 1.0)
    xs = (x - mean) / std
    k = len(GRADES)
    onehot = np.eye(k)[y]
    counts = np.bincount(y, minlength=k).astype(np.float64)
    w_class = np.where(counts > 0, len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
    sample_w = w_class[y] / len(y)
    weights = np.zeros((x.shape[1], k))
    bias = np.zeros(k)
    for _ in range(steps):
        z = xs @ weights + bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) * sample_w[:, None]
        weights -= lr * (xs.T @ g + l2 * weights)
        bias -= lr * g.sum(0)
    return DamageHead(weights, bias, mean, std)


def save_head(path: str | Path, head: DamageHead) -> None:
    """Write the head (safetensors: float64 arrays + JSON card), via a temporary name."""
    from safetensors.numpy import save_file

    path = Path(path)
    card = {"kind": "damage_head", "features": list(FEATURES), "grades": list(GRADES),
            "severity": SEVERITY.tolist(), **head.facts}
    tmp = path.with_name(f".{path.name}.partial")
    save_file({"weights": head.weights, "bias": head.bias, "mean": head.mean, "std": head.std}, str(tmp),
              metadata={CARD_KEY: json.dumps(card)})
    tmp.replace(path)


def load_head(path: str | Path) -> DamageHead:
    """Read a head written by :func:`save_head`; anything else is a one-line error."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GeounetError(path, "damage head file not found")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds
        raise GeounetError(path, f"not a safetensors damage head ({str(exc).splitlines()[0][:120]})") from None
    if CARD_KEY not in meta:
        raise GeounetError(path, "not a geounet damage head (no damage-head card in the file)")
    card = json.loads(meta[CARD_KEY])
    if card.get("features") != list(FEATURES) or card.get("grades") != list(GRADES):
        raise GeounetError(path, f"damage head made for features {card.get('features')} / grades {card.get('grades')}")
    return DamageHead(arrays["weights"], arrays["bias"], arrays["mean"], arrays["std"], card)


# ----------------------------------------------------------------------------- training


@dataclass
class PairConfig:
    pre: list[Path]
    post: list[Path]
    labels: Path


@dataclass
class HeadConfig:
    """``task: damage_head`` training config (relative paths: relative to the config file)."""

    output: Path
    model: Path
    train: list[PairConfig]
    val: list[PairConfig]
    damage_field: str = "damage"
    value_map: dict[str, str] = field(default_factory=dict)  # label value -> grade or "ignore"
    damage: dict = field(default_factory=dict)  # DamageSettings for the measures
    l2: float = 1e-3
    source: Path | None = None


_KEYS = {"task", "name", "output", "model", "data", "damage_field", "value_map", "damage", "l2"}


def load_head_config(path: str | Path, output: str | Path | None = None) -> HeadConfig:
    """Read and check a ``task: damage_head`` config; every problem is reported at once."""
    import difflib

    import yaml

    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    base = path.resolve().parent
    problems = []
    for key in sorted(set(raw) - _KEYS):
        close = difflib.get_close_matches(key, sorted(_KEYS), n=1)
        problems.append(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))

    def p(v) -> Path:
        q = Path(str(v)).expanduser()
        return q if q.is_absolute() else base / q

    def pairs(name: str) -> list[PairConfig]:
        out = []
        for i, item in enumerate((raw.get("data") or {}).get(name) or []):
            if not isinstance(item, dict) or set(item) != {"pre", "post", "labels"}:
                problems.append(f"data.{name}[{i}]: needs exactly pre, post and labels")
                continue
            pre = [p(v) for v in (item["pre"] if isinstance(item["pre"], list) else [item["pre"]])]
            post = [p(v) for v in (item["post"] if isinstance(item["post"], list) else [item["post"]])]
            for f in (*pre, *post, p(item["labels"])):
                if not f.exists():
                    problems.append(f"data.{name}[{i}]: {f}: file not found")
            out.append(PairConfig(pre, post, p(item["labels"])))
        if not out:
            problems.append(f"data.{name}: no pre/post/labels pairs")
        return out

    train, val = pairs("train"), pairs("val")
    out = output or raw.get("output")
    if not out:
        problems.append("output: missing (the .safetensors head to write)")
    model = raw.get("model")
    if not model or not p(model).exists():
        problems.append(f"model: {model}: buildings model file not found")
    bad = sorted({v for v in (raw.get("value_map") or {}).values() if v not in GRADES and v != "ignore"})
    if bad:
        problems.append(f"value_map: {bad} are not xBD grades {list(GRADES)} or 'ignore'")
    if problems:
        raise GeounetError(path, "; ".join(problems))
    return HeadConfig(p(out), p(model), train, val, str(raw.get("damage_field", "damage")),
                      {str(k): str(v) for k, v in (raw.get("value_map") or {}).items()}, dict(raw.get("damage") or {}),
                      float(raw.get("l2", 1e-3)), path)


def _features(cfg: HeadConfig, pairs: list[PairConfig], work: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Run the damage measures over labelled pairs -> (features, grade indexes, labels skipped)."""
    import geopandas as gpd

    from geounet.damage.run import DamageSettings, run_damage

    settings = DamageSettings.from_dict({**cfg.damage, "head": None, "quiet": True})
    xs, ys, skipped = [], [], 0
    for i, pair in enumerate(pairs):
        labels = gpd.read_file(pair.labels)
        if cfg.damage_field not in labels.columns:
            raise GeounetError(pair.labels, f"labels have no field {cfg.damage_field!r} (fields: {list(labels.columns)})")
        raw = labels[cfg.damage_field].astype(str).map(lambda v: cfg.value_map.get(v, v))
        unknown = sorted(set(raw) - set(GRADES) - {"ignore"} - set(cfg.value_map))
        out = work / f"pair{i}"
        run_damage(pair.pre, pair.post, out, pair.labels, cfg.model, settings)
        res = gpd.read_file(out / "damage.gpkg", layer="buildings")
        grade_of = raw.to_numpy()[res.footprint_id.to_numpy()]
        ok = np.isin(grade_of, GRADES) & res.damage_score.notna().to_numpy()
        skipped += int((~ok).sum())
        if unknown and ok.sum() == 0:
            raise GeounetError(pair.labels, f"field {cfg.damage_field!r} has no xBD grade, only {unknown[:5]}")
        xs.append(res.loc[ok, list(FEATURES)].to_numpy(np.float64))
        ys.append(np.array([GRADES.index(g) for g in grade_of[ok]], np.int64))
    return np.concatenate(xs), np.concatenate(ys), skipped


def train_damage_head(cfg: HeadConfig, command: str | None = None) -> dict:
    """Fit the head on the train pairs, score it on the val pairs, write ``cfg.output``; returns the facts."""
    from geounet.compute.metrics import confusion_matrix, pixel_scores

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
        "command": command, "model": str(cfg.model), "damage_settings": cfg.damage, "l2": cfg.l2,
        "train": {"buildings": int(len(y)), "per_grade": np.bincount(y, minlength=len(GRADES)).tolist(),
                  "skipped": skipped_train},
        "val": {"buildings": int(len(yv)), "accuracy": scores["pixel_accuracy"],
                "macro_f1": float(np.mean(f1)) if f1 else None,
                "f1": {g: s["f1"] for g, s in scores["classes"].items()}, "skipped": skipped_val},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    save_head(cfg.output, head)
    return head.facts | {"output": str(cfg.output)}


def is_head_config(path: str | Path) -> bool:
    """True when a YAML config asks for ``task: damage_head``."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except Exception:  # noqa: BLE001 - the regular loader reports unreadable configs
        return False
    return isinstance(raw, dict) and raw.get("task") == "damage_head"

