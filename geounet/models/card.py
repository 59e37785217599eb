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
from geounet.schema import choice_problem

CARD_KEY = "geounet"
FORMAT_VERSION = 1
CLASS_KINDS = ("background", "building", "road", "landcover")
# The smp architectures and encoders a card may name (segmentation_models_pytorch 0.6; DPT is left
# out: it takes ``tu-`` encoders only and no encoder_depth). tests/models/test_card.py checks
# these against smp's own lists, so that an smp upgrade cannot leave them behind unnoticed.
ARCHITECTURES = (
    "Unet",
    "UnetPlusPlus",
    "FPN",
    "PSPNet",
    "DeepLabV3",
    "DeepLabV3Plus",
    "Linknet",
    "MAnet",
    "PAN",
    "UPerNet",
    "Segformer",
)
ENCODERS = (
    *(f"resnet{n}" for n in (18, 34, 50, 101, 152)),
    *(f"resnext{n}" for n in ("50_32x4d", "101_32x4d", "101_32x8d", "101_32x16d", "101_32x32d", "101_32x48d")),
    *(f"dpn{n}" for n in ("68", "68b", "92", "98", "107", "131")),
    *(f"vgg{n}{bn}" for n in (11, 13, 16, 19) for bn in ("", "_bn")),
    "senet154",
    *(f"se_resnet{n}" for n in (50, 101, 152)),
    "se_resnext50_32x4d",
    "se_resnext101_32x4d",
    *(f"densenet{n}" for n in (121, 169, 201, 161)),
    "inceptionresnetv2",
    "inceptionv4",
    *(f"efficientnet-b{n}" for n in range(8)),
    "mobilenet_v2",
    "xception",
    *(f"timm-efficientnet-b{n}" for n in range(9)),
    "timm-efficientnet-l2",
    *(f"timm-tf_efficientnet_lite{n}" for n in range(5)),
    "timm-skresnet18",
    "timm-skresnet34",
    "timm-skresnext50_32x4d",
    *(f"mit_b{n}" for n in range(6)),
    *(f"mobileone_s{n}" for n in range(5)),
)
TIMM_PREFIX = "tu-"  # smp's "timm universal" encoders: tu-<any timm model>, checked by timm when built
# The class a model marks where two buildings touch (kind background), unless the card's training
# section names another (``training.contact_class``, written by geounet train from labels.contact_class).
CONTACT_CLASS = "contact"


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
    # class name -> factor on its probability before the winning class is picked (classes.tif and
    # the polygons; scores.tif keeps the network's probabilities); classes not named: 1
    decision_weights: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    @property
    def contact_ids(self) -> list[int]:
        """Indexes of the classes that mark where two buildings touch (``labels.contact_class`` in training).

        Such a class has kind ``background``; its name is ``training.contact_class`` where the
        card records one, else ``contact`` (model files written before that field existed).
        The first class (the background) is never one.
        """
        name = self.training.get("contact_class") or CONTACT_CLASS
        return [i for i, c in enumerate(self.classes) if i > 0 and c.kind == "background" and c.name == name]

    def to_json(self) -> str:
        """The card as stored; ``decision_weights`` only when set, so that cards without them stay
        readable by geounet versions that came before it."""
        raw = asdict(self)
        if not raw["decision_weights"]:
            del raw["decision_weights"]
        return json.dumps(raw, sort_keys=True)

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
                problems.append(f"class {c.name!r} has unknown kind {c.kind!r} (one of {', '.join(CLASS_KINDS)})")
        problems += [p for p in network_problems(self.architecture, self.encoder, "") if p]
        problem = decision_weights_problem(self.decision_weights, self.class_names, "decision_weights")
        if problem:
            problems.append(problem)
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
            weight = self.decision_weights.get(c.name, 1.0)
            lines.append(
                f"  {i}: {c.name:<14} kind={c.kind:<10} colour=#{c.color[0]:02x}{c.color[1]:02x}{c.color[2]:02x}"
                + (f" decision weight {weight:g}" if weight != 1.0 else "")
            )
        if self.training:
            lines.append("training:")
            for k, v in self.training.items():
                lines.append(f"  {k}: {json.dumps(v) if not isinstance(v, str) else v}")
        return "\n".join(lines)


MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses larger JSON headers
# The network's first convolution (its weight is (out, in_channels, kh, kw)) as smp names it,
# per encoder family: resnet*/resnext*/xception/timm-skresnet*, timm-efficientnet*/lite*,
# efficientnet-b*, mobilenet_v2, vgg*, densenet*, dpn*, inceptionv4, se*net*, inceptionresnetv2,
# mobileone*, mit_b*; ``tu-`` (timm universal) encoders have them under ``encoder.model.``.
STEM_TENSORS = (
    "encoder.conv1.weight",
    "encoder.conv_stem.weight",
    "encoder._conv_stem.weight",
    "encoder.features.0.0.weight",
    "encoder.features.0.weight",
    "encoder.features.conv0.weight",
    "encoder.features.conv1_1.conv.weight",
    "encoder.features.0.conv.weight",
    "encoder.layer0.conv1.weight",
    "encoder.conv2d_1a.conv.weight",
    "encoder.stage0.rbr_conv.0.conv.weight",
    "encoder.patch_embed1.proj.weight",
    "encoder.model.conv1.weight",
    "encoder.model.conv1.0.weight",
    "encoder.model.conv_stem.weight",
    "encoder.model.stem.0.weight",
    "encoder.model.stem_0.weight",
    "encoder.model.stem.conv.weight",
)
HEAD_TENSOR = (
    "segmentation_head.0.weight"  # the last convolution: (classes, channels, kh, kw) in every smp architecture
)


@dataclass(frozen=True)
class Header:
    """A safetensors file's JSON header: its metadata strings and each tensor's shape (nothing loaded)."""

    metadata: dict[str, str]
    shapes: dict[str, tuple[int, ...]]


def decision_weights_problem(weights: Any, class_names: list[str], where: str) -> str | None:
    """What is wrong with a {class name: weight} map (``where``: how the messages name it), or None."""
    if not isinstance(weights, dict):
        return f"{where} must map class names to weights, got {weights!r}"
    for name, weight in weights.items():
        if name not in class_names:
            return f"{where}: unknown class {name!r} (classes: {', '.join(class_names)})"
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < float("inf"):
            return f"{where}: the weight of {name!r} must be a positive number, got {weight!r}"
    return None


def decision_weight_array(card: ModelCard, weights: dict[str, float] | None) -> np.ndarray | None:
    """One float32 factor per class of ``card`` (``weights`` by class name, the rest 1), or None when all are 1."""
    factors = np.array([float((weights or {}).get(n, 1.0)) for n in card.class_names], np.float32)
    return None if bool(np.all(factors == 1.0)) else factors


def network_problems(architecture: str, encoder: str, where: str = "") -> list[str]:
    """An smp architecture or encoder name this geounet cannot build, one line each listing the valid ones.

    ``where``: the section of the keys in the messages (``"model."``; ``""``: none).
    """
    problems = [choice_problem(f"{where}architecture", architecture, ARCHITECTURES)]
    if not (isinstance(encoder, str) and encoder.startswith(TIMM_PREFIX) and len(encoder) > len(TIMM_PREFIX)):
        problems.append(choice_problem(f"{where}encoder", encoder, ENCODERS, f" or {TIMM_PREFIX}<timm model>"))
    return [p for p in problems if p]


def read_card(path: str | Path) -> ModelCard:
    """Read only the card from a model file's header (no tensors, no pickle).

    The card is checked against the tensor shapes the header declares: the first
    convolution takes one input channel per card band, the segmentation head gives one
    output channel per card class.
    """
    path = Path(path)
    header = read_header(path)
    if CARD_KEY not in header.metadata:
        raise ModelError(
            path,
            "not a valid geounet model: safetensors file has no geounet card "
            "(a geounet model is written by geounet train)",
        )
    card = ModelCard.from_json(header.metadata[CARD_KEY], path)
    problem = shape_problem(card, header.shapes)
    if problem:
        raise ModelError(path, problem)
    return card


