"""The training config (YAML): its sections as dataclasses, and :func:`load_config`, which checks all of it.

The field types are the schema (:mod:`geounet.schema`): unknown keys, wrong types and
choices outside a ``Literal`` are found by :func:`geounet.schema.check`; the checks
that types cannot express (``_value_problems``) add to the same list, and
:func:`load_config` raises one :class:`~geounet.schema.ConfigError` with all of them.
Relative paths in a config file are relative to the file's folder.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geounet.models.card import CLASS_KINDS, ClassInfo, decision_weights_problem, network_problems
from geounet.schema import ConfigError, apply_setting, check_fields, choice_problem, config_fields, read_yaml

ClassKind = Literal[CLASS_KINDS]  # type: ignore[valid-type]  # the model card's kinds
LossName = Literal["dice_ce", "ce", "bce", "dice", "focal", "tversky"]
Precision = Literal["auto", "fp32", "bf16"]
ResamplingName = Literal["auto", "nearest", "bilinear", "cubic", "average"]
Device = Literal["auto", "cpu", "cuda"]
SaveDtype = Literal["float16", "float32"]
Unlabelled = Literal["background", "ignore"]

# ``task:`` of a training config: absent or segment (this module), or damage_head (a damage head's
# config, read by geounet.damage.head_training, the module geounet train hands it to)
TASKS = ("segment", "damage_head")

LOSSES: tuple[str, ...] = typing.get_args(LossName)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
RESAMPLINGS: tuple[str, ...] = typing.get_args(ResamplingName)
WEIGHTED_LOSSES = ("ce", "bce", "dice_ce")  # the losses with a CE / BCE term that class_weights weight


@dataclass
class ClassConfig:
    """One output class: name, kind (background/building/road/landcover), RGB colour (0..255 each)."""

    name: str
    color: list[int]
    kind: ClassKind = "landcover"


@dataclass
class SceneConfig:
    """A scene and its labels (a vector file, or a class raster: .tif/.tiff/.vrt/.img/.jp2).

    ``window`` keeps a part of the scene: ``[x0, y0, x1, y1]`` as fractions of its width
    and height from the top-left corner, e.g. ``[0, 0, 0.75, 1]`` for the left 75 %.
    ``labels_offset_m`` moves vector labels ``[east, north]`` metres on the ground before they
    are rasterized: footprints drawn on other imagery (or at ground level, under roofs that lean
    in an off-nadir view) sit beside the roofs; ``geounet evaluate`` measures the offset.
    ``negative``: the scene holds none of the classes, so labels that miss it are no error (else
    they are: most often a wrong file or CRS); such a scene needs no ``labels`` at all (e.g. the
    rubble of destroyed buildings: all background, whatever footprints cover it).
    ``unlabelled_ignore_in``: a vector file of areas (any CRS) where a pixel that no label covers
    may still hold a class, so it is ignored instead of taken as background; labelled pixels
    there are kept. E.g. footprints captured years after the image, where buildings were
    destroyed and not rebuilt in between: their ground carries no footprint, yet the image shows them.
    """

    image: Path  # a file (relative: to the config file), or an http(s)://, s3:// or /vsi... URL kept as a str
    labels: Path | None = None  # only a negative scene goes without
    window: list[float] | None = None
    weight: float = 1.0  # share of the random chips, relative to the scene's labelled area
    labels_offset_m: list[float] | None = None  # [east, north] metres, vector labels only
    negative: bool = False  # a scene with none of the classes: no label needs to overlap it (all background)
    unlabelled_ignore_in: Path | None = None  # areas where unlabelled pixels are ignored, not background


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
    resampling: ResamplingName = "auto"  # auto: average when shrinking, bilinear when enlarging


@dataclass
class LabelConfig:
    """How vector labels become classes."""

    class_field: str | None = None  # attribute holding the class; None: all are default_class
    default_class: str | None = None  # class of features with no class_field / a null value
    value_map: dict[str, str] = field(default_factory=dict)  # value -> class name or "ignore"
    line_width_m: float = 3.0  # lines are buffered to this width (metres)
    all_touched: bool = False
    unlabelled: Unlabelled = "background"  # pixels no label covers
    layer: str | None = None
    # instance contacts: building pixels within contact_m of another building become this class
    # (kind background), so the model learns to cut touching roofs apart; None: no contact class
    contact_class: str | None = None
    contact_m: float = 0.5


@dataclass
class ModelConfig:
    """The smp network and the tiling used at prediction time."""

    architecture: str = "Unet"
    encoder: str = "resnet18"
    encoder_depth: int = 5
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 32, 16, 8])
    # ImageNet weights shipped in a pip package (geounet.models.pretrained.SOURCES), e.g. efficientnet-lite0;
    # None: the encoder starts from random weights
    encoder_weights: str | None = None
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
    loss: LossName = "dice_ce"
    class_weights: list[float] | None = None  # one per class, for the CE / BCE term (WEIGHTED_LOSSES)
    rare_class_bias: float = 0.5  # share of chips centred on a non-background class pixel
    min_labelled: float = 0.2  # chips with less labelled area are redrawn (a few times)
    patience: int = 5  # epochs without a better val IoU before stopping
    ema_decay: float = 0.0  # >0: validate and keep an exponential moving average of the weights
    seed: int = 0
    precision: Precision = "auto"  # auto: bf16 on CUDA GPUs (fp16 without bf16), fp32 on CPUs
    channels_last: bool = True
    device: Device = "auto"  # auto: cuda if available, else cpu
    threads: int | None = None  # torch CPU threads; None: torch's default
    # >0: chips drawn and augmented in this many worker processes (a GPU outruns one process); each
    # worker has its own random streams, seeded by (seed, step, worker), so a run is reproducible for
    # the same count but not step for step against 0, and a resumed run starts new streams
    loader_workers: int = 0
    save_dtype: SaveDtype = "float16"  # weights dtype in the model file
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
    scale: float = 0.0  # ground-resolution jitter: chips zoomed by a factor in [1 / (1 + scale), 1 + scale]
    blur: float = 0.0  # max gaussian blur sigma, pixels (a softer sensor or resampling)
    p_blur: float = 0.3  # probability of blurring a chip (with blur > 0)
    # building removal: with probability p_erase per chip, each object (a component of building and contact pixels)
    # is covered, with probability erase, by ground copied from elsewhere in the chip and labelled ground (a cleared lot)
    erase: float = 0.0
    p_erase: float = 0.5


@dataclass
class CardConfig:
    """Free text for the model card."""

    description: str = ""
    data: str = ""  # where the training data comes from
    licence: str = ""  # licences of the training data
    # class name -> factor on its probability when a pixel's class is picked (the card's decision_weights)
    decision_weights: dict[str, float] = field(default_factory=dict)


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
    source: Path | None = field(default=None, init=False)  # the YAML file it was read from (not a YAML key)

    @property
    def class_names(self) -> list[str]:
        """The class names, in class-index order."""
        return [c.name for c in self.classes]

    @property
    def checkpoint_path(self) -> Path:
        """``train.checkpoint``, else ``<output stem>.ckpt.pt`` next to the model file."""
        return self.train.checkpoint or self.output.with_name(self.output.stem + ".ckpt.pt")

    @property
    def csv_path(self) -> Path:
        """The CSV log of the epochs, next to the model file."""
        return self.output.with_suffix(".csv")


def background_index(cfg: TrainConfig) -> int:
    """Index of the first class of kind background (0 when there is none)."""
    return next((i for i, c in enumerate(cfg.classes) if c.kind == "background"), 0)


def foreground_classes(classes: Sequence[ClassConfig | ClassInfo]) -> list[int]:
    """Indexes of the classes that are not of kind background (the ones IoU is averaged over)."""
    fg = [i for i, c in enumerate(classes) if c.kind != "background"]
    return fg or list(range(len(classes)))


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | Path, overrides: dict[str, Any] | None = None, settings: list[str] | None = None
) -> TrainConfig:
    """Read and check a training config; ``overrides`` maps dotted keys (``train.epochs``) to values.

    ``settings`` are ``KEY=VALUE`` strings (``train.lr=0.001``, ``augment.flips=false``,
    ``model.decoder_channels=[64,16,8]``; VALUE is read as YAML) merged into the file
    before it is checked, so they get the same type checks, typo hints and path
    handling (relative to the config's folder) as keys in the file.
    Every problem (typos, types, values) is reported together in one
    :class:`~geounet.schema.ConfigError`, before anything is trained.
    Relative paths in the file are relative to its folder; paths given as
    ``overrides`` are taken as they are (relative to the working directory).
    Overrides whose value is None are left out.
    """
    path = Path(path)
    raw = read_yaml(path)
    problems = [p for p in (apply_setting(raw, item) for item in settings or []) if p]
    task = raw.pop("task", "segment")
    if task != "segment":
        problems.append(
            choice_problem("task", task, TASKS)
            or "task: damage_head configs are read by geounet.damage.head_training.load_head_config"
        )
    late_paths = _merge_overrides(raw, {k: v for k, v in (overrides or {}).items() if v is not None})
    parts, found = _check_sections(raw, path.parent.resolve())
    problems += found
    for key, value in late_paths.items():
        _set_path(parts, key, Path(value))
    problems += _value_problems(parts)
    if problems:
        raise ConfigError(path, problems)
    cfg = TrainConfig(**parts)
    cfg.source = path
    return cfg


def _merge_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge ``overrides`` into the raw mapping, except path-valued ones: those are returned, to set after the check.

    (Paths in the file are resolved against its folder; an override path stays as given.)
    """
    late: dict[str, Any] = {}
    for key, value in overrides.items():
        if _is_path_key(key):
            late[key] = value
            continue
        *parents, last = key.split(".")
        node: Any = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # the check reports the section itself
                break
        else:
            node[last] = value
    return late


def _is_path_key(key: str) -> bool:
    """Whether the dotted ``key`` names a ``Path`` (or ``Path | None``) field of :class:`TrainConfig`."""
    tp: Any = TrainConfig
    for part in key.split("."):
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            return False
        if part not in {f.name for f in config_fields(tp)}:
            return False
        tp = typing.get_type_hints(tp)[part]
    return tp is Path or Path in typing.get_args(tp)


def _set_path(parts: dict[str, Any], key: str, value: Path) -> None:
    """Set a path override on the checked sections (skipped when its section did not pass the check)."""
    first, *rest = key.split(".")
    if not rest:
        parts[first] = value
        return
    obj = parts.get(first)
    for part in rest[:-1]:
        obj = getattr(obj, part, None)
    if obj is not None:
        setattr(obj, rest[-1], value)


def _check_sections(raw: dict[str, Any], base: Path) -> tuple[dict[str, Any], list[str]]:
    """Each top-level key of ``raw`` checked on its own: ``({key: checked value}, problems)``.

    A section with problems is left out (or keeps the right parts of it), so that the value
    checks can still run on the others; absent sections with a default get it.
    """
    parts, problems = check_fields(TrainConfig, raw, "", base)
    for f in config_fields(TrainConfig):
        if f.name not in parts and f.default_factory is not dataclasses.MISSING:
            parts[f.name] = f.default_factory()
    return parts, problems


# --------------------------------------------------------------------------- checks that types cannot express


def _value_problems(parts: dict[str, Any]) -> list[str]:
    """The problems of the checked sections' values (sections that failed their type check are skipped)."""
    classes: list[ClassConfig] | None = parts.get("classes")
    problems = _class_problems(classes) if classes is not None else []
    if "data" in parts:
        problems += _data_problems(parts["data"])
    if "labels" in parts:
        problems += _label_problems(parts["labels"], classes)
    if "model" in parts:
        problems += _model_problems(parts["model"])
    if "train" in parts:
        problems += _train_problems(parts["train"], classes)
    if "augment" in parts:
        problems += _augment_problems(parts["augment"])
        if parts["augment"].erase and classes is not None and erase_classes(classes, parts.get("labels")) is None:
            problems.append("augment.erase: needs a class of kind building and one of kind background to leave behind")
    if "output" in parts and parts["output"].suffix != ".safetensors":
        problems.append("output: must be a .safetensors file")
    if "card" in parts and classes is not None:
        names = [c.name for c in classes]
        problem = decision_weights_problem(parts["card"].decision_weights, names, "card.decision_weights")
        if problem:
            problems.append(problem)
    return problems


def erase_classes(classes: list[ClassConfig], labels: LabelConfig | None) -> tuple[list[int], int] | None:
    """What ``augment.erase`` removes and leaves: (indexes of the building classes and the contact class,
    index of the first other background class), or None when there is no such pair."""
    contact = labels.contact_class if labels is not None else None
    objects = [i for i, c in enumerate(classes) if c.kind == "building" or c.name == contact]
    ground = [i for i, c in enumerate(classes) if c.kind == "background" and c.name != contact]
    return (objects, ground[0]) if objects and ground else None


def _augment_problems(a: AugmentConfig) -> list[str]:
    """Shares in 0..1; zoom and blur not negative."""
    problems = [
        f"augment.{k}: must be in 0..1"
        for k in ("grayscale", "p_color", "p_blur", "erase", "p_erase")
        if not 0 <= getattr(a, k) <= 1
    ]
    problems += [f"augment.{k}: must be at least 0" for k in ("scale", "blur", "noise") if getattr(a, k) < 0]
    return problems


def _class_problems(classes: list[ClassConfig]) -> list[str]:
    """Class names (two or more, unique, not ``ignore``) and colours."""
    names = [c.name for c in classes]
    problems = []
    if len(names) < 2:
        problems.append("classes: need at least two classes")
    if len(set(names)) != len(names):
        problems.append("classes: class names must be unique")
    if "ignore" in names:
        problems.append("classes: 'ignore' is reserved (the value_map target for unlabelled areas)")
    for i, c in enumerate(classes):
        if len(c.color) != 3 or not all(0 <= v <= 255 for v in c.color):
            problems.append(f"classes[{i}].color: must be three values 0..255")
    return problems


def _data_problems(d: DataConfig) -> list[str]:
    """Scenes, resolution, bands and their normalisation, windows."""
    problems = []
    if not d.train:
        problems.append("data.train: no scenes")
    if not d.val:
        problems.append("data.val: no scenes (hold out a scene, or a region with window:)")
    if d.resolution_m <= 0:
        problems.append("data.resolution_m: must be positive")
    if not d.bands or any(b < 1 for b in d.bands):
        problems.append("data.bands: must be 1-based band indexes")
    for key in ("band_names", "mean", "std"):
        v = getattr(d, key)
        if v is not None and len(v) != len(d.bands):
            problems.append(f"data.{key}: needs one entry per band")
    if d.std is not None and any(s <= 0 for s in d.std):
        problems.append("data.std: must be positive")
    if d.scale is not None and d.scale <= 0:
        problems.append("data.scale: must be positive")
    for role, scenes in (("train", d.train), ("val", d.val)):
        for i, s in enumerate(scenes):
            w = s.window
            if w is not None and (len(w) != 4 or not (0 <= w[0] < w[2] <= 1 and 0 <= w[1] < w[3] <= 1)):
                problems.append(f"data.{role}[{i}].window: must be [x0, y0, x1, y1] fractions, x0 < x1, y0 < y1")
            if s.labels is None and not s.negative:
                problems.append(f"data.{role}[{i}].labels: missing (only a scene with negative: true needs none)")
            if s.labels_offset_m is not None and len(s.labels_offset_m) != 2:
                problems.append(f"data.{role}[{i}].labels_offset_m: must be [east, north] in metres")
    return problems


def _label_problems(lab: LabelConfig, classes: list[ClassConfig] | None) -> list[str]:
    """How labels map to classes (checked against the classes when they passed their own check)."""
    problems = []
    if lab.class_field is None and lab.default_class is None:
        problems.append("labels: set class_field or default_class")
    if classes is None:
        return problems
    if lab.unlabelled == "background" and not any(c.kind == "background" for c in classes):
        problems.append("labels.unlabelled: is 'background' but no class has kind background")
    names = [c.name for c in classes]
    targets = [("labels.default_class", lab.default_class)]
    targets += [(f"labels.value_map.{k}", v) for k, v in lab.value_map.items()]
    for key, name in targets:
        if name is not None and name not in names and name != "ignore":
            problems.append(f"{key}: class {name!r} is not in classes {names} (nor 'ignore')")
    if lab.contact_class is not None:
        kinds = {c.name: c.kind for c in classes}
        if kinds.get(lab.contact_class) != "background" or lab.contact_class == names[0]:
            problems.append(
                f"labels.contact_class: {lab.contact_class!r} must be a class of kind background "
                "other than the first (the first is what unlabelled pixels get)"
            )
        if lab.contact_m <= 0:
            problems.append("labels.contact_m: must be positive")
    return problems


def _model_problems(m: ModelConfig) -> list[str]:
    """Architecture and encoder names; tile size and overlap (pixels); packaged encoder weights that fit."""
    problems = network_problems(m.architecture, m.encoder, "model.") + _weights_problems(m)
    if m.tile_size <= 0 or m.tile_size % 32:
        problems.append("model.tile_size: must be a positive multiple of 32")
    if m.overlap % 2 or not 0 <= m.overlap < m.tile_size:
        problems.append("model.overlap: must be even, at least 0 and smaller than tile_size")
    return problems


def _weights_problems(m: ModelConfig) -> list[str]:
    if m.encoder_weights is None:
        return []
    from geounet.errors import GeounetError
    from geounet.models.pretrained import locate, weight_source

    try:
        source = weight_source(m.encoder_weights)
        locate(source)
    except GeounetError as exc:
        return [f"model.{exc.problem}"]
    if source.encoder != m.encoder:
        return [f"model.encoder_weights: {m.encoder_weights!r} fit encoder {source.encoder!r}, not {m.encoder!r}"]
    return []


def _train_problems(t: TrainOptions, classes: list[ClassConfig] | None) -> list[str]:
    """Chip size, schedule, class weights, shares and rates."""
    problems = []
    if t.chip_size % 32 or t.chip_size <= 0:
        problems.append("train.chip_size: must be a positive multiple of 32")
    for key in ("epochs", "steps_per_epoch", "batch_size", "patience"):
        if getattr(t, key) < 1:
            problems.append(f"train.{key}: must be at least 1")
    w = t.class_weights
    if w is not None:
        if (classes is not None and len(w) != len(classes)) or any(v < 0 for v in w) or not any(w):
            problems.append("train.class_weights: needs one non-negative weight per class (not all zero)")
        elif t.loss not in WEIGHTED_LOSSES:
            problems.append(f"train.class_weights: works with loss {', '.join(WEIGHTED_LOSSES)} only")
    for key in ("rare_class_bias", "min_labelled"):
        if not 0 <= getattr(t, key) <= 1:
            problems.append(f"train.{key}: must be in 0..1")
    if t.lr <= 0:
        problems.append("train.lr: must be positive")
    if not 0 <= t.ema_decay < 1:
        problems.append("train.ema_decay: must be in [0, 1)")
    return problems
