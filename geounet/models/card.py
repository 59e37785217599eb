"""The geounet model file: an smp network in one ``.safetensors`` file plus its card.

The card is JSON stored in the safetensors header metadata under the key ``geounet``.
It says everything needed to use the weights: architecture and encoder, input bands
(1-based band indexes of the scene, in order) and their normalisation, class names
and colours, the ground resolution the model was trained at (metres per pixel) and
its tile size. Loading reads tensors with ``safetensors`` only: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geounet.errors import ModelError

CARD_KEY = "geounet"
FORMAT_VERSION = 1
CLASS_KINDS = ("background", "building", "road", "landcover")


@dataclass
class ClassInfo:
    """One output class: its name, RGB colour and what kind of map feature it is."""

    name: str
    color: tuple[int, int, int]
    kind: str = "landcover"  # one of CLASS_KINDS: decides the vector layer it goes to


@dataclass
class ModelCard:
    """Everything needed to run a geounet model; stored in the weights file."""

    name: str
    classes: list[ClassInfo]
    bands: list[int]  # 1-based band indexes of the scene, in model input order
    band_names: list[str]
    mean: list[float]  # per input band, after dividing by ``scale``
    std: list[float]
    scale: float  # raw DN / scale -> model units (255 for 8-bit RGB, 10000 for S2 DN)
    input_dtypes: list[str]  # scene dtypes the normalisation is valid for
    resolution_m: float  # ground sampling distance the model was trained at (m / px)
    tile_size: int = 512
    overlap: int = 64
    architecture: str = "Unet"
    encoder: str = "resnet18"
    encoder_depth: int = 5
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 32, 16, 8])
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str | Path | None = None) -> ModelCard:
        try:
            raw = json.loads(text)
            raw["classes"] = [
                ClassInfo(c["name"], tuple(c["color"]), c.get("kind", "landcover")) for c in raw["classes"]
            ]
            known = set(cls.__dataclass_fields__)
            unknown = set(raw) - known
            if unknown:
                raise ValueError(f"unknown card keys {sorted(unknown)}")
            card = cls(**raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(source, f"not a valid geounet model card ({exc})") from None
        card.validate(source)
        return card

    def validate(self, source: str | Path | None = None) -> None:
        problems = []
        if self.format_version > FORMAT_VERSION:
            problems.append(f"format_version {self.format_version} is newer than this geounet reads ({FORMAT_VERSION})")
        if not self.classes:
            problems.append("no classes")
        if len(self.classes) > 254:
            problems.append("more than 254 classes")
        n = len(self.bands)
        if n == 0 or not all(isinstance(b, int) and b >= 1 for b in self.bands):
            problems.append("bands must be 1-based band indexes")
        if not (len(self.mean) == len(self.std) == len(self.band_names) == n):
            problems.append("mean, std and band_names must have one entry per band")
        if any(s <= 0 for s in self.std) or self.scale <= 0:
            problems.append("std and scale must be positive")
        if self.resolution_m <= 0:
            problems.append("resolution_m must be positive")
        if self.tile_size % 32 or self.overlap % 2 or not 0 <= self.overlap < self.tile_size:
            problems.append("tile_size must be a multiple of 32 and overlap even and smaller")
        for c in self.classes:
            if c.kind not in CLASS_KINDS:
                problems.append(f"class {c.name!r} has unknown kind {c.kind!r}")
        if problems:
            raise ModelError(source, "invalid model card: " + "; ".join(problems))

    def describe(self) -> str:
        """Human-readable card, as printed by ``geounet info``."""
        lines = [
            f"name:         {self.name}",
            f"architecture: {self.architecture} (encoder {self.encoder}, depth {self.encoder_depth}, "
            f"decoder {list(self.decoder_channels)})",
            "input bands:  " + ", ".join(f"{b}={n}" for b, n in zip(self.bands, self.band_names)),
            f"input dtypes: {', '.join(self.input_dtypes)}",
            f"normalise:    x / {self.scale:g}, mean {self.mean}, std {self.std}",
            f"resolution:   {self.resolution_m:g} m/px",
            f"tile:         {self.tile_size} px, overlap {self.overlap} px",
            "classes:",
        ]
        for i, c in enumerate(self.classes):
            lines.append(
                f"  {i}: {c.name:<14} kind={c.kind:<10} colour=#{c.color[0]:02x}{c.color[1]:02x}{c.color[2]:02x}"
            )
        if self.training:
            lines.append("training:")
            for k, v in self.training.items():
                lines.append(f"  {k}: {json.dumps(v) if not isinstance(v, str) else v}")
        return "\n".join(lines)


def read_card(path: str | Path) -> ModelCard:
    """Read only the card from a model file's header (no tensors, no pickle)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "model file not found")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        with open(path, "rb") as f:  # name pickles plainly (only sniffed, never unpickled)
            head = f.read(4)
        if head[:1] == b"\x80" or head == b"PK\x03\x04":  # pickle protocol >= 2, or torch.save's zip
            raise ModelError(
                path,
                "not a valid geounet model: a pickle (PyTorch checkpoint), not a safetensors "
                "file; refused, loading pickles can run arbitrary code",
            ) from None
        raise ModelError(path, f"not a valid geounet model: not a safetensors file ({short_message(exc)})") from None
    if CARD_KEY not in meta:
        raise ModelError(path, "not a valid geounet model: safetensors file has no geounet card")
    return ModelCard.from_json(meta[CARD_KEY], path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def normalisation(card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """Per-band float32 ``(gain, offset)``: model input = DN * gain - offset, i.e. (DN / scale - mean) / std."""
    std = np.asarray(card.std, np.float32)
    return 1.0 / (np.float32(card.scale) * std), np.asarray(card.mean, np.float32) / std


def normalise(pixels: np.ndarray, card: ModelCard) -> np.ndarray:
    """Raw DNs (bands, rows, cols) -> float32 model input, per the card."""
    gain, offset = normalisation(card)
    x = pixels.astype(np.float32)
    x *= gain[:, None, None]
    x -= offset[:, None, None]
    return x


def short_message(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
