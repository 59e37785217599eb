"""The pipeline config of ``geounet run`` (YAML): its keys as dataclasses, and :func:`load_config`.

The field types are the schema (:mod:`geounet.schema`): unknown keys (with a
did-you-mean), wrong types and choices outside a ``Literal`` are found by
:func:`geounet.schema.check`, one top-level key at a time, so that the checks types
cannot express (model file, output folder, inputs on disk, tile sizes, device, the
damage settings) still run on the keys that passed. :func:`load_config` raises one
:class:`~geounet.schema.ConfigError` listing every problem before any work starts.
Relative paths in a config file are relative to the file's folder; ``--inputs`` /
``--out`` given on the command line replace the file's and are relative to the
working directory.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geounet.batch.inputs import WatchSpec, absolute, expand, read_list_file
from geounet.damage.settings import DamageSettings
from geounet.engine.settings import DEVICE, PRECISIONS, VECTOR_FORMATS, PredictSettings
from geounet.errors import GeounetError
from geounet.io.aoi import bbox_problems, read_area
from geounet.io.folders import check_output_root
from geounet.io.stac_search import StacSearch
from geounet.models.card import ModelCard, read_card
from geounet.models.hardware import BACKENDS
from geounet.models.registry import is_model_name, pick_variant
from geounet.schema import ConfigError, check_leniently, config_fields, read_yaml

TILING_NAMES = {
    k: f"tiling.{k}"
    for k in ("tile_size", "overlap", "batch_size", "chunk_pixels", "max_upsample", "max_working_pixels")
}  # in messages
Task = Literal["segment", "damage"]
Tta = Literal["none", "flip", "flips", "d4"]  # geounet.compute.tta.TTA_SETS
Rescale = Literal["auto", "none"]  # geounet.engine.settings.RESCALES
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]  # auto, fp32, bf16, fp16, int8 (a damage task: no int8)
Backend = Literal[BACKENDS]  # type: ignore[valid-type]  # auto, torch or onnx
VectorFormat = Literal[VECTOR_FORMATS]  # type: ignore[valid-type]  # gpkg, fgb or parquet


@dataclass
class TilingSpec:
    """Tiles and work sizes (``tiling:``); null or absent: the model card's tiling, the machine's sizes."""

    tile_size: int | None = None  # pixels of the working grid
    overlap: int | None = None  # pixels of the working grid
    batch_size: int | None = None  # tiles per model call
    chunk_pixels: int | None = None  # target chunk side, pixels of the working grid
    max_upsample: float = 8.0  # refuse a working grid more than this many times finer (linear) than the scene
    max_working_pixels: int = 10**11  # refuse a working grid of more pixels


@dataclass
class VectorSpec:
    """``vector: {enabled, block, format, while_predicting}`` (``vector: true`` / ``false`` sets ``enabled`` alone)."""

    enabled: bool = True  # also write features.gpkg
    block: int | None = None  # polygonize block side, pixels of the scene grid; None: PredictSettings' default
    format: VectorFormat = "gpkg"  # features.gpkg, or features.<layer>.fgb (FlatGeobuf, one file per layer)
    # blocks polygonized while the chunks run, or after them; None: PredictSettings.vector_while_predicting's choice
    while_predicting: bool | None = None


@dataclass
class RulesOverride:
    """Overrides of :class:`geounet.compute.postprocess.ClassRules` fields for one class kind (same names, units)."""

    min_area_m2: float | None = None
    hole_area_m2: float | None = None
    simplify_m: float | None = None
    regularize: bool | None = None
    split_m: float | None = None
    seed_m: float | None = None
    spur_m: float | None = None
    min_length_m: float | None = None

    def given(self) -> dict[str, Any]:
        """The fields that were set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class PostprocessSpec:
    """``postprocess:``: per class kind (the kinds of ``geounet.compute.postprocess.DEFAULT_RULES``) overrides."""

    building: RulesOverride | None = None
    road: RulesOverride | None = None
    landcover: RulesOverride | None = None

    def overrides(self) -> dict[str, dict[str, Any]]:
        """``{kind: {field: value}}`` for the kinds that are given (the form PredictSettings.postprocess takes)."""
        return {f.name: rules.given() for f in dataclasses.fields(self) if (rules := getattr(self, f.name)) is not None}

    def problems(self, where: str = "postprocess") -> list[str]:
        """One line per length or area that is negative or not finite (the types allow any number)."""
        return [
            f"{where}{'.' if where else ''}{kind}.{name}: expected a number >= 0, got {value!r}"
            for kind, fields in self.overrides().items()
            for name, value in fields.items()
            if not isinstance(value, bool) and not 0 <= value < math.inf
        ]


