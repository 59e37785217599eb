"""Change measures block by block: the overlap cut into blocks, one task each, sums per building.

A task (:func:`assess_block`) reads its block plus a halo from both epochs on the pre
grid, runs the buildings U-Net once over the pair (``change.pair_forward`` through
``predict_array``'s tiling and blending), computes the per-pixel change score
(``change.change_score``), rasterizes the block's footprints once and returns
per-building sums (``zonal.zonal_sums``). Sums from all blocks add up, so a building
that crosses a block edge gets exact means (:class:`BuildingSums`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize

from geounet.compute.change import change_score, pair_forward
from geounet.compute.grid import Box, GeoGrid, blocks
from geounet.compute.zonal import zonal_means, zonal_sums
from geounet.damage.mosaic import as_window, post_on_pre
from geounet.damage.settings import DamageSettings
from geounet.engine.executors import Executor
from geounet.engine.tiles import predict_array
from geounet.io.radiometry import ByteScale
from geounet.models.card import normalise
from geounet.models.registry import cached_model

NODATA = 255  # change.tif DN outside the overlap or without data in either epoch
SCALE = 254  # change.tif: value = DN / SCALE
CHANGE_BANDS = ("change_score", "building_prob_pre", "building_prob_post", "feature_distance")
# per-block timings (seconds): wall clock and CPU time of the process (all threads; exact when blocks run in-process)
BLOCK_TIMINGS = tuple(
    f"{part}_{kind}" for part in ("read_pre", "warp_post", "model", "zonal") for kind in ("s", "cpu_s")
)
IN_FLIGHT = 4  # block tasks submitted at once to an executor
RETRIES = 1  # a failed block task is retried this often (locally: after an OSError only)


@dataclass
class FootprintBlock:
    """A task's work: one block of the overlap (pre-grid pixels) and the footprints that touch it."""

    box: Box
    footprints: list[Any]  # shapely geometries in the pre CRS; local ids 1..n in this order
    ids: np.ndarray  # their indexes in the buildings table


@dataclass
class BlockMeasures:
    """What a task returns: the block's change raster and per-building sums over its valid pixels."""

    box: Box
    change: np.ndarray | None  # (bands, h, w) uint8 DN of CHANGE_BANDS (value = DN / SCALE), NODATA; None: no data
    ids: np.ndarray
    sums: np.ndarray  # (bands, n) sums of CHANGE_BANDS values over valid pixels
    counts: np.ndarray  # (n,) valid pixels per building
    valid_pixels: int
    timings: dict[str, float]  # BLOCK_TIMINGS, seconds


def plan_blocks(overlap: Box, size: int, geoms: np.ndarray, pre: GeoGrid) -> list[FootprintBlock]:
    """``overlap`` cut into ``size``-pixel blocks (raster order), each with the footprints ``geoms`` it touches."""
    tree = shapely.STRtree(geoms)
    jobs = []
    for box in blocks(overlap, size):
        area = shapely.box(*rasterio.windows.bounds(as_window(box), pre.affine))
        idx = np.sort(tree.query(area, predicate="intersects"))
        jobs.append(FootprintBlock(box, list(geoms[idx]), idx))
    return jobs


def assess_block(
    job: FootprintBlock,
    pre_vrt: str,
    post_vrt: str,
    pre: GeoGrid,
    model_path: str,
    s: DamageSettings,
    device: str,
    precision: str,
    radiometry: tuple[np.ndarray, np.ndarray] | None = None,
    byte_scales: tuple[ByteScale | None, ByteScale | None] = (None, None),
) -> BlockMeasures:
    """Read a block (plus halo) of both epochs on the pre grid, score change, sum per building.

    ``radiometry``: per-band (gain, offset) that bring post to pre's radiometry, or None.
    ``byte_scales``: pre's and post's scale to 8 bits (after ``radiometry``), or None each.
    """
    t = {k: 0.0 for k in BLOCK_TIMINGS}
    net, card = cached_model(model_path, device)
    building = next(i for i, c in enumerate(card.classes) if c.kind == "building")
    box = job.box
    halo = Box(box.row0 - s.halo, box.col0 - s.halo, box.row1 + s.halo, box.col1 + s.halo).intersect(pre.extent)
    assert halo is not None  # the block lies inside the grid
    core = box.relative_to(halo)
    (pre_px, pre_ok), (post_px, post_ok) = _read_pair(pre_vrt, post_vrt, pre, halo, card.bands, t)
    t2 = _clock()
    valid = pre_ok & post_ok
    n = len(job.ids)
    if not valid[core].any():
        return BlockMeasures(box, None, job.ids, np.zeros((len(CHANGE_BANDS), n)), np.zeros(n, np.int64), 0, t)
    if radiometry is not None:  # post -> pre's radiometry (gain, offset per band)
        post_px = post_px.astype(np.float32) * radiometry[0][:, None, None] + radiometry[1][:, None, None]
    if byte_scales[0] is not None:
        pre_px = byte_scales[0].apply(pre_px)
    if byte_scales[1] is not None:
        post_px = byte_scales[1].apply(post_px)
    x_pre, x_post = normalise(pre_px, card), normalise(post_px, card)
    x_pre[:, ~pre_ok] = 0.0  # nodata -> band mean
    x_post[:, ~post_ok] = 0.0
    nb = x_pre.shape[0]

    def forward(net_: Any, batch: np.ndarray, dev: str, prec: str) -> np.ndarray:
        return pair_forward(net_, batch[:, :nb], batch[:, nb:], building, dev, prec, tuple(s.feature_stages))

    tile = s.tile_size or card.tile_size
    overlap = card.overlap if s.overlap is None else s.overlap
    p_pre, p_post, dist = predict_array(
        net,
        np.concatenate([x_pre, x_post]),
        tile,
        overlap,
        device,
        precision,
        s.batch_size,
        valid=valid,
        forward=forward,
    )[:, core[0], core[1]]
    t3 = _clock()
    _lap(t, "model", t2, t3)
    valid = valid[core]
    values = np.stack([change_score(p_pre, p_post, dist, s.rules()), p_pre, p_post, dist])
    dn = np.rint(np.clip(values, 0.0, 1.0) * SCALE).astype(np.uint8)
    dn[:, ~valid] = NODATA
    sums, counts = _sums_per_footprint(job, values, valid, pre)
    _lap(t, "zonal", t3, _clock())
    return BlockMeasures(box, dn, job.ids, sums, counts, int(valid.sum()), t)


