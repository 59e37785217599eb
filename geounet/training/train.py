"""Train a geounet segmentation model from GeoTIFF scenes and labels.

The training config is YAML (see ``configs/buildings_kampala.yaml``); relative paths in
it are relative to the config file's folder. Every scene is read resampled to the
training ground resolution ``resolution_m`` (metres per pixel on the ground, measured
geodesically at the scene centre, so EPSG:4326 and EPSG:3857 scenes are right) in its
own CRS, with its dataset mask: pixels outside the mask, and unlabelled pixels where
the labels cover only part of a scene, get the ignore index 255.

Training draws random chips (biased towards chips with the rare, non-background
classes), augments them with plain torch ops, optimises Dice+CE (or another
``segmentation_models_pytorch`` loss) with AdamW and a cosine schedule, validates on
held-out scenes or regions each epoch (pixel IoU of the non-background classes), stops
early when that stops improving, and writes the best network with its
``ModelCard`` to a safetensors file (``geounet.model.save_model``). Next to it go a CSV
log of the epochs and a resume checkpoint (``<model stem>.ckpt.pt``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import platform
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geounet.errors import GeounetError
from geounet.engine.tiles import cpu_cores, predict_array, resolve_precision
from geounet.io.labels import IGNORE_INDEX, RASTER_LABEL_SUFFIXES, labels_to_raster, read_label_raster, read_vector_labels
from geounet.models.card import CLASS_KINDS, ClassInfo, ModelCard, build_network, save_model
from geounet.io.scene import ground_pixel_size

LOSSES = ("dice_ce", "ce", "bce", "dice", "focal", "tversky")
PRECISIONS = ("auto", "fp32", "bf16")
RESAMPLINGS = ("auto", "nearest", "bilinear", "cubic", "average")


# --------------------------------------------------------------------------- config


@dataclass
class ClassConfig:
    """One output class: name, kind (background/building/road/landcover), RGB colour."""

    name: str
    color: list[int]
    kind: str = "landcover"


@dataclass
class SceneConfig:
    """A scene and its labels (a vector file, or a class raster: .tif/.tiff/.vrt/.img/.jp2).

    ``window`` keeps a part of the scene: ``[x0, y0, x1, y1]`` as fractions of its width
    and height from the top-left corner, e.g. ``[0, 0, 0.75, 1]`` for the left 75 %.
    """

    image: Path
    labels: Path
    window: list[float] | None = None
    weight: float = 1.0  # share of the random chips, relative to the scene's labelled area


@dataclass
class DataConfig:
    """Scenes, input bands and their normalisation, and the training ground resolution."""

    train: list[SceneConfig]
    val: list[SceneConfig]
    resolution_m: float  # metres per pixel on the ground
    bands: list[int] = field(default_factory=lambda: [1, 2, 3])  # 1-based
    band_names: list[str] | None = None  # default: the scene's colour interpretation
    scale: float | None = None  # DN / scale -> model units; default 255 for uint8 scenes
    mean: list[float] | None = None  # per band after / scale; default: from the train scenes
    std: list[float] | None = None
    resampling: str = "auto"  # auto: average when shrinking, bilinear when enlarging


@dataclass
class LabelConfig:
    """How vector labels become classes."""

    class_field: str | None = None  # attribute holding the class; None: all are default_class
    default_class: str | None = None  # class of features with no class_field / a null value
    value_map: dict[str, str] = field(default_factory=dict)  # value -> class name or "ignore"
    line_width_m: float = 3.0  # lines are buffered to this width (metres)
    all_touched: bool = False
    unlabelled: str = "background"  # pixels no label covers: "background" or "ignore"
    layer: str | None = None


@dataclass
class ModelConfig:
    """The smp network and the tiling used at prediction time."""

    architecture: str = "Unet"
    encoder: str = "resnet18"
    encoder_depth: int = 5
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 32, 16, 8])
    tile_size: int = 512  # px, for prediction and validation
    overlap: int = 64  # px


@dataclass
class TrainOptions:
    """Optimisation settings."""

    epochs: int = 20
    steps_per_epoch: int = 100
    batch_size: int = 8
    chip_size: int = 256  # px at resolution_m
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    loss: str = "dice_ce"  # one of LOSSES
    class_weights: list[float] | None = None  # one per class, for the CE / BCE term (ce, bce, dice_ce)
    rare_class_bias: float = 0.5  # share of chips centred on a non-background class pixel
    min_labelled: float = 0.2  # chips with less labelled area are redrawn (a few times)
    patience: int = 5  # epochs without a better val IoU before stopping
    ema_decay: float = 0.0  # >0: validate and keep an exponential moving average of the weights
    seed: int = 0
    precision: str = "auto"  # auto: bf16 on CUDA or AVX512/AMX CPUs, else fp32
    channels_last: bool = True
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int | None = None  # torch CPU threads; None: torch's default
    save_dtype: str = "float16"  # weights dtype in the model file: float16 or float32
    resume: Path | None = None  # a checkpoint written by an earlier run
    init_weights: Path | None = None  # fine-tune: start from this geounet model file (same classes and network)
    checkpoint: Path | None = None  # default: <output stem>.ckpt.pt next to the model


@dataclass
class AugmentConfig:
    """Augmentations (plain torch ops); colour ones act on DN / scale."""

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1  # max absolute shift
    contrast: float = 0.15  # max relative change
    saturation: float = 0.0  # max relative change of the distance from the band mean
    hue: float = 0.0  # max hue rotation, in turns (0.5 = 180 degrees); 3-band inputs only
    grayscale: float = 0.0  # probability of replacing all bands by their mean
    noise: float = 0.02  # max gaussian noise sigma
    p_color: float = 0.8  # probability of the colour augmentations per chip


@dataclass
class CardConfig:
    """Free text for the model card."""

    description: str = ""
    data: str = ""  # where the training data comes from
    licence: str = ""  # licences of the training data


@dataclass
class TrainConfig:
    """A whole training run (the YAML file)."""

    name: str
    output: Path  # the .safetensors model file to write
    classes: list[ClassConfig]
    data: DataConfig
    labels: LabelConfig = field(default_factory=LabelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainOptions = field(default_factory=TrainOptions)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    card: CardConfig = field(default_factory=CardConfig)
    source: Path | None = None  # the YAML file it was read from (not a YAML key)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def checkpoint_path(self) -> Path:
        return self.train.checkpoint or self.output.with_name(self.output.stem + ".ckpt.pt")

    @property
    def csv_path(self) -> Path:
        return self.output.with_suffix(".csv")


def load_config(
    path: str | Path, overrides: dict[str, Any] | None = None, settings: list[str] | None = None
) -> TrainConfig:
    """Read and check a training config; ``overrides`` maps dotted keys (``train.epochs``) to values.

    ``settings`` are ``KEY=VALUE`` strings (``train.lr=0.001``, ``augment.flips=false``,
    ``model.decoder_channels=[64,16,8]``; VALUE is read as YAML) merged into the file
    before it is checked, so they get the same type checks, typo hints and path
    handling (relative to the config's folder) as keys in the file.
    Unknown keys (typos) anywhere are reported together, before anything is trained.
    Relative paths in the file are relative to its folder; paths given as
    ``overrides`` are taken as they are (relative to the working directory).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GeounetError(path, "config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GeounetError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise GeounetError(path, "config must be a YAML mapping")
    for item in settings or []:
        _apply_setting(raw, item, path)
    unknown: list[str] = []
    _find_unknown(TrainConfig, raw, "", unknown)
    if unknown:
        raise GeounetError(path, f"unknown config keys: {'; '.join(unknown)}")
    try:
        cfg = _build(TrainConfig, raw, "", path.parent.resolve())
    except _ConfigTypeError as exc:
        raise GeounetError(path, str(exc)) from None
    cfg.source = path
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        obj: Any = cfg
        *parents, last = key.split(".")
        for p in parents:
            obj = getattr(obj, p)
        if not hasattr(obj, last):
            raise GeounetError(path, f"unknown override {key!r}")
        setattr(obj, last, Path(value) if isinstance(value, str) and last in ("output", "resume", "checkpoint", "init_weights") else value)
    validate_config(cfg)
    return cfg


def _apply_setting(raw: dict, item: str, path: Path) -> None:
    """Merge one ``dotted.key=YAML value`` into the raw config mapping."""
    import yaml

    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise GeounetError(path, f"--set expects KEY=VALUE with a dotted KEY such as train.lr=0.001, got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise GeounetError(path, f"--set {key}: value {text!r} is not valid YAML") from None
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise GeounetError(path, f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def validate_config(cfg: TrainConfig) -> None:
    """Check values that the types alone do not; raise one GeounetError listing all problems."""
    problems = []
    names = cfg.class_names
    if len(names) < 2:
        problems.append("need at least two classes")
    if len(set(names)) != len(names):
        problems.append("class names must be unique")
    for c in cfg.classes:
        if c.kind not in CLASS_KINDS:
            problems.append(f"class {c.name!r}: kind must be one of {list(CLASS_KINDS)}")
        if len(c.color) != 3 or not all(0 <= v <= 255 for v in c.color):
            problems.append(f"class {c.name!r}: color must be three values 0..255")
    if "ignore" in names:
        problems.append("'ignore' is reserved (value_map target for unlabelled areas)")
    d = cfg.data
    if not d.train:
        problems.append("data.train has no scenes")
    if not d.val:
        problems.append("data.val has no scenes (hold out a scene, or a region with window:)")
    if d.resolution_m <= 0:
        problems.append("data.resolution_m must be positive")
    if not d.bands or any(b < 1 for b in d.bands):
        problems.append("data.bands must be 1-based band indexes")
    for key in ("band_names", "mean", "std"):
        v = getattr(d, key)
        if v is not None and len(v) != len(d.bands):
            problems.append(f"data.{key} needs one entry per band")
    if d.std is not None and any(s <= 0 for s in d.std):
        problems.append("data.std must be positive")
    if d.scale is not None and d.scale <= 0:
        problems.append("data.scale must be positive")
    if d.resampling not in RESAMPLINGS:
        problems.append(f"data.resampling must be one of {list(RESAMPLINGS)}")
    for role, scenes in (("train", d.train), ("val", d.val)):
        for s in scenes:
            w = s.window
            if w is not None and (len(w) != 4 or not (0 <= w[0] < w[2] <= 1 and 0 <= w[1] < w[3] <= 1)):
                problems.append(f"data.{role} {s.image.name}: window must be [x0, y0, x1, y1] fractions, x0 < x1, y0 < y1")
    lab = cfg.labels
    if lab.unlabelled not in ("background", "ignore"):
        problems.append("labels.unlabelled must be 'background' or 'ignore'")
    if lab.unlabelled == "background" and not any(c.kind == "background" for c in cfg.classes):
        problems.append("labels.unlabelled is 'background' but no class has kind background")
    if lab.class_field is None and lab.default_class is None:
        problems.append("set labels.class_field or labels.default_class")
    for n in [lab.default_class, *lab.value_map.values()]:
        if n is not None and n not in names and n != "ignore":
            problems.append(f"labels: class {n!r} is not in classes {names}")
    m = cfg.model
    if m.tile_size % 32 or m.overlap % 2 or not 0 <= m.overlap < m.tile_size:
        problems.append("model.tile_size must be a multiple of 32, overlap even and smaller")
    t = cfg.train
    if t.chip_size % 32 or t.chip_size <= 0:
        problems.append("train.chip_size must be a positive multiple of 32")
    if t.epochs < 1 or t.steps_per_epoch < 1 or t.batch_size < 1:
        problems.append("train.epochs, steps_per_epoch and batch_size must be at least 1")
    if t.loss not in LOSSES:
        problems.append(f"train.loss must be one of {list(LOSSES)}")
    if t.class_weights is not None:
        if len(t.class_weights) != len(names) or any(w < 0 for w in t.class_weights) or not any(t.class_weights):
            problems.append("train.class_weights needs one non-negative weight per class (not all zero)")
        elif t.loss not in ("ce", "bce", "dice_ce"):
            problems.append("train.class_weights works with loss ce, bce or dice_ce")
    if t.precision not in PRECISIONS:
        problems.append(f"train.precision must be one of {list(PRECISIONS)}")
    if t.device not in ("auto", "cpu", "cuda"):
        problems.append("train.device must be auto, cpu or cuda")
    if t.save_dtype not in ("float16", "float32"):
        problems.append("train.save_dtype must be float16 or float32")
    if not 0 <= t.rare_class_bias <= 1 or not 0 <= t.min_labelled <= 1:
        problems.append("train.rare_class_bias and min_labelled must be in 0..1")
    if t.lr <= 0 or t.patience < 1:
        problems.append("train.lr must be positive and patience at least 1")
    if not 0 <= t.ema_decay < 1:
        problems.append("train.ema_decay must be in [0, 1)")
    if cfg.output.suffix != ".safetensors":
        problems.append("output must be a .safetensors file")
    if problems:
        raise GeounetError(cfg.source, "invalid config: " + "; ".join(problems))


class _ConfigTypeError(Exception):
    pass


def _find_unknown(cls: type, raw: Any, prefix: str, out: list[str]) -> None:
    """Collect keys in ``raw`` that ``cls`` (a config dataclass) lacks, as dotted names with a hint.

    The hint is the closest known key (``did you mean train.lr?``) or, when none is
    close, the keys that section knows.
    """
    import difflib

    if not isinstance(raw, dict):
        return
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            if close:
                out.append(f"{name} (did you mean {prefix}{close[0]}?)")
            else:
                out.append(f"{name} (known here: {', '.join(known)})")
            continue
        inner = _dataclass_in(hints[key])
        if inner is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                _find_unknown(inner, item, f"{name}[{i}].", out)
        else:
            _find_unknown(inner, value, f"{name}.", out)


def _dataclass_in(tp: Any) -> type | None:
    """The config dataclass inside a type like ``X``, ``list[X]`` or ``X | None``."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def _build(cls: type, raw: Any, prefix: str, base: Path) -> Any:
    if not isinstance(raw, dict):
        raise _ConfigTypeError(f"{prefix.rstrip('.') or 'config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        name = f"{prefix}{f.name}"
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _ConfigTypeError(f"missing required key {name!r}")
            continue
        kwargs[f.name] = _convert(hints[f.name], raw[f.name], name, base)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, name: str, base: Path) -> Any:
    """Check and convert one YAML value to the annotated type; resolve relative paths."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, name, base)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{name}.", base)
    if origin is list:
        if not isinstance(value, list):
            raise _ConfigTypeError(f"{name} must be a list")
        return [_convert(args[0], v, f"{name}[{i}]", base) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _ConfigTypeError(f"{name} must be a mapping")
        return {str(k): _convert(args[1], v, f"{name}.{k}", base) for k, v in value.items()}
    if tp is Path:
        if not isinstance(value, str):
            raise _ConfigTypeError(f"{name} must be a path")
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(base / p))
    if tp is bool:
        if not isinstance(value, bool):
            raise _ConfigTypeError(f"{name} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _ConfigTypeError(f"{name} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _ConfigTypeError(f"{name} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise _ConfigTypeError(f"{name} must be a string")
        return str(value)
    return value


# --------------------------------------------------------------------------- scenes


@dataclass
class Scene:
    """A scene on the training grid: raw DNs (bands, rows, cols) and class indexes (rows, cols).

    ``transform`` maps pixels of these arrays to ``crs`` coordinates; ``label`` is
    ``IGNORE_INDEX`` outside the dataset mask and where there is no usable label.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    crs: Any
    transform: Any
    dtype: str
    weight: float = 1.0


def load_scene(scene: SceneConfig, cfg: TrainConfig) -> Scene:
    """Read a scene resampled to ``cfg.data.resolution_m`` in its own CRS, with its labels."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling

    d = cfg.data
    path = scene.image
    if not path.is_file():
        raise GeounetError(path, "scene not found")
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioError as exc:
        raise GeounetError(path, f"cannot read the scene ({str(exc).splitlines()[0]})") from None
    with ds:
        if ds.crs is None:
            raise GeounetError(path, "scene has no CRS")
        if max(d.bands) > ds.count:
            raise GeounetError(path, f"scene has {ds.count} bands; the config asks for bands {d.bands}")
        dtypes = {ds.dtypes[b - 1] for b in d.bands}
        if len(dtypes) != 1:
            raise GeounetError(path, f"bands {d.bands} have different dtypes {sorted(dtypes)}")
        res_x, res_y = ground_pixel_size(ds.crs, ds.transform, ds.width, ds.height)
        width = max(1, round(ds.width * res_x / d.resolution_m))
        height = max(1, round(ds.height * res_y / d.resolution_m))
        resampling = d.resampling
        if resampling == "auto":
            resampling = "average" if width < ds.width else ("nearest" if width == ds.width else "bilinear")
        image = ds.read(d.bands, out_shape=(len(d.bands), height, width), resampling=Resampling[resampling])
        valid = ds.dataset_mask(out_shape=(height, width), resampling=Resampling.nearest) > 0
        transform = ds.transform @ Affine.scale(ds.width / width, ds.height / height)
        crs, bounds, dtype = ds.crs, ds.bounds, dtypes.pop()

    names = cfg.class_names
    if scene.labels.suffix.lower() in RASTER_LABEL_SUFFIXES:
        label = read_label_raster(scene.labels, crs, transform, (height, width), names, cfg.labels.value_map or None)
    else:
        lab = cfg.labels
        gdf = read_vector_labels(
            scene.labels,
            crs,
            bounds,
            names,
            class_field=lab.class_field,
            default_class=lab.default_class,
            value_map=lab.value_map,
            line_width_m=lab.line_width_m,
            layer=lab.layer,
        )
        fill = background_index(cfg) if lab.unlabelled == "background" else IGNORE_INDEX
        label = labels_to_raster(gdf, (height, width), transform, all_touched=lab.all_touched, unlabelled=fill)
    label[~valid] = IGNORE_INDEX

    if scene.window is not None:
        x0, y0, x1, y1 = scene.window
        c0, c1 = round(x0 * width), round(x1 * width)
        r0, r1 = round(y0 * height), round(y1 * height)
        image, label = image[:, r0:r1, c0:c1], label[r0:r1, c0:c1]
        transform = transform @ Affine.translation(c0, r0)
    if not (label != IGNORE_INDEX).any():
        raise GeounetError(path, "no labelled pixels in the scene (or its window)")
    return Scene(path.name, np.ascontiguousarray(image), np.ascontiguousarray(label), crs, transform, dtype,
                 scene.weight)


def background_index(cfg: TrainConfig) -> int:
    """Index of the first class of kind background (0 when there is none)."""
    return next((i for i, c in enumerate(cfg.classes) if c.kind == "background"), 0)


def foreground_classes(classes: list[ClassConfig] | list[ClassInfo]) -> list[int]:
    """Indexes of the classes that are not of kind background (the ones IoU is averaged over)."""
    fg = [i for i, c in enumerate(classes) if c.kind != "background"]
    return fg or list(range(len(classes)))


def band_stats(scenes: list[Scene], scale: float) -> tuple[list[float], list[float]]:
    """Per-band mean and std of DN / scale over the labelled pixels of the scenes."""
    total = None
    n = 0
    for s in scenes:
        keep = s.label != IGNORE_INDEX
        px = s.image[:, keep].astype(np.float64) / scale
        sums = np.stack([px.sum(axis=1), (px**2).sum(axis=1)])
        total = sums if total is None else total + sums
        n += px.shape[1]
    mean = total[0] / n
    std = np.sqrt(np.maximum(total[1] / n - mean**2, 1e-12))
    return [round(float(v), 5) for v in mean], [round(float(v), 5) for v in std]


# --------------------------------------------------------------------------- chips


class ChipSampler:
    """Draws square training chips (raw DNs, class indexes) from in-memory scenes.

    With probability ``rare_class_bias`` a chip is placed so that it contains a random
    pixel of a random non-background class; otherwise anywhere in a scene (scenes drawn
    in proportion to their labelled area times their ``weight``). Chips with less than ``min_labelled`` of
    their pixels labelled are redrawn up to 10 times. Scenes smaller than a chip are
    padded with zeros and the ignore index.
    """

    MAX_INDEX = 500_000  # pixel positions kept per class and scene for biased draws

    def __init__(
        self,
        scenes: list[Scene],
        chip_size: int,
        rare_classes: list[int],
        rare_class_bias: float,
        min_labelled: float,
        rng: np.random.Generator,
    ) -> None:
        self.scenes = scenes
        self.size = chip_size
        self.bias = rare_class_bias
        self.min_labelled = min_labelled
        self.rng = rng
        areas = np.array([(s.label != IGNORE_INDEX).sum() * s.weight for s in scenes], dtype=np.float64)
        self.scene_p = areas / areas.sum()
        # class -> list of (scene index, flat pixel indexes of that class)
        self.where: dict[int, list[tuple[int, np.ndarray]]] = {}
        for c in rare_classes:
            for i, s in enumerate(scenes):
                idx = np.flatnonzero(s.label == c)
                if len(idx) > self.MAX_INDEX:
                    idx = np.sort(rng.choice(idx, self.MAX_INDEX, replace=False))
                if len(idx):
                    self.where.setdefault(c, []).append((i, idx))

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One chip: ``(image (bands, size, size) raw dtype, label (size, size) uint8)``."""
        best = None
        for _ in range(10):
            chip = self._draw()
            labelled = float((chip[1] != IGNORE_INDEX).mean())
            if labelled >= self.min_labelled:
                return chip
            if best is None or labelled > best[0]:
                best = (labelled, chip)
        return best[1]

    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.size
        if self.where and self.rng.random() < self.bias:
            c = list(self.where)[self.rng.integers(len(self.where))]
            entries = self.where[c]
            weights = np.array([len(idx) * self.scenes[i].weight for i, idx in entries], dtype=np.float64)
            i, idx = entries[self.rng.choice(len(entries), p=weights / weights.sum())]
            scene = self.scenes[i]
            r, col = divmod(int(idx[self.rng.integers(len(idx))]), scene.label.shape[1])
            top = r - int(self.rng.integers(s))
            left = col - int(self.rng.integers(s))
        else:
            scene = self.scenes[self.rng.choice(len(self.scenes), p=self.scene_p)]
            h, w = scene.label.shape
            top = int(self.rng.integers(max(1, h - s + 1)))
            left = int(self.rng.integers(max(1, w - s + 1)))
        return _crop(scene, top, left, s)


def _crop(scene: Scene, top: int, left: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` window, shifted to lie inside the scene where it fits, else padded."""
    h, w = scene.label.shape
    top = min(max(top, 0), max(h - size, 0))
    left = min(max(left, 0), max(w - size, 0))
    img = scene.image[:, top : top + size, left : left + size]
    lab = scene.label[top : top + size, left : left + size]
    if lab.shape != (size, size):
        pad_img = np.zeros((img.shape[0], size, size), dtype=img.dtype)
        pad_lab = np.full((size, size), IGNORE_INDEX, dtype=np.uint8)
        pad_img[:, : lab.shape[0], : lab.shape[1]] = img
        pad_lab[: lab.shape[0], : lab.shape[1]] = lab
        img, lab = pad_img, pad_lab
    return img, lab


# --------------------------------------------------------------------------- augmentation


def augment(x, y, aug: AugmentConfig, generator):
    """Augment a batch in place of copies: ``x`` (B, C, H, W) float in DN / scale, ``y`` (B, H, W).

    Geometric: random horizontal/vertical flips and 90-degree rotations (square chips),
    applied to image and labels alike. Colour (with probability ``p_color`` per chip):
    contrast change around the chip mean, brightness shift, saturation change (towards
    or away from the per-pixel band mean), hue rotation about the grey axis (3 bands),
    conversion to grey (with probability ``grayscale``), gaussian noise.
    """
    import torch

    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        if aug.flips:
            if torch.rand((), generator=generator) < 0.5:
                xi, yi = xi.flip(-1), yi.flip(-1)
            if torch.rand((), generator=generator) < 0.5:
                xi, yi = xi.flip(-2), yi.flip(-2)
        if aug.rot90 and xi.shape[-1] == xi.shape[-2]:
            k = int(torch.randint(4, (), generator=generator))
            if k:
                xi, yi = torch.rot90(xi, k, (-2, -1)), torch.rot90(yi, k, (-2, -1))
        if torch.rand((), generator=generator) < aug.p_color:
            u = torch.rand(6, generator=generator)
            if aug.contrast:
                c = 1.0 + aug.contrast * (2 * float(u[0]) - 1)
                m = xi.mean(dim=(-2, -1), keepdim=True)
                xi = (xi - m) * c + m
            if aug.brightness:
                xi = xi + aug.brightness * (2 * float(u[1]) - 1)
            if aug.hue and xi.shape[0] == 3:
                rot = _hue_rotation(2 * math.pi * aug.hue * (2 * float(u[3]) - 1))
                xi = torch.einsum("ij,jhw->ihw", rot, xi)
            if aug.saturation:
                grey = xi.mean(dim=0, keepdim=True)
                xi = grey + (xi - grey) * (1.0 + aug.saturation * (2 * float(u[4]) - 1))
            if aug.grayscale and float(u[5]) < aug.grayscale:
                xi = xi.mean(dim=0, keepdim=True).expand_as(xi).clone()
            if aug.noise:
                sigma = aug.noise * float(u[2])
                xi = xi + sigma * torch.randn(xi.shape, generator=generator)
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


def _hue_rotation(angle: float):
    """3 x 3 matrix rotating RGB vectors by ``angle`` radians about the grey axis (1, 1, 1)."""
    import torch

    c, s = math.cos(angle), math.sin(angle)
    k = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)
    return c * torch.eye(3) + (1.0 - c) / 3.0 * torch.ones(3, 3) + s * k


# --------------------------------------------------------------------------- loss, precision


def make_loss(
    name: str, ignore_index: int = IGNORE_INDEX, class_weights: list[float] | None = None, device: str = "cpu"
):
    """Loss on logits (B, K, H, W) and targets (B, H, W); smp losses, CE from torch.

    ``dice_ce`` is smp's multiclass DiceLoss plus cross-entropy. Cross-entropy is
    torch's, which averages over labelled pixels only (smp's SoftCrossEntropyLoss
    also counts ignored pixels in the mean). ``bce`` is one-vs-rest binary
    cross-entropy of each class channel against the one-hot target, over labelled
    pixels. ``class_weights`` (one per class) weight the CE / BCE term.
    """
    import torch

    from geounet import _torchvision_compat  # noqa: F401
    from segmentation_models_pytorch import losses

    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32, device=device)
    ce = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
    if name == "ce":
        return ce
    if name == "bce":
        return lambda logits, target: _bce(logits, target, ignore_index, weight)
    if name == "dice":
        return losses.DiceLoss("multiclass", ignore_index=ignore_index)
    if name == "focal":
        return losses.FocalLoss("multiclass", ignore_index=ignore_index)
    if name == "tversky":
        return losses.TverskyLoss("multiclass", ignore_index=ignore_index, alpha=0.3, beta=0.7)
    if name == "dice_ce":
        dice = losses.DiceLoss("multiclass", ignore_index=ignore_index)
        return lambda logits, target: ce(logits, target) + dice(logits, target)
    raise ValueError(f"unknown loss {name!r}")


def _bce(logits, target, ignore_index: int, weight=None):
    """One-vs-rest BCE with logits over the labelled pixels; ``weight`` (K,) weights each class channel."""
    import torch

    keep = target != ignore_index
    k = logits.shape[1]
    onehot = torch.nn.functional.one_hot(torch.where(keep, target, 0), k).permute(0, 3, 1, 2).to(logits.dtype)
    per_px = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    if weight is not None:
        per_px = per_px * weight[None, :, None, None]
    per_px = per_px.mean(1)[keep]
    return per_px.mean() if per_px.numel() else logits.sum() * 0.0


def _autocast(precision: str, device: str):
    import torch

    if precision == "bf16":
        return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- validation


def confusion(pred: np.ndarray, label: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) pixel counts [true, predicted] over pixels whose label is not the ignore index."""
    from geounet.compute.metrics import confusion_matrix

    return confusion_matrix(pred, label, n_classes, IGNORE_INDEX)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU of each class from a confusion matrix (NaN for a class absent from labels and predictions)."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def evaluate(net, scenes: list[Scene], card: ModelCard, *, precision: str = "fp32") -> dict[str, Any]:
    """Pixel metrics of ``net`` on scenes: per-class IoU, mean IoU of the non-background classes, accuracy.

    Scenes are predicted exactly as ``geounet predict`` does (``infer.predict_array``: the
    card's tile size and overlap, mirror padding, blended seams).
    """
    from geounet.models.card import normalise

    n = len(card.classes)
    cm = np.zeros((n, n), dtype=np.int64)
    device = str(next(net.parameters()).device)
    net.eval()
    for s in scenes:
        probs = predict_array(net, normalise(s.image, card), card.tile_size, card.overlap, device, precision)
        cm += confusion(probs.argmax(0), s.label, n)
    ious = iou_per_class(cm)
    fg = foreground_classes(card.classes)
    fg_ious = [ious[i] for i in fg if not np.isnan(ious[i])]
    return {
        "iou": {c.name: (None if np.isnan(v) else round(float(v), 4)) for c, v in zip(card.classes, ious)},
        "mean_iou": round(float(np.mean(fg_ious)), 4) if fg_ious else 0.0,
        "accuracy": round(float(np.trace(cm) / max(cm.sum(), 1)), 4),
        "pixels": int(cm.sum()),
    }


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What a training run produced."""

    model: Path
    checkpoint: Path
    csv: Path
    epochs: int  # epochs done in total (including earlier runs resumed from)
    best_epoch: int
    best_val: dict[str, Any]
    seconds: float  # training time in total (including earlier runs resumed from)
    stopped_early: bool


def machine_description(device: str) -> str:
    """CPU model and core count (and the GPU when training on CUDA), torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = f"{cpu}, {cpu_cores()} cores ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}"
    if device.startswith("cuda"):
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def build_card(cfg: TrainConfig, scenes: list[Scene], mean: list[float], std: list[float], scale: float) -> ModelCard:
    """The model card for this config (``training`` is filled in by ``train_model``)."""
    d, m = cfg.data, cfg.model
    return ModelCard(
        name=cfg.name,
        classes=[ClassInfo(c.name, tuple(int(v) for v in c.color), c.kind) for c in cfg.classes],
        bands=list(d.bands),
        band_names=list(d.band_names) if d.band_names else _band_names(cfg),
        mean=list(mean),
        std=list(std),
        scale=float(scale),
        input_dtypes=sorted({s.dtype for s in scenes}),
        resolution_m=d.resolution_m,
        tile_size=m.tile_size,
        overlap=m.overlap,
        architecture=m.architecture,
        encoder=m.encoder,
        encoder_depth=m.encoder_depth,
        decoder_channels=list(m.decoder_channels),
    )


def _band_names(cfg: TrainConfig) -> list[str]:
    import rasterio

    with rasterio.open(cfg.data.train[0].image) as ds:
        names = []
        for b in cfg.data.bands:
            desc = ds.descriptions[b - 1]
            interp = ds.colorinterp[b - 1].name
            names.append(desc or (interp if interp not in ("undefined", "gray", "alpha") else f"band{b}"))
        return names


def train_model(cfg: TrainConfig, command: str | None = None, progress: bool = True) -> TrainResult:
    """Run the training that ``cfg`` describes and write model, CSV log and checkpoint."""
    import torch
    from tqdm import tqdm

    t = cfg.train
    t_start = time.perf_counter()
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    gen = torch.Generator().manual_seed(t.seed)
    if t.threads:
        torch.set_num_threads(t.threads)
    device = "cuda" if t.device == "auto" and torch.cuda.is_available() else ("cpu" if t.device == "auto" else t.device)
    precision = resolve_precision(device, t.precision)

    ckpt = _load_checkpoint(t.resume, cfg) if t.resume else None

    train_scenes = [load_scene(s, cfg) for s in cfg.data.train]
    val_scenes = [load_scene(s, cfg) for s in cfg.data.val]
    dtypes = {s.dtype for s in train_scenes + val_scenes}
    scale = cfg.data.scale
    if scale is None:
        if dtypes != {"uint8"}:
            raise GeounetError(cfg.source, f"scenes are {sorted(dtypes)}: set data.scale (DN per model unit)")
        scale = 255.0
    if ckpt is not None:
        card = ModelCard.from_json(ckpt["card"], t.resume)
    else:
        init = _init_weights(t.init_weights, cfg) if t.init_weights else None
        if init is not None:  # keep the normalisation the weights were trained with
            mean, std = list(init[1].mean), list(init[1].std)
        elif cfg.data.mean is not None and cfg.data.std is not None:
            mean, std = list(cfg.data.mean), list(cfg.data.std)
        else:
            mean, std = band_stats(train_scenes, scale)
        card = build_card(cfg, train_scenes + val_scenes, mean, std, scale)

    net = build_network(card)
    if ckpt is None and t.init_weights:
        net.load_state_dict(init[0].state_dict())
    net = net.to(device)
    if t.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    total_steps = t.epochs * t.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine_with_warmup(t.warmup_steps, total_steps))
    loss_fn = make_loss(t.loss, class_weights=t.class_weights, device=device)
    ema = None
    if t.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)

    epoch, step, best_score, best_epoch, bad_epochs = 0, 0, -1.0, 0, 0
    best_state, best_val, history, seconds_before = None, {}, [], 0.0
    if ckpt is not None:
        net.load_state_dict(ckpt["network"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        for group in opt.param_groups:  # the config may change lr on resume
            group["initial_lr"] = t.lr
        sched.base_lrs = [t.lr for _ in opt.param_groups]
        epoch, step = ckpt["epoch"], ckpt["step"]
        best_score, best_epoch, bad_epochs = ckpt["best_score"], ckpt["best_epoch"], ckpt["bad_epochs"]
        best_state, best_val, history = ckpt["best_state"], ckpt["best_val"], ckpt["history"]
        seconds_before = ckpt["seconds"]
        torch.set_rng_state(ckpt["torch_rng"])
        gen.set_state(ckpt["aug_rng"])
        rng.bit_generator.state = ckpt["numpy_rng"]

    sampler = ChipSampler(
        train_scenes, t.chip_size, foreground_classes(cfg.classes), t.rare_class_bias, t.min_labelled, rng
    )
    if ckpt is not None:  # the sampler used the generator while indexing; continue the saved stream
        rng.bit_generator.state = ckpt["numpy_rng"]
    mean_t = torch.tensor(card.mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(card.std, dtype=torch.float32)[:, None, None]

    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    stopped_early = False
    bar = tqdm(
        total=total_steps, initial=min(step, total_steps), disable=not progress, unit="step",
        dynamic_ncols=True, mininterval=2.0,
    )
    last_iou = best_val.get("mean_iou") if best_val else None
    session_start = time.perf_counter()
    try:
        while epoch < t.epochs:
            net.train()
            losses = []
            for _ in range(t.steps_per_epoch):
                chips = [sampler.sample() for _ in range(t.batch_size)]
                x = torch.from_numpy(np.stack([c[0] for c in chips]).astype(np.float32)) / float(card.scale)
                y = torch.from_numpy(np.stack([c[1] for c in chips]).astype(np.int64))
                x, y = augment(x, y, cfg.augment, gen)
                x = ((x - mean_t) / std_t).to(device)
                y = y.to(device)
                if t.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(precision, device):
                    logits = net(x)
                loss = loss_fn(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update_parameters(net)
                step += 1
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-20:]):.3f}", val_iou=_fmt(last_iou))
            epoch += 1
            kept = ema.module if ema is not None else net  # the weights that are validated and saved
            val = evaluate(kept, val_scenes, card, precision=precision)
            last_iou = val["mean_iou"]
            improved = val["mean_iou"] > best_score
            if improved:
                best_score, best_epoch, best_val, bad_epochs = val["mean_iou"], epoch, val, 0
                best_state = {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}
            else:
                bad_epochs += 1
            elapsed = seconds_before + time.perf_counter() - session_start
            history.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "lr": opt.param_groups[0]["lr"],
                    "train_loss": round(float(np.mean(losses)), 5),
                    "val_mean_iou": val["mean_iou"],
                    **{f"val_iou_{k}": v for k, v in val["iou"].items()},
                    "val_accuracy": val["accuracy"],
                    "seconds": round(elapsed, 1),
                }
            )
            _write_csv(cfg.csv_path, history)
            bar.write(
                f"epoch {epoch}/{t.epochs}: loss {history[-1]['train_loss']:.4f}, val IoU {val['mean_iou']:.4f} "
                f"({', '.join(f'{k} {_fmt(v)}' for k, v in val['iou'].items())}), {elapsed:.0f} s"
                + (" *best*" if improved else "")
            )
            card.training = _training_facts(cfg, command, history, best_epoch, best_val, elapsed, device, precision, step)
            if improved:
                _save(cfg.output, card, best_state, t.save_dtype)
            _save_checkpoint(
                cfg.checkpoint_path,
                dict(
                    card=card.to_json(), network=net.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                    ema=ema.state_dict() if ema is not None else None,
                    epoch=epoch, step=step, best_score=best_score, best_epoch=best_epoch, bad_epochs=bad_epochs,
                    best_state=best_state, best_val=best_val, history=history, seconds=elapsed,
                    torch_rng=torch.get_rng_state(), aug_rng=gen.get_state(), numpy_rng=rng.bit_generator.state,
                ),
            )
            if bad_epochs >= t.patience and epoch < t.epochs:
                bar.write(f"no better val IoU for {bad_epochs} epochs: stopping early")
                stopped_early = True
                break
    finally:
        bar.close()

    elapsed = seconds_before + time.perf_counter() - session_start
    card.training = _training_facts(cfg, command, history, best_epoch, best_val, elapsed, device, precision, step)
    _save(cfg.output, card, best_state, t.save_dtype)
    return TrainResult(
        model=cfg.output, checkpoint=cfg.checkpoint_path, csv=cfg.csv_path, epochs=epoch, best_epoch=best_epoch,
        best_val=best_val, seconds=round(time.perf_counter() - t_start + seconds_before, 1), stopped_early=stopped_early,
    )


def _init_weights(path: Path, cfg: TrainConfig):
    """``(network, card)`` of a model file to fine-tune, checked against the config."""
    from geounet.models.card import load_model

    net, card = load_model(path)
    m = cfg.model
    mine = (cfg.class_names, m.architecture, m.encoder, m.encoder_depth, list(m.decoder_channels), len(cfg.data.bands))
    theirs = (card.class_names, card.architecture, card.encoder, card.encoder_depth, list(card.decoder_channels),
              len(card.bands))
    if mine != theirs:
        raise GeounetError(path, f"train.init_weights: the model's classes/network {theirs} differ from the config's {mine}")
    return net, card


def _cosine_with_warmup(warmup: int, total: int):
    """LR factor per step: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _save(path: Path, card: ModelCard, state: dict, dtype: str) -> None:
    """Write the network with ``state`` to the model file, weights as ``dtype`` (float16/float32)."""
    import torch

    net = build_network(card)
    net.load_state_dict(state)
    if dtype == "float16":
        net = net.to(torch.float16)
    save_model(path, net, card)


def _training_facts(cfg, command, history, best_epoch, best_val, seconds, device, precision, step) -> dict[str, Any]:
    """The ``training`` section of the card: data, licence, command, schedule, time, machine, metrics."""
    import torch

    from geounet import __version__

    t = cfg.train
    return {
        "description": cfg.card.description,
        "data": cfg.card.data,
        "licence": cfg.card.licence,
        "train_scenes": [_scene_text(s) for s in cfg.data.train],
        "val_scenes": [_scene_text(s) for s in cfg.data.val],
        "command": command or "",
        "epochs": len(history) and history[-1]["epoch"],
        "best_epoch": best_epoch,
        "steps": step,
        "batch_size": t.batch_size,
        "chip_size": t.chip_size,
        "loss": t.loss,
        "lr": t.lr,
        "ema_decay": t.ema_decay,
        "seed": t.seed,
        "precision": precision,
        "time_s": round(seconds, 1),
        "machine": machine_description(device),
        "software": f"geounet {__version__}, torch {torch.__version__}",
        "val": best_val,
    }


def _scene_text(s: SceneConfig) -> str:
    text = f"{s.image.name} (labels {s.labels.name})"
    return text + (f" window {s.window}" if s.window else "")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Read a resume checkpoint (tensors and plain data only) and check it fits the config."""
    import torch

    if not path.is_file():
        raise GeounetError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several error types for a bad file
        raise GeounetError(path, f"not a geounet training checkpoint ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(ckpt, dict) or "card" not in ckpt:
        raise GeounetError(path, "not a geounet training checkpoint")
    card = ModelCard.from_json(ckpt["card"], path)
    m = cfg.model
    mismatch = [
        name
        for name, a, b in (
            ("classes", card.class_names, cfg.class_names),
            ("bands", card.bands, cfg.data.bands),
            ("architecture", card.architecture, m.architecture),
            ("encoder", card.encoder, m.encoder),
            ("encoder_depth", card.encoder_depth, m.encoder_depth),
            ("decoder_channels", list(card.decoder_channels), list(m.decoder_channels)),
            ("resolution_m", card.resolution_m, cfg.data.resolution_m),
        )
        if a != b
    ]
    if mismatch:
        raise GeounetError(path, f"checkpoint does not match the config: {', '.join(mismatch)} differ")
    return ckpt