@dataclass
class StacSearchSpec:
    """``inputs.stac_search``: a STAC API search, run at each ``geounet run``; its Items are scenes.

    The area searched is the config's ``aoi`` or ``bbox``. ``datetime``: RFC 3339 instant or
    range (``2021-05-01/2021-05-31``, ``../2021-05-31``); ``query``: property conditions such as
    ``eo:cloud_cover<20``, all of which must hold.
    """

    url: str  # the API's root, http(s)://
    collections: list[str] = field(default_factory=list)
    datetime: str | None = None
    query: list[str] = field(default_factory=list)
    max_items: int = 100


@dataclass
class InputsSpec:
    """``inputs:`` of a segment task as a mapping; at least one of the four is needed."""

    globs: str | list[str] = field(default_factory=list)  # paths or globs, relative to the config file
    list_file: Path | None = None  # one path or glob per line, relative to the list file; '#' comments
    watch: str | WatchSpec | None = None  # a folder (relative to the config file), or the folder and its options
    stac_search: StacSearchSpec | None = None  # a STAC API search; its Items are scenes


SegmentInputs = str | list[str] | InputsSpec  # a glob, globs, or the mapping


@dataclass
class DamageInputs:
    """``inputs:`` of a damage task: the scenes (one or more globs each) before and after the event."""

    pre: str | list[str]
    post: str | list[str]


@dataclass
class PipelineSpec:
    """The keys both tasks accept, as written in the file (paths resolved against its folder)."""

    task: Task = "segment"
    model: Path | None = None  # a geounet .safetensors model, or a bundled model's name (required)
    out: Path | None = None  # output folder (required here or as --out)
    tiling: TilingSpec = field(default_factory=TilingSpec)
    device: str = "auto"  # auto, cpu, cuda or cuda:N (geounet.engine.settings.DEVICE)
    precision: Precision = "auto"
    backend: Backend = "auto"
    workers: int | None = None  # chunk tasks at once; None: the machine's default
    scheduler: str | None = None  # address of a dask.distributed scheduler
    vector: bool | VectorSpec = True
    web: bool = False  # also write web/: a map of each scene that needs no internet (geounet view)
    tta: Tta = "none"  # test-time augmentation: views of each tile averaged
    rescale: Rescale = "auto"  # auto: scenes that are not 8-bit scaled to 8 bits for 8-bit models; none: refused
    # class name -> factor on its probability before the winning class is picked; None: the model card's
    decision_weights: dict[str, float] | None = None
    aoi: Path | None = None  # area of interest: a vector file (any CRS), its polygons unioned
    bbox: list[float] | None = None  # or [minx, miny, maxx, maxy] in bbox_crs
    bbox_crs: str = "EPSG:4326"
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    hash_inputs: bool = False  # sha256 every input for the up-to-date check (default: size and mtime first)
    footprints: Path | None = None  # task damage: building footprints file (None: detected on pre)
    damage: dict[str, Any] = field(default_factory=dict)  # task damage: DamageSettings fields


@dataclass
class SegmentSpec(PipelineSpec):
    """A ``task: segment`` config file (the default task)."""

    inputs: SegmentInputs | None = None


@dataclass
class DamageSpec(PipelineSpec):
    """A ``task: damage`` config file."""

    inputs: DamageInputs | None = None


@dataclass
class PipelineConfig:
    """A checked pipeline config, ready to run; all paths absolute."""

    source: Path | None  # the config file
    task: str
    model: Path | str  # a model file, or a bundled model's name (its variant picked per scene)
    out: Path
    settings: PredictSettings
    globs: list[str] = field(default_factory=list)  # the scene files the globs and the list file found
    list_file: Path | None = None
    watch: WatchSpec | None = None
    search: StacSearch | None = None  # a STAC API search whose Items are scenes too
    hash_inputs: bool = False
    postprocess: dict[str, dict[str, Any]] = field(default_factory=dict)
    damage: dict[str, Any] = field(default_factory=dict)  # task damage: pre, post (files), footprints, settings


# ---------------------------------------------------------------- loading


