"""Prediction settings: what the user asked for, and the same settings resolved once for the machine.

``PredictSettings`` holds every knob that changes outputs or how they are computed
(recorded in run.json). ``None`` and ``"auto"`` mean "settle it": tile size and overlap
(pixels of the working grid) from the model card, device/precision/backend and the batch,
chunk and worker counts from the machine where the model runs (``resolve_settings``:
on a cluster, the workers decide).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from geounet.compute.postprocess import DEFAULT_RULES
from geounet.compute.tta import TTA_SETS
from geounet.errors import GeounetError, ModelError
from geounet.io.scene import WorkBudget
from geounet.models.card import ModelCard, decision_weights_problem
from geounet.models.hardware import (
    BACKENDS,
    default_batch_size,
    default_chunk_pixels,
    default_workers,
    onnxruntime_available,
    resolve_backend,
    resolve_device,
    resolve_precision,
)
from geounet.models.quantize import find_int8, require_int8

if TYPE_CHECKING:
    from geounet.engine.executors import Executor

log = logging.getLogger("geounet")

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # int8: the model's quantized ONNX file (CPU)
VECTOR_FORMATS = ("gpkg", "fgb", "parquet")  # features.gpkg, or one features.<layer>.<format> per layer
RESCALES = ("auto", "none")  # auto: a scene that is not 8-bit, for an 8-bit model, scaled to 8 bits (io.radiometry)
CLI_NAMES = {
    k: "--" + k.replace("_", "-")
    for k in (
        "tile_size",
        "overlap",
        "batch_size",
        "workers",
        "device",
        "precision",
        "backend",
        "tta",
        "max_upsample",
        "max_working_pixels",
        "vector_format",
        "rescale",
    )
} | {"decision_weights": "--decision-weight"}
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class PredictSettings:
    """Everything that changes the outputs or how they are computed (recorded in run.json)."""

    tile_size: int | None = None  # pixels on the working grid; None: the model card's
    overlap: int | None = None
    batch_size: int | None = None  # tiles per model call; None: infer.default_batch_size
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"  # auto, torch or onnx (ONNX Runtime: fp32 or int8 on the CPU; hardware.resolve_backend)
    workers: int | None = None  # chunk tasks at once in a local run; None: infer.default_workers
    chunk_pixels: int | None = None  # target chunk side; a chunk is whole tiles; None: infer.default_chunk_pixels
    resample_tolerance: float = 0.25  # resample when scene / model resolution differ by more
    max_upsample: float = 8.0  # refuse a working grid more than this many times finer (linear) than the scene
    max_working_pixels: int = 10**11  # refuse a working grid of more pixels
    scheduler: str | None = None  # address of an existing dask.distributed scheduler
    # On a cluster: the workers blend and write whole output blocks, the client only schedules
    # ("workers"), or every chunk's result travels to the client, which writes the rasters ("client").
    stitch_on: str = "workers"
    vector: bool = True  # also write features.gpkg
    vector_block: int = 1024  # polygonize block side, pixels of the scene grid
    vector_format: str = "gpkg"  # VECTOR_FORMATS: gpkg (one file, QGIS styles), fgb or parquet (one file per layer)
    # Local vector stage in worker processes (True), in this process's threads (False), or
    # None: processes for scenes of 4 vector blocks or more on a machine of 4 cores or more
    # (executors.VECTOR_PROCESS_MIN_CORES). Worker processes import the
    # caller's __main__ module (multiprocessing), so a script needs the usual
    # ``if __name__ == "__main__":`` guard; the CLI, whose __main__ has it, uses None.
    vector_processes: bool | None = False
    # Blocks handed to the vector stage while the chunks still run (True), or all polygonized
    # after the last chunk (False), or None: while they run only where the vector stage has
    # cores of its own (worker processes, a cluster, a model on a GPU). On a CPU whose cores
    # the model fills, with the vector tasks in this process's threads, overlapping hides
    # nothing and adds the vector stage's memory to the model's (benchmarks/README.md).
    vector_while_predicting: bool | None = None
    postprocess: dict | None = None  # per kind ('building', ...) overrides of postprocess.DEFAULT_RULES fields
    tta: str = "none"  # test-time augmentation: none, flip, flips or d4 (geounet.compute.tta.TTA_SETS)
    # auto: a scene whose bands are not uint8 (11-bit satellite products, floats), for a model that takes
    # uint8, is scaled to 8 bits by each band's 2nd-98th percentiles (geounet.io.radiometry); none: refused
    rescale: str = "auto"
    # class name -> factor on its probability before the winning class is picked (classes.tif, polygons);
    # None: the model card's decision_weights. Resolved: every class's factor, the card's overridden by these.
    decision_weights: dict[str, float] | None = None
    aoi: str | None = None  # area of interest: a vector file's polygons (any CRS); only tiles meeting it run
    bbox: tuple[float, float, float, float] | None = None  # or a box: minx, miny, maxx, maxy in bbox_crs
    bbox_crs: str = "EPSG:4326"
    quiet: bool = False
    # also write web/: a map of the scene, classes and features that needs no internet (geounet.web;
    # served by geounet view). Off by default: it reads the scene once more and writes its tiles.
    web: bool = False

    def resolved(self, card: ModelCard, model_path: str | Path | None = None) -> PredictSettings:
        """Every ``auto``/``None`` settled for this machine: tiling, device, precision, backend, their defaults.

        ``model_path``: the model file, whose int8 version (if any) decides ``int8`` and
        ``auto`` precision on the CPU (:func:`int8_choice`); None: auto never picks int8.
        """
        s = self.tiling_resolved(card)
        s.device = resolve_device(s.device)
        int8_ok = int8_choice(model_path, s) if model_path is not None and s.device == "cpu" else False
        s.precision = resolve_precision(s.device, s.precision, int8_ok)
        try:
            s.backend = resolve_backend(s.device, s.precision, s.backend)
        except ValueError as exc:
            raise GeounetError(None, str(exc)) from None
        s.workers = s.workers or default_workers(s.device, s.backend)
        s.batch_size = s.batch_size or default_batch_size(s.device, s.backend)
        assert s.tile_size is not None and s.overlap is not None  # settled by tiling_resolved
        s.chunk_pixels = s.chunk_pixels or default_chunk_pixels(s.device, s.backend, s.tile_size - s.overlap)
        return s

    @property
    def budget(self) -> WorkBudget:
        """The limits on a scene's working grid (``geounet.io.scene.working_grid``)."""
        return WorkBudget(self.max_upsample, self.max_working_pixels)

    def tiling_resolved(self, card: ModelCard) -> PredictSettings:
        """A copy with tile size and overlap settled from the model card, and the sizes checked.

        Nothing here asks the hardware: a cluster's client uses it alone (``agree_on_settings``).
        """
        problems = self.tiling_problems(card, CLI_NAMES) + self.choice_problems(CLI_NAMES)
        if problems:
            raise GeounetError(None, "; ".join(problems))
        s = PredictSettings(**asdict(self))
        s.tile_size = s.tile_size or card.tile_size
        s.overlap = card.overlap if s.overlap is None else s.overlap
        chosen = {**card.decision_weights, **(self.decision_weights or {})}
        s.decision_weights = {n: float(chosen.get(n, 1.0)) for n in card.class_names}
        return s

    def tiling_problems(self, card: ModelCard, names: dict[str, str] | None = None) -> list[str]:
        """Tile geometry (pixels, the card filling what is unset) and work sizes that cannot work, one line each.

        ``names``: what each setting is called where the user wrote it (``--tile-size``,
        ``tiling.tile_size``); the field name otherwise.
        """
        name = (names or {}).get
        tile = self.tile_size or card.tile_size
        overlap = card.overlap if self.overlap is None else self.overlap
        problems = []
        if tile % 32:
            problems.append(
                f"{name('tile_size', 'tile_size')}: must be a multiple of 32 (the U-Net's stride), got {tile}"
            )
        if overlap % 2 or not 0 <= overlap < tile:
            problems.append(f"{name('overlap', 'overlap')}: must be even and smaller than the tile size, got {overlap}")
        if self.max_upsample < 1:
            problems.append(f"{name('max_upsample', 'max_upsample')}: must be at least 1, got {self.max_upsample}")
        for key in ("batch_size", "workers", "chunk_pixels", "max_working_pixels"):
            value = getattr(self, key)
            if value is not None and value < 1:
                problems.append(f"{name(key, key)}: must be at least 1, got {value}")
        if self.decision_weights is not None:
            where = name("decision_weights", "decision_weights")
            problem = decision_weights_problem(self.decision_weights, card.class_names, where)
            if problem:
                problems.append(problem)
        return problems

    def choice_problems(self, names: dict[str, str] | None = None) -> list[str]:
        """Device, precision, backend, test-time augmentation, vector format and rescale values this geounet does not know."""
        name = (names or {}).get
        problems = []
        for key, choices in (
            ("precision", PRECISIONS),
            ("backend", BACKENDS),
            ("tta", tuple(TTA_SETS)),
            ("vector_format", VECTOR_FORMATS),
            ("rescale", RESCALES),
            ("stitch_on", ("workers", "client")),
        ):
            if getattr(self, key) not in choices:
                problems.append(f"{name(key, key)}: must be one of {', '.join(choices)}, got {getattr(self, key)!r}")
        if not DEVICE.fullmatch(self.device):
            problems.append(f"{name('device', 'device')}: must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        return problems


def int8_choice(model_path: str | Path, settings: PredictSettings) -> bool:
    """Whether ``auto`` may take the model's int8 version on the CPU (its record's measurement allows it).

    ``precision="int8"``: checks that the int8 version exists for this very model file
    (one-line :class:`~geounet.errors.ModelError` otherwise) and returns True.
    """
    if settings.precision == "int8":
        require_int8(model_path)
        return True
    if settings.precision != "auto" or settings.backend == "torch" or not onnxruntime_available():
        return False
    try:
        found = find_int8(model_path)
    except ModelError as exc:  # a damaged record: fp32, said once
        log.warning("%s", exc)
        return False
    return found is not None and found[1].auto_ok()


# settings each worker of a cluster settles for itself (its GPUs, its CPU, its onnxruntime)
WORKER_RESOLVED = ("device", "precision", "backend", "batch_size", "chunk_pixels")


def resolve_settings(
    settings: PredictSettings,
    card: ModelCard,
    executor: Executor | None = None,
    model_path: str | Path | None = None,
) -> PredictSettings:
    """``settings.resolved(card, model_path)``, with ``auto`` settled where the model will run.

    On a ``--scheduler`` cluster, device, precision, backend, batch size and chunk size
    are settled by the workers (``Executor.run_on_workers``), not by the client: a laptop without a
    GPU sends ``--device auto`` work to GPU workers as CUDA work, and an explicit
    ``--device cuda`` is checked there. Workers that settle differently (a mixed
    cluster) are an error naming them; name the settings explicitly then.
    """
    if not settings.scheduler or executor is None:
        return settings.resolved(card, model_path)
    try:
        answers = executor.run_on_workers(_resolve_here, settings, card, model_path)
    except Exception as exc:  # noqa: BLE001 - no answer: the client's own view, as before
        log.debug("workers could not settle the settings (%s); using the client's", exc)
        answers = {}
    if not answers:
        return settings.resolved(card, model_path)
    return agree_on_settings(settings, answers, card)


def agree_on_settings(settings: PredictSettings, answers: dict, card: ModelCard) -> PredictSettings:
    """The settings every worker settled on (``answers``: worker address -> dict or error text)."""
    errors = {w: a for w, a in answers.items() if isinstance(a, str)}
    if errors:
        worker, problem = sorted(errors.items())[0]
        raise GeounetError(None, f"Dask worker {worker}: {problem}")
    views = {tuple(a[k] for k in WORKER_RESOLVED) for a in answers.values()}
    if len(views) > 1:
        seen = "; ".join(f"{w}: {'/'.join(str(a[k]) for k in WORKER_RESOLVED[:3])}" for w, a in sorted(answers.items()))
        raise GeounetError(
            None,
            f"the cluster's workers settle device/precision/backend differently ({seen}); "
            "give --device, --precision and --backend explicitly",
        )
    s = replace(settings.tiling_resolved(card), **dict(zip(WORKER_RESOLVED, views.pop())))
    s.workers = s.workers or default_workers(s.device, s.backend)  # not used on a cluster; recorded in run.json
    return s


def _resolve_here(settings: PredictSettings, card: ModelCard, model_path: str | Path | None = None) -> dict | str:
    """On a worker: its own resolution of ``settings`` (or the one-line problem)."""
    try:
        s = settings.resolved(card, model_path)
    except (GeounetError, RuntimeError, ValueError) as exc:
        return str(exc)
    return {k: getattr(s, k) for k in WORKER_RESOLVED}


def rules_with_overrides(overrides: dict | None) -> dict:
    """``DEFAULT_RULES`` with per-kind field overrides, e.g. ``{"building": {"split_m": 3.0}}``."""
    rules = dict(DEFAULT_RULES)
    for kind, fields in (overrides or {}).items():
        if kind not in rules:
            raise GeounetError(None, f"postprocess: unknown class kind {kind!r} (one of {', '.join(rules)})")
        try:
            rules[kind] = replace(rules[kind], **fields)
        except TypeError as exc:
            raise GeounetError(None, f"postprocess.{kind}: {exc}") from None
    return rules