def _read_pair(
    pre_vrt: str, post_vrt: str, pre: GeoGrid, box: Box, bands: list[int], timings: dict[str, float]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``box`` of both epochs on the pre grid: ``((pre pixels, pre valid), (post pixels, post valid))``.

    Post is warped onto the pre grid as it is read; read and warp times go to ``timings``.
    """
    t0 = _clock()
    with rasterio.open(pre_vrt) as src:
        pre_px = src.read(bands, window=as_window(box))
        pre_ok = src.dataset_mask(window=as_window(box)) > 0
    t1 = _clock()
    with rasterio.open(post_vrt) as src, post_on_pre(src, pre) as vrt:
        post_px = vrt.read(bands, window=as_window(box))
        post_ok = vrt.read(vrt.count, window=as_window(box)) > 0
    _lap(timings, "read_pre", t0, t1)
    _lap(timings, "warp_post", t1, _clock())
    return (pre_px, pre_ok), (post_px, post_ok)


def _sums_per_footprint(
    job: FootprintBlock, values: np.ndarray, valid: np.ndarray, pre: GeoGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``values`` (bands, h, w) and valid-pixel counts over each of the block's footprints."""
    n = len(job.ids)
    if not n:
        return np.zeros((len(values), 0)), np.zeros(0, np.int64)
    ids = rasterize(
        zip(job.footprints, range(1, n + 1)),
        out_shape=(job.box.height, job.box.width),
        transform=rasterio.windows.transform(as_window(job.box), pre.affine),
        fill=0,
        dtype="int32",
    )
    sums, counts = zonal_sums(ids, values, valid, n)
    return sums[:, 1:], counts[1:]


def _clock() -> tuple[float, float]:
    """(wall clock, CPU time of all the process's threads), seconds."""
    return time.perf_counter(), time.process_time()


def _lap(t: dict[str, float], name: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    t[f"{name}_s"] += end[0] - start[0]
    t[f"{name}_cpu_s"] += end[1] - start[1]


def assess_blocks(jobs: list[FootprintBlock], executor: Executor | None, *args: Any) -> Iterator[BlockMeasures]:
    """``assess_block(job, *args)`` for every job, as they complete.

    ``executor``: where the tasks run (a few in flight); None: one after the other in this process.
    """
    if executor is None:
        return (assess_block(job, *args) for job in jobs)
    return executor.imap_unordered(assess_block, jobs, *args, in_flight=IN_FLIGHT, retries=RETRIES)


@dataclass
class BuildingSums:
    """Per-building sums of the change measures over all blocks, and the run's block timings."""

    n: int  # buildings
    sums: np.ndarray = field(init=False)  # (len(CHANGE_BANDS), n)
    counts: np.ndarray = field(init=False)  # (n,) valid pixels
    valid_pixels: int = 0  # in the whole overlap
    timings: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in BLOCK_TIMINGS})

    def __post_init__(self) -> None:
        self.sums = np.zeros((len(CHANGE_BANDS), self.n))
        self.counts = np.zeros(self.n, np.int64)

    def add(self, res: BlockMeasures) -> None:
        for k, v in res.timings.items():
            self.timings[k] += v
        if res.change is not None:
            np.add.at(self.sums.T, res.ids, res.sums.T)  # rows of the transposed view: buildings
            np.add.at(self.counts, res.ids, res.counts)
            self.valid_pixels += res.valid_pixels

    def means(self) -> np.ndarray:
        """(len(CHANGE_BANDS), n) means over each building's valid pixels; NaN without any."""
        return zonal_means(self.sums, self.counts)
