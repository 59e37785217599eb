"""Disaster-damage runs: pre- and post-event scenes -> a damage grade per building.

:func:`run_damage` is a sequence of steps, each in its own module:

1. ``mosaic``: each epoch's tiles as a VRT mosaic; the analysis grid is the pre
   mosaic's; post is warped onto it; only the overlap of both epochs is assessed.
2. ``footprints``: the buildings, from a vector file or detected by the model on pre.
3. ``assess``: the overlap cut into blocks, one task each (on an executor when given):
   change measures per pixel, summed per building.
4. ``grading``: per building, the mean change score -> damage score and grade.
5. ``outputs``, ``preview``: the files; ``geounet.io.run_record.DamageRecord``: run.json.

Outputs in ``OUT_DIR``: ``damage.gpkg`` (layer ``buildings``, pre scene CRS),
``change.tif`` (COG on the pre grid), ``quicklook.png``, ``run.json`` and (unless ``web``
is off) ``web/``, the map of the run (``geounet.web``). Each is written
in ``OUT_DIR/.damage.partial-<pid>/`` and moved into place when everything is complete;
``run.json`` (the completeness mark) comes last. Every input is checked before anything
is written.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.crs import CRS
from tqdm import tqdm

from geounet import __version__
from geounet.compute.change import GRADES, match_moments
from geounet.compute.grid import Box, GeoGrid
from geounet.damage.assess import CHANGE_BANDS, NODATA, SCALE, BuildingSums, assess_blocks, plan_blocks
from geounet.damage.footprints import detect_footprints, read_footprints
from geounet.damage.grading import grade_buildings, grade_counts
from geounet.damage.head import DamageHead, load_head
from geounet.damage.mosaic import as_window, mosaic_vrt, overlap_box
from geounet.damage.outputs import change_raster, publish_change_raster, write_buildings
from geounet.damage.preview import read_pair_preview, write_quicklook
from geounet.damage.settings import DamageSettings
from geounet.engine.executors import Executor
from geounet.errors import GeounetError, InputError
from geounet.io.folders import check_output_root, publish_files, staged_folder
from geounet.io.radiometry import ByteScale, model_byte_scale
from geounet.io.remote import as_scene, scene_name
from geounet.io.run_record import RUN_JSON, DamageRecord, fingerprint
from geounet.io.scene import MIN_FIELD_OF_VIEW, open_scene, scene_ground_size
from geounet.models.card import ModelCard, decision_weights_problem, file_sha256, read_card
from geounet.models.hardware import resolve_device, resolve_precision
from geounet.schema import ConfigError
from geounet.web.folder import WEB, write_damage_web

log = logging.getLogger("geounet")
ByteScales = tuple[ByteScale | None, ByteScale | None]  # pre's and post's scale to 8 bits (io.radiometry), or None

OUTPUTS = ("damage.gpkg", "change.tif", "quicklook.png")
RADIOMETRY_SAMPLE = 1024  # px a side of the decimated overlap read that post's radiometry is matched on
TILED_CHANGE = "change.tiled.tif"  # change.tif as written block by block, before the COG


@dataclass
class _Inputs:
    """A run's inputs, checked: the model, the two mosaics and their overlap, the footprints (when given)."""

    pre: list[str | Path]  # files, or URLs (geounet.io.remote)
    post: list[str | Path]
    footprints: Path | None
    model_path: Path
    card: ModelCard
    head: DamageHead | None
    device: str
    precision: str
    pre_xml: str
    pre_grid: GeoGrid
    post_xml: str
    overlap: Box
    buildings: gpd.GeoDataFrame | None  # None: detect them in the output folder
    footprint_facts: dict[str, Any]


