"""A trained damage head: per-building change measures -> xBD damage grade.

It replaces the fixed thresholds of a damage run when damage-labelled buildings exist
(xBD-style polygons with a damage attribute). Features, per building, are the means over
its footprint that every damage run computes (``FEATURES``: the heuristic change score,
the building probability in pre and in post, the encoder feature distance). The head is a
multinomial logistic regression over the four xBD grades, fitted with class-balanced
weights and an L2 penalty (pure numpy, :func:`fit_head`). It is saved as a safetensors
file (arrays + a JSON card in the metadata; loading never unpickles).

``geounet train CONFIG.yaml`` with ``task: damage_head`` trains one
(``geounet.damage.head_training``); ``geounet damage --config`` with
``damage: {head: FILE}`` then grades with it.
"""

from __future__ import annotations

import json
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
    card = {
        "kind": "damage_head",
        "features": list(FEATURES),
        "grades": list(GRADES),
        "severity": SEVERITY.tolist(),
        **head.facts,
    }
    tmp = path.with_name(f".{path.name}.partial")
    save_file(
        {"weights": head.weights, "bias": head.bias, "mean": head.mean, "std": head.std},
        str(tmp),
        metadata={CARD_KEY: json.dumps(card)},
    )
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