def read_header(path: str | Path) -> Header:
    """The header of a safetensors file, its structure checked; one-line :class:`ModelError` otherwise.

    The layout: 8 bytes little-endian header length N, N bytes of JSON starting with ``{``
    (tensor name -> dtype, shape, data_offsets relative to the data; ``__metadata__``),
    then the data, whose size must be the largest ``data_offsets`` end. A file that is not
    one is told apart from a pickle (PyTorch checkpoint) by that structure, never by
    unpickling it; the JSON is the only thing parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "model file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        n = int.from_bytes(head[:8], "little")
        if len(head) < 9 or n > MAX_HEADER_BYTES or head[8:9] != b"{":
            raise ModelError(path, _not_safetensors(head, size))
        text = head[8:] + f.read(n - 1)
    if len(text) < n:
        raise ModelError(path, _truncated(size, 8 + n, "at least "))
    try:
        raw = json.loads(text)
        shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in raw.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for k, v in raw.items() if k != "__metadata__"), default=0)
        metadata = raw.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("__metadata__ is not a mapping")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ModelError(
            path, f"not a valid safetensors file: its header is not JSON tensor entries ({short_message(exc)})"
        ) from None
    if size < 8 + n + end:
        raise ModelError(path, _truncated(size, 8 + n + end))
    if size > 8 + n + end:
        raise ModelError(
            path,
            f"not a valid safetensors file: {size} bytes, the header says {8 + n + end} "
            "(data after the last tensor); copy or download the model file again",
        )
    return Header({str(k): str(v) for k, v in metadata.items()}, shapes)


def _truncated(size: int, expected: int, at_least: str = "") -> str:
    return (
        f"truncated safetensors file: {size} bytes, the header says {at_least}{expected}; "
        "copy or download the model file again"
    )


def _not_safetensors(head: bytes, size: int) -> str:
    """What a file that does not start like a safetensors file is: a pickle, a zip, or neither."""
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        kind = "a PyTorch checkpoint (torch.save zip)" if head[:1] == b"P" else "a pickle (PyTorch checkpoint)"
        return (
            f"not a valid geounet model: {kind}, not a safetensors file; refused, loading pickles can run "
            "arbitrary code (give a .safetensors model written by geounet train)"
        )
    if size < 9:
        return f"not a valid geounet model: not a safetensors file (only {size} bytes)"
    return (
        "not a valid geounet model: not a safetensors file (it does not start with an 8-byte header "
        "length and a JSON header); give a .safetensors model written by geounet train"
    )


def stem_tensor(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The name of the network's first convolution weight among ``shapes`` (None: not a known encoder's)."""
    return next((k for k in STEM_TENSORS if len(shapes.get(k, ())) == 4), None)


def shape_problem(card: ModelCard, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Where the card's bands or classes disagree with the weights' shapes (from the header alone), if anywhere."""
    stem = stem_tensor(shapes)
    if stem is not None and shapes[stem][1] != len(card.bands):
        return (
            f"card does not fit the weights: bands {card.bands} are {len(card.bands)} input channel(s), "
            f"but the first convolution {stem} {list(shapes[stem])} takes {shapes[stem][1]}; "
            "fix the card's bands (and mean, std, band_names) or use the weights it was written for"
        )
    head = shapes.get(HEAD_TENSOR)
    if head and head[0] != len(card.classes):
        return (
            f"card does not fit the weights: classes {card.class_names} are {len(card.classes)}, "
            f"but the segmentation head {HEAD_TENSOR} {list(head)} gives {head[0]}; "
            "fix the card's classes or use the weights it was written for"
        )
    return None


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