def load_config(
    path: str | Path, inputs: list[str] | None = None, out: str | Path | None = None, cwd: Path | None = None
) -> PipelineConfig:
    """Read and check a pipeline config; ``inputs`` / ``out`` (relative to ``cwd``) replace its own.

    Raises :class:`~geounet.schema.ConfigError` with every problem found (unknown keys
    with a did-you-mean, wrong types, missing model or inputs, bad settings, unwritable
    output folder).
    """
    path = Path(path)
    cwd = cwd or Path.cwd()
    raw = read_yaml(path)
    base = path.resolve().parent
    spec, problems = check_spec(raw, base)
    model, card = _model(spec, raw, base, problems)
    out_dir = _output_folder(spec, raw, out, cwd, problems)
    settings = predict_settings(spec)
    problems += _settings_problems(spec, settings, card) + spec.postprocess.problems()
    cfg = PipelineConfig(
        path,
        spec.task,
        model,
        out_dir or Path(),
        settings,
        hash_inputs=spec.hash_inputs,
        postprocess=settings.postprocess or {},
    )
    if isinstance(spec, DamageSpec):
        cfg.damage = _damage_job(spec, raw, base, inputs, problems)
    else:
        problems += [f"{key}: only for task: damage" for key in ("footprints", "damage") if key in raw]
        if inputs:
            cfg.globs = [str(p) for p in expand(inputs, cwd, "--inputs", problems)]
        else:
            cfg.globs, cfg.list_file, cfg.watch = _segment_inputs(spec, raw, base, problems)
            cfg.search = _stac_search(spec, problems)
    if problems:
        raise ConfigError(path, problems)
    return cfg


def check_spec(raw: dict[str, Any], base: Path) -> tuple[SegmentSpec | DamageSpec, list[str]]:
    """The file's keys checked against the spec of its ``task``: ``(spec, problems)``.

    A key with problems keeps its default in the spec (see :func:`geounet.schema.check_leniently`); the
    checks that follow must look at ``raw`` to tell a default from what the file says.
    """
    cls: type[SegmentSpec] | type[DamageSpec] = DamageSpec if raw.get("task") == "damage" else SegmentSpec
    spec, problems = check_leniently(cls, raw, "", base)
    return spec, problems


def predict_settings(spec: PipelineSpec) -> PredictSettings:
    """The prediction settings a config asks for.

    Large scenes get their vector stage in worker processes (``vector_processes=None``):
    ``geounet run``'s ``__main__`` has the guard that needs.
    """
    vector = spec.vector if isinstance(spec.vector, VectorSpec) else VectorSpec(enabled=spec.vector)
    settings = PredictSettings(
        **dataclasses.asdict(spec.tiling),
        device=spec.device,
        precision=spec.precision,
        backend=spec.backend,
        workers=spec.workers,
        scheduler=spec.scheduler,
        vector=vector.enabled,
        vector_format=vector.format,
        vector_while_predicting=vector.while_predicting,
        web=spec.web,
        vector_processes=None,
        tta=spec.tta,
        rescale=spec.rescale,
        decision_weights=spec.decision_weights,
        postprocess=spec.postprocess.overrides() or None,
        aoi=None if spec.aoi is None else str(spec.aoi),
        bbox=None if spec.bbox is None or len(spec.bbox) != 4 else (*map(float, spec.bbox),),  # type: ignore[arg-type]
        bbox_crs=spec.bbox_crs,
    )
    if vector.block is not None:
        settings.vector_block = vector.block
    return settings


def _model(
    spec: PipelineSpec, raw: dict[str, Any], base: Path, problems: list[str]
) -> tuple[Path | str, ModelCard | None]:
    """The model (a file, or a bundled model's name) and its card (a name: its first variant's), or the problem."""
    name = raw.get("model")
    if isinstance(name, str) and not (base / name).exists() and is_model_name(name):
        try:
            return name, pick_variant(name, None).card
        except GeounetError as exc:
            problems.append(f"model: {exc}")
            return name, None
    if spec.model is None:
        if raw.get("model") is None:
            problems.append("model: missing (a bundled model's name, or the path of a .safetensors model file)")
        return Path(), None
    try:
        return spec.model, read_card(spec.model)
    except GeounetError as exc:
        problems.append(f"model: {exc}")
        return spec.model, None


def _output_folder(
    spec: PipelineSpec, raw: dict[str, Any], override: str | Path | None, cwd: Path, problems: list[str]
) -> Path | None:
    """The output folder (``--out`` first), created and proven writable; None when there is none."""
    folder = absolute(cwd, override) if override is not None else spec.out
    if folder is None:
        if raw.get("out") is None:
            problems.append("out: missing (output folder; or give --out)")
        return None
    try:
        check_output_root(folder)
    except GeounetError as exc:
        problems.append(f"out: {exc}")
    return folder


# ---------------------------------------------------------------- checks that types cannot express


def _settings_problems(spec: PipelineSpec, settings: PredictSettings, card: ModelCard | None) -> list[str]:
    """Device, tile geometry (against the model's card), work sizes and the area of interest."""
    problems = _device_problems(spec.device) + _area_problems(spec)
    if card is None or spec.task != "segment":
        return problems
    return problems + settings.tiling_problems(card, TILING_NAMES)