def run_damage(
    pre: list[str | Path],
    post: list[str | Path],
    out_dir: Path,
    footprints: Path | None,
    model_path: Path,
    settings: DamageSettings,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Grade every building for damage from pre- and post-event scenes; returns the run.json content.

    ``pre`` / ``post``: one or more tiles per epoch (mosaicked as VRTs). ``footprints``:
    polygons in any CRS (reprojected to the pre scene's), or None to detect buildings with
    the model on the pre scene. ``executor``: where footprint detection and the blocks
    run; None: detection on an executor of its own, the blocks one after the other in
    this process.
    """
    t_start = time.perf_counter()
    s = settings
    problems = s.problems()
    if problems:
        raise ConfigError(None, problems)
    inputs = _check_inputs(pre, post, footprints, model_path, s)
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    with _output_folder(out_dir) as tmp:
        buildings, facts, radiometry, scales = _stage(inputs, s, tmp, executor)
        timings["prepare_s"] = time.perf_counter() - t_start
        with _timed(timings, "blocks_s"):
            sums = _measure(inputs, s, buildings, tmp, executor, radiometry, scales)
        timings |= {f"blocks_{k}": round(v, 3) for k, v in sums.timings.items()}
        with _timed(timings, "buildings_s"):
            table = grade_buildings(buildings, sums, inputs.pre_grid, s, inputs.head)
            write_buildings(table, tmp / "damage.gpkg")
        with _timed(timings, "cog_s"):
            publish_change_raster(tmp / TILED_CHANGE, tmp / "change.tif")
        with _timed(timings, "quicklook_s"):
            write_quicklook(
                tmp / "pre.vrt",
                tmp / "post.vrt",
                inputs.pre_grid,
                inputs.overlap,
                table,
                tmp / "quicklook.png",
                s.quicklook_width,
            )
        timings["total_s"] = time.perf_counter() - t_start
        record = _record(inputs, s, table, facts, sums.valid_pixels, radiometry, timings, scales)
        if s.web:
            _write_web(tmp, out_dir.name, record)
        record.write(tmp)
        _set_aside_old_web(out_dir, tmp)
        publish_files(tmp, out_dir, OUTPUTS + ((WEB,) if s.web else ()), last=RUN_JSON)
    per_grade = record.buildings["per_grade"]
    log.info(
        "damage: %d buildings (%s) in %.1f s -> %s",
        len(table),
        ", ".join(f"{k} {v}" for k, v in per_grade.items()),
        timings["total_s"],
        out_dir,
    )
    return record.to_dict()


def _check_inputs(
    pre: list[str | Path], post: list[str | Path], footprints: Path | None, model_path: Path, s: DamageSettings
) -> _Inputs:
    """Everything a run reads, checked before anything is written; one-line errors."""
    pre, post = [as_scene(p) for p in pre], [as_scene(p) for p in post]
    model_path = Path(model_path)
    card = read_card(model_path)
    if not any(c.kind == "building" for c in card.classes):
        raise GeounetError(model_path, f"model {card.name!r} has no building class: damage runs need a buildings model")
    if footprints is None and s.detect_decision_weights is not None:
        problem = decision_weights_problem(
            s.detect_decision_weights, card.class_names, "damage.detect_decision_weights"
        )
        if problem:
            raise GeounetError(None, problem)
    head = load_head(s.head) if s.head else None
    device = resolve_device(s.device)
    precision = resolve_precision(device, s.precision)
    coarsen = _coarser_post(pre[0], post[0])
    rescale = s.rescale == "auto"
    pre_xml, pre_grid = mosaic_vrt(pre, card, "pre", coarsen, rescale)
    post_xml, post_grid = mosaic_vrt(post, card, "post", rescale=rescale)
    overlap = overlap_box(pre_grid, post_grid)
    if overlap is None:
        raise InputError(
            post[0],
            f"post scene(s) do not overlap the pre scene(s) ({scene_name(pre[0])}"
            f"{' ...' if len(pre) > 1 else ''}): nothing to assess",
        )
    if min(overlap.width, overlap.height) < MIN_FIELD_OF_VIEW:
        raise InputError(
            post[0],
            f"post and pre overlap by only {overlap.width}x{overlap.height} px of the analysis grid, less than the "
            f"{MIN_FIELD_OF_VIEW} px the model needs to see context: too little to assess; give scenes that cover "
            "the same area",
        )
    tile = s.tile_size or card.tile_size
    if min(overlap.width, overlap.height) < tile:
        log.warning(
            "%s: post and pre overlap by only %dx%d px of the analysis grid, less than one model tile (%d px): "
            "grades near its edges see little context",
            post[0],
            overlap.width,
            overlap.height,
            tile,
        )
    facts: dict[str, Any] = {"source": "footprints file" if footprints else "buildings model on the pre scene"}
    buildings = None
    if footprints is not None:
        buildings, counts = read_footprints(Path(footprints), pre_grid.crs_wkt)
        facts |= counts
        area = shapely.box(*rasterio.windows.bounds(as_window(overlap), pre_grid.affine))
        if not shapely.intersects(np.asarray(buildings.geometry.values, dtype=object), area).any():
            raise InputError(
                footprints,
                f"none of its {len(buildings)} footprints lies where pre and post overlap: nothing to assess "
                "(footprints of another area, or a wrong CRS?)",
            )
    return _Inputs(
        pre,
        post,
        Path(footprints) if footprints else None,
        model_path,
        card,
        head,
        device,
        precision,
        pre_xml,
        pre_grid,
        post_xml,
        overlap,
        buildings,
        facts,
    )


COARSER_POST = 1.5  # post pixels this many times larger than pre's: assess at post's resolution


def _coarser_post(pre: str | Path, post: str | Path) -> float:
    """How many times coarser than pre the analysis grid must be: post's ground resolution / pre's when post is
    much coarser (said in a warning line), else 1."""
    with open_scene(pre) as a, open_scene(post) as b:
        res_pre = math.sqrt(math.prod(scene_ground_size(a)))
        res_post = math.sqrt(math.prod(scene_ground_size(b)))
    if res_post <= COARSER_POST * res_pre:
        return 1.0
    log.warning(
        "%s: the post scene is %.3g m/px, much coarser than the pre scene's %.3g m/px (%s): "
        "assessing at the coarser %.3g m/px",
        post,
        res_post,
        res_pre,
        scene_name(pre),
        res_post,
    )
    return res_post / res_pre


@contextmanager
def _output_folder(out_dir: Path) -> Iterator[Path]:
    """The staging folder ``out_dir/.damage.partial-<pid>``, removed on failure.

    An ``out_dir`` made here that a failed run leaves empty is removed too: no trace of a
    run that wrote nothing.
    """
    created = not out_dir.exists()
    check_output_root(out_dir)
    try:
        with staged_folder(out_dir / "damage") as tmp:
            yield tmp
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _write_web(tmp: Path, name: str, record: DamageRecord) -> None:
    """``tmp/web/``: the map of pre, post and the graded buildings (``geounet.web``), timed and listed in the record.

    ``name``: the output folder's (the page's title).
    """
    t0 = time.perf_counter()
    summary = write_damage_web(tmp, tmp / "pre.vrt", tmp / "post.vrt", record.to_dict(), title=name)
    record.timings["web_s"] = round(time.perf_counter() - t0, 3)
    record.timings["total_s"] = round(record.timings["total_s"] + record.timings["web_s"], 3)
    record.outputs["web/index.html"] = {"bytes": summary.bytes, "tiles": summary.tiles, "features": summary.features}


def _set_aside_old_web(out_dir: Path, tmp: Path) -> None:
    """Move a previous run's ``web/`` into ``tmp`` (removed with it): a map never outlives the run it shows.

    The completeness mark (run.json) goes first, as :func:`publish_files` does: a folder without it is incomplete.
    """
    old = out_dir / WEB
    if old.exists():
        (out_dir / RUN_JSON).unlink(missing_ok=True)
        os.replace(old, tmp / f".{WEB}.old")


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """``timings[key]``: the wall-clock seconds the block took."""
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def _stage(
    inputs: _Inputs, s: DamageSettings, tmp: Path, executor: Executor | None
) -> tuple[gpd.GeoDataFrame, dict[str, Any], tuple[np.ndarray, np.ndarray] | None, ByteScales]:
    """Write the VRT mosaics into ``tmp``; the buildings (detected now if no file was given), their facts,
    post's radiometry gain and offset when ``match_radiometry`` asks for them, and each epoch's 8-bit scale
    (``rescale``: epochs that are not 8-bit, for an 8-bit model; post takes pre's once in pre's units)."""
    (tmp / "pre.vrt").write_text(inputs.pre_xml)
    (tmp / "post.vrt").write_text(inputs.post_xml)
    buildings, facts = inputs.buildings, dict(inputs.footprint_facts)
    if buildings is None:
        buildings = detect_footprints(tmp / "pre.vrt", tmp / "_detect", inputs.model_path, s, executor)
        facts |= {"used": len(buildings)}
        if buildings.empty:
            raise InputError(inputs.pre[0], "the buildings model found no building in the pre scene(s)")
    radiometry = None
    if s.match_radiometry:  # from a decimated read of the overlap
        pre_px, post_px, ok = read_pair_preview(
            tmp / "pre.vrt", tmp / "post.vrt", inputs.pre_grid, inputs.overlap, RADIOMETRY_SAMPLE, inputs.card.bands
        )
        radiometry = match_moments(pre_px, post_px, ok[0] & ok[1])
    scales: list[ByteScale | None] = [None, None]
    if s.rescale == "auto":
        with rasterio.open(tmp / "pre.vrt") as src:
            scales[0] = model_byte_scale(src, inputs.card)
        if radiometry is not None:
            scales[1] = scales[0]  # post is brought into pre's units first
        else:
            with rasterio.open(tmp / "post.vrt") as src:
                scales[1] = model_byte_scale(src, inputs.card)
        if scales[0] is not None or scales[1] is not None:
            log.info(
                "damage: pre and post scaled to 8 bits for model %s (each band's 2nd and 98th percentiles)",
                inputs.card.name,
            )
    return buildings, facts, radiometry, (scales[0], scales[1])


def _measure(
    inputs: _Inputs,
    s: DamageSettings,
    buildings: gpd.GeoDataFrame,
    tmp: Path,
    executor: Executor | None,
    radiometry: tuple[np.ndarray, np.ndarray] | None,
    scales: ByteScales = (None, None),
) -> BuildingSums:
    """Assess every block of the overlap: the change raster into ``tmp``, the sums per building returned."""
    jobs = plan_blocks(inputs.overlap, s.block, np.asarray(buildings.geometry.values, dtype=object), inputs.pre_grid)
    sums = BuildingSums(len(buildings))
    args = (
        str(tmp / "pre.vrt"),
        str(tmp / "post.vrt"),
        inputs.pre_grid,
        str(inputs.model_path),
        s,
        inputs.device,
        inputs.precision,
        radiometry,
        scales,
    )
    with (
        tqdm(total=len(jobs), unit="block", desc="damage", disable=True if s.quiet else None, leave=False) as bar,
        change_raster(tmp / TILED_CHANGE, inputs.pre_grid, inputs.card.name) as dst,
    ):
        for res in assess_blocks(jobs, executor, *args):
            bar.update(1)
            sums.add(res)
            if res.change is not None:
                dst.write(res.change, window=as_window(res.box))
    if sums.valid_pixels == 0:
        raise InputError(inputs.post[0], "pre and post overlap only where one of them has no data: nothing to assess")
    return sums


def _record(
    inputs: _Inputs,
    s: DamageSettings,
    table: gpd.GeoDataFrame,
    facts: dict[str, Any],
    valid_pixels: int,
    radiometry: tuple[np.ndarray, np.ndarray] | None,
    timings: dict[str, float],
    scales: ByteScales = (None, None),
) -> DamageRecord:
    """The run.json record of a finished run."""
    return DamageRecord(
        geounet_version=__version__,
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        inputs={
            "pre": [fingerprint(p, sha256=False) for p in inputs.pre],
            "post": [fingerprint(p, sha256=False) for p in inputs.post],
            "footprints": fingerprint(inputs.footprints, sha256=False) if inputs.footprints else None,
        },
        model={
            "path": str(inputs.model_path.resolve()),
            "name": inputs.card.name,
            "sha256": file_sha256(inputs.model_path),
            "resolution_m": inputs.card.resolution_m,
        },
        settings=asdict(s) | {"device": inputs.device, "precision": inputs.precision},
        method=_method(inputs, s, valid_pixels, radiometry, scales),
        footprints=facts,
        buildings=grade_counts(table, inputs.overlap, inputs.pre_grid),
        timings={k: round(v, 3) for k, v in timings.items()},
        outputs={
            "damage.gpkg": {"layer": "buildings", "crs": "pre scene", "count": len(table)},
            "change.tif": {"bands": list(CHANGE_BANDS), "value": f"DN / {SCALE}", "nodata": NODATA},
            "quicklook.png": "pre (left) and post warped to the pre grid (right), footprints coloured by grade",
        },
    )


def _method(
    inputs: _Inputs,
    s: DamageSettings,
    valid_pixels: int,
    radiometry: tuple[np.ndarray, np.ndarray] | None,
    scales: ByteScales = (None, None),
) -> dict[str, Any]:
    """run.json's ``method``: the grid, the overlap, and how measures, scores and grades are made."""
    grid, overlap, head = inputs.pre_grid, inputs.overlap, inputs.head
    return {
        "grid": "pre scene grid (its CRS and resolution); post warped onto it (bilinear)",
        "pre_grid": {
            "crs": CRS.from_wkt(grid.crs_wkt).to_string(),
            "transform": list(grid.transform),
            "width": grid.width,
            "height": grid.height,
        },
        "overlap_window": {
            "col_off": overlap.col0,
            "row_off": overlap.row0,
            "width": overlap.width,
            "height": overlap.height,
        },
        "valid_pixels": valid_pixels,
        "post_radiometry": None
        if radiometry is None
        else {"gain": radiometry[0].round(4).tolist(), "offset": radiometry[1].round(3).tolist()},
        "byte_scale": {epoch: None if b is None else b.to_dict() for epoch, b in zip(("pre", "post"), scales)},
        "feature_distance": f"1 - cosine similarity of the U-Net encoder features of pre and post, "
        f"encoder stage(s) {s.feature_stages}, upsampled bilinearly to pixels",
        "change_score": "(F + w c D) / (1 + w c); F = clip((feature_distance - feature_low) / "
        "(feature_high - feature_low), 0, 1); D = clip((p_pre - p_post) / p_pre, 0, 1); "
        "c = min(1, p_pre / prob_ref); w = prob_weight",
        "damage_score": "1 - (1 - w c D) (1 - F) from the footprint's means over its pixels valid in pre "
        "and post: D = clip(1 - p_post / min(p_pre, prob_ref), 0, 1) (presence_drop), c = min(1, p_pre / "
        "prob_ref) (confidence), F = clip((feature_distance - feature_low) / (feature_high - feature_low), 0, 1) "
        "(change_term); w = prob_weight",
        "grades": dict(zip(GRADES[1:], s.thresholds))
        if head is None
        else {
            "damage_head": str(s.head),
            "trained": head.facts.get("train"),
            "validation": head.facts.get("val"),
            "damage_score": "expected severity under the head's grade probabilities (0, 1/3, 2/3, 1)",
        },
    }