def _area_problems(spec: PipelineSpec) -> list[str]:
    """``aoi`` and ``bbox`` together, a bad box or CRS, an ``aoi`` file without polygons (it is read here)."""
    if spec.aoi is not None and spec.bbox is not None:
        return ["aoi, bbox: give one of them, not both"]
    if spec.bbox is not None:
        return bbox_problems(spec.bbox, spec.bbox_crs, "bbox")
    if spec.aoi is not None:
        try:
            read_area(spec.aoi)
        except GeounetError as exc:
            return [f"aoi: {exc}"]
    return []


def _device_problems(device: str) -> list[str]:
    """A device this geounet does not know, or a CUDA device this machine does not have (imports torch then)."""
    if not DEVICE.fullmatch(device):
        return [f"device: expected auto, cpu, cuda or cuda:N, got str {device!r}"]
    if device.startswith("cuda"):
        from geounet.models.hardware import resolve_device  # imports torch: only when a GPU is asked for

        try:
            resolve_device(device)
        except RuntimeError as exc:
            return [f"device: {exc}".replace("--device ", "")]
    return []


# ---------------------------------------------------------------- inputs of each task


def _segment_inputs(
    spec: SegmentSpec, raw: dict[str, Any], base: Path, problems: list[str]
) -> tuple[list[str], Path | None, WatchSpec | None]:
    """The file's ``inputs``: ``(scene files of the globs and the list file, list file, watch folder)``."""
    if spec.inputs is None:
        if raw.get("inputs") is None:
            problems.append("inputs: missing (glob(s), list_file or watch; or give --inputs)")
        return [], None, None
    given = spec.inputs if isinstance(spec.inputs, InputsSpec) else InputsSpec(globs=spec.inputs)
    globs = [given.globs] if isinstance(given.globs, str) else given.globs
    files = expand(globs, base, "inputs", problems)
    if given.list_file is not None:
        files += read_list_file(given.list_file, problems)
    watch = WatchSpec(absolute(base, given.watch)) if isinstance(given.watch, str) else given.watch
    if watch is not None and not watch.folder.is_dir():
        problems.append(f"inputs.watch: {watch.folder}: folder not found")
    if not globs and given.list_file is None and watch is None and given.stac_search is None:
        problems.append("inputs: give globs, list_file, watch or stac_search")
    return [str(p) for p in files], given.list_file, watch


def _stac_search(spec: SegmentSpec, problems: list[str]) -> StacSearch | None:
    """``inputs.stac_search`` as a search, its problems added (no request is made here)."""
    given = spec.inputs.stac_search if isinstance(spec.inputs, InputsSpec) else None
    if given is None:
        return None
    try:
        search = StacSearch(given.url, tuple(given.collections), given.datetime, tuple(given.query), given.max_items)
    except GeounetError as exc:
        problems.append(f"inputs.stac_search.query: {exc.problem}")
        return None
    problems += search.problems("inputs.stac_search")
    return search


def _damage_job(
    spec: DamageSpec, raw: dict[str, Any], base: Path, override: list[str] | None, problems: list[str]
) -> dict[str, Any]:
    """task damage: ``{pre, post, footprints, settings}`` for ``geounet.damage.run.run_damage``."""
    if override:
        problems.append("--inputs: not supported for task: damage (give inputs.pre and inputs.post in the config)")
    job: dict[str, Any] = {"pre": [], "post": [], "footprints": spec.footprints}
    if spec.inputs is None:
        if raw.get("inputs") is None:
            problems.append("inputs: task: damage needs a mapping with pre and post (globs)")
    else:
        for key in ("pre", "post"):
            patterns = getattr(spec.inputs, key)
            job[key] = expand([patterns] if isinstance(patterns, str) else patterns, base, f"inputs.{key}", problems)
            if not job[key]:
                problems.append(f"inputs.{key}: no scene found")
    if spec.footprints is not None and not spec.footprints.exists():
        problems.append(f"footprints: {spec.footprints}: not found")
    job["settings"] = _damage_settings(spec, raw, problems)
    return job


def _damage_settings(spec: DamageSpec, raw: dict[str, Any], problems: list[str]) -> DamageSettings | None:
    """The ``damage:`` section as DamageSettings; top-level ``device``, ``precision``, ``web``, ``tiling`` fill what it omits."""
    names = [f.name for f in config_fields(DamageSettings)]
    shared = {
        "device": spec.device if "device" in raw else None,
        "precision": spec.precision if "precision" in raw else None,
        "web": spec.web if "web" in raw else None,
        **dataclasses.asdict(spec.tiling),
    }
    section = {k: v for k, v in shared.items() if k in names and v is not None} | spec.damage  # damage: wins
    settings, found = DamageSettings.check(section, "damage")
    problems += found
    return settings
