"""Disaster-damage runs: pre- and post-event scenes -> a damage grade per building.

1. Each epoch's tiles are mosaicked on the fly as a GDAL VRT (XML written here, with a
   per-dataset mask band built from the tiles' own masks, so gaps and nodata stay nodata).
2. The *analysis grid* is the pre mosaic's own grid (CRS, 0.6 m on Joplin): the post
   mosaic is warped onto it window by window through a ``WarpedVRT`` (bilinear, with an
   alpha band saying where post has data). Only the pre-grid window covered by both
   epochs (the *overlap*) is assessed.
3. The overlap is cut into blocks (one task each, on Dask when a client is given); a task
   reads its block plus a halo from both epochs, runs the buildings U-Net once over the
   pair (``change.pair_forward`` through ``infer.predict_array``'s tiling and blending),
   computes the per-pixel change score (``change.change_score``), rasterizes its
   footprints once and returns per-building sums (``zonal.zonal_sums``).
4. Per building: damage_score = mean change score over its valid pixels; grade from the
   thresholds; buildings outside the overlap (or with too few valid pixels) are
   ``not_assessed``.

Outputs in ``OUT_DIR``: ``damage.gpkg`` (layer ``buildings``, pre scene CRS),
``change.tif`` (COG on the pre grid), ``quicklook.png``, ``run.json``. Each is written
under a temporary name in ``OUT_DIR/.damage.partial-<pid>/`` and renamed into place when
everything is complete; ``run.json`` comes last.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geounet import __version__
from geounet.compute.change import GRADES, NOT_ASSESSED, ChangeRules, change_score, grade, match_moments, pair_forward
from geounet.errors import GeounetError, InputError, OutputError
from geounet.models.card import ModelCard, file_sha256, normalise, read_card
from geounet.compute.zonal import zonal_means, zonal_sums

log = logging.getLogger("geounet")

NODATA = 255
SCALE = 254  # value = DN / 254
CHANGE_BANDS = ("change_score", "building_prob_pre", "building_prob_post", "feature_distance")
GRADE_COLOURS = {  # quicklook / QGIS: RGB
    "no-damage": (40, 200, 60), "minor-damage": (250, 230, 40), "major-damage": (255, 140, 0),
    "destroyed": (230, 20, 20), NOT_ASSESSED: (160, 160, 160),
}
OUTPUTS = ("damage.gpkg", "change.tif", "quicklook.png")
# per-block timings (seconds): wall clock and CPU time of the process (all threads; exact when blocks run in-process)
BLOCK_TIMINGS = tuple(f"{part}_{kind}" for part in ("read_pre", "warp_post", "model", "zonal") for kind in ("s", "cpu_s"))


@dataclass
class DamageSettings:
    """Thresholds and tiling of a damage run (the config's ``damage:`` section).

    Scores are unitless in [0, 1]; ``block``, ``halo``, ``tile_size`` and ``overlap`` are
    pixels of the pre scene's grid.
    """

    thresholds: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])  # minor, major, destroyed from
    feature_low: float = 0.2  # encoder feature distance that still counts as "no change"
    feature_high: float = 0.5  # ... and from which a place counts as fully changed
    feature_stages: list[int] = field(default_factory=lambda: [1])  # encoder stages compared (1 = first)
    prob_weight: float = 0.25  # weight of the building-probability drop (feature term: 1)
    prob_ref: float = 0.3  # pre building probability that gives the drop full weight
    match_radiometry: bool = False  # first give post the per-band mean and std of pre over the overlap
    min_valid_fraction: float = 0.5  # share of a footprint that needs pre and post data to be assessed
    block: int = 1024  # block side per task
    halo: int = 64  # context read around each block
    tile_size: int | None = None  # model tiles; None: the model card's
    overlap: int | None = None
    batch_size: int = 2  # tile pairs per model call
    device: str = "auto"
    precision: str = "auto"
    quicklook_width: int = 1600  # pixels, both panels
    quiet: bool = False  # no progress bar
    head: str | None = None  # a trained damage head (geounet train, task: damage_head): grades from it, not thresholds

    def __post_init__(self) -> None:
        self.thresholds = [float(t) for t in self.thresholds]
        self.feature_stages = [int(k) for k in self.feature_stages]
        if not self.feature_stages or min(self.feature_stages) < 1:
            raise ValueError("feature_stages must list encoder stages, 1 = the first")
        grade(np.zeros(0), tuple(self.thresholds))  # validates (ValueError)
        if not 0 <= self.feature_low < self.feature_high:
            raise ValueError("feature_low must be >= 0 and below feature_high")
        if self.prob_weight < 0 or self.prob_ref <= 0:
            raise ValueError("prob_weight must be >= 0 and prob_ref > 0")
        if not 0 < self.min_valid_fraction <= 1:
            raise ValueError("min_valid_fraction must be in (0, 1]")
        if self.block < 64 or self.halo < 0 or self.batch_size < 1 or self.quicklook_width < 64:
            raise ValueError("block must be >= 64, halo >= 0, batch_size >= 1, quicklook_width >= 64")

    @classmethod
    def from_dict(cls, raw: dict | None) -> "DamageSettings":
        """From a config's ``damage:`` mapping; unknown keys are an error."""
        raw = dict(raw or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise GeounetError(None, f"damage: unknown setting(s) {unknown}; known: {sorted(names)}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise GeounetError(None, f"damage: {exc}") from None

    def rules(self) -> ChangeRules:
        return ChangeRules(self.feature_low, self.feature_high, self.prob_weight, self.prob_ref)


# ----------------------------------------------------------------------------- mosaics


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS (WKT), affine coefficients, width, height."""

    crs_wkt: str
    transform: tuple[float, ...]
    width: int
    height: int

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])


def build_vrt(tiles: list[Path], vrt_path: Path, card: ModelCard, epoch: str) -> Grid:
    """Write a VRT mosaic of ``tiles`` to ``vrt_path`` and return its grid (see ``mosaic_vrt``)."""
    xml, grid = mosaic_vrt(tiles, card, epoch)
    Path(vrt_path).write_text(xml)
    return grid


def mosaic_vrt(tiles: list[Path], card: ModelCard, epoch: str) -> tuple[str, Grid]:
    """VRT XML mosaicking ``tiles`` (same CRS, bands and dtype; north-up), and its grid.

    The VRT takes the first tile's pixel size; each tile is placed by its bounds. Its
    per-dataset mask band is the union of the tiles' own masks (nodata, alpha or GDAL
    mask), so gaps between tiles and nodata inside them read as invalid.
    """
    from geounet.io.scene import check_scene, open_scene

    if not tiles:
        raise GeounetError(None, f"no {epoch} scene given")
    infos = []
    for t in tiles:
        with open_scene(t) as src:
            check_scene(src, card)
            infos.append((Path(t).resolve(), src.crs, src.transform, src.width, src.height, src.count, src.dtypes))
    crs0, tr0 = infos[0][1], infos[0][2]
    for path, crs, tr, w, h, count, dtypes in infos[1:]:
        if crs != crs0:
            raise InputError(path, f"{epoch} tiles must share one CRS: {crs.to_string()} here, "
                                   f"{crs0.to_string()} in {infos[0][0].name}")
        if count != infos[0][5] or dtypes != infos[0][6]:
            raise InputError(path, f"{epoch} tiles must have the same bands and data type as {infos[0][0].name}")
    xres, yres = tr0.a, tr0.e  # yres < 0 (north-up)
    lefts, rights, tops, bottoms = [], [], [], []
    for _, _, tr, w, h, *_ in infos:
        (x0, y0), (x1, y1) = tr * (0, 0), tr * (w, h)
        lefts.append(min(x0, x1)), rights.append(max(x0, x1)), tops.append(max(y0, y1)), bottoms.append(min(y0, y1))
    left, top = min(lefts), max(tops)
    width = max(1, round((max(rights) - left) / abs(xres)))
    height = max(1, round((top - min(bottoms)) / abs(yres)))
    transform = Affine(abs(xres), 0.0, left, 0.0, -abs(yres), top)

    def source(path: Path, band: str, tr: Affine, w: int, h: int) -> str:
        dx = (tr.c - left) / abs(xres)
        dy = (top - tr.f) / abs(yres)
        dw, dh = w * abs(tr.a) / abs(xres), h * abs(tr.e) / abs(yres)
        return (f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename>'
                f'<SourceBand>{band}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{dx:.10g}" yOff="{dy:.10g}" xSize="{dw:.10g}" ySize="{dh:.10g}"/></SimpleSource>')

    dtype = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}.get(infos[0][6][0], "Float32")
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"<SRS>{escape(crs0.to_wkt())}</SRS>",
             "<GeoTransform>" + ", ".join(f"{v:.17g}" for v in transform.to_gdal()) + "</GeoTransform>"]
    for b in range(1, infos[0][5] + 1):
        parts.append(f'<VRTRasterBand dataType="{dtype}" band="{b}">')
        parts += [source(p, str(b), tr, w, h) for p, _, tr, w, h, *_ in infos]
        parts.append("</VRTRasterBand>")
    parts.append('<MaskBand><VRTRasterBand dataType="Byte">')
    parts += [source(p, "mask,1", tr, w, h) for p, _, tr, w, h, *_ in infos]
    parts.append("</VRTRasterBand></MaskBand></VRTDataset>")
    return "\n".join(parts), Grid(crs0.to_wkt(), tuple(transform)[:6], width, height)


def overlap_window(pre: Grid, post: Grid) -> Window | None:
    """The pre-grid window (whole pixels) covered by the post grid's footprint; None if disjoint."""
    a = pre.affine
    pb = rasterio.transform.array_bounds(post.height, post.width, post.affine)
    left, bottom, right, top = transform_bounds(post.crs_wkt, pre.crs_wkt, *pb, densify_pts=21)
    c0, r0 = ~a * (left, top)
    c1, r1 = ~a * (right, bottom)
    c0, c1 = sorted((c0, c1))
    r0, r1 = sorted((r0, r1))
    c0, r0 = max(0, math.floor(c0)), max(0, math.floor(r0))
    c1, r1 = min(pre.width, math.ceil(c1)), min(pre.height, math.ceil(r1))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def post_on_pre(post_ds, pre: Grid) -> WarpedVRT:
    """The post mosaic warped onto the pre grid (bilinear); band ``count`` is alpha (valid = 255)."""
    return WarpedVRT(post_ds, crs=pre.crs_wkt, transform=pre.affine, width=pre.width, height=pre.height,
                     resampling=Resampling.bilinear, add_alpha=True)


# ----------------------------------------------------------------------------- footprints


def read_footprints(path: Path, crs_wkt: str) -> tuple[gpd.GeoDataFrame, dict]:
    """Footprint polygons reprojected to ``crs_wkt``, repaired; counts of what was done.

    Invalid polygons are repaired with ``make_valid`` (keeping the polygonal parts); null,
    empty and non-polygonal geometries are skipped. ``footprint_id`` is the row number in
    the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "footprints file not found")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        raise InputError(path, f"not a readable vector file ({str(exc).splitlines()[0][:160]})") from None
    if gdf.empty:
        raise InputError(path, "footprints file has no features")
    if gdf.crs is None:
        raise InputError(path, "footprints have no CRS: cannot place them (set one, e.g. ogr2ogr -a_srs EPSG:4326)")
    counts = {"read": len(gdf), "crs": gdf.crs.to_string(), "reprojected": False, "repaired": 0,
              "skipped_invalid": 0, "skipped_not_polygon": 0, "skipped_empty": 0}
    gdf = gdf[[]].set_geometry(gdf.geometry).assign(footprint_id=np.arange(len(gdf)))
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    counts["skipped_empty"] = int(empty.sum())
    polygonal = np.isin(shapely.get_type_id(geoms), [3, 6])  # Polygon, MultiPolygon
    counts["skipped_not_polygon"] = int((~empty & ~polygonal).sum())
    keep = ~empty & polygonal
    invalid = keep & ~shapely.is_valid(geoms)
    for i in np.flatnonzero(invalid):
        g = shapely.make_valid(geoms[i])
        parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon") and p.area > 0]
        if parts:
            geoms[i] = shapely.union_all(parts)
            counts["repaired"] += 1
        else:
            keep[i] = False
            counts["skipped_invalid"] += 1
    gdf = gdf.set_geometry(gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs))[keep]
    if not rasterio.crs.CRS.from_user_input(gdf.crs) == rasterio.crs.CRS.from_wkt(crs_wkt):
        gdf = gdf.to_crs(crs_wkt)
        counts["reprojected"] = True
        bad = ~gdf.is_valid  # reprojection can bend an edge across another
        if bad.any():
            gdf.loc[bad, "geometry"] = gdf.geometry[bad].make_valid()
    counts["used"] = len(gdf)
    if gdf.empty:
        raise InputError(path, f"no usable footprint: {counts['read']} read, all empty, invalid or not polygons")
    return gdf.reset_index(drop=True), counts


def detect_footprints(pre_vrt: Path, work: Path, model_path: Path, s: DamageSettings, client) -> gpd.GeoDataFrame:
    """Buildings from the buildings model on the pre mosaic, at the pre grid's resolution."""
    from geounet.engine.settings import PredictSettings
    from geounet.engine.predict import make_executor, predict_scene

    ps = PredictSettings(tile_size=s.tile_size, overlap=s.overlap, batch_size=s.batch_size, device=s.device,
                         precision=s.precision, resample_tolerance=1e9, vector=True, quiet=True)
    own = client is None
    client = make_executor(ps, model_path) if own else client
    try:
        predict_scene(pre_vrt, work, model_path, ps, client)
    finally:
        if own:
            client.close()
    gdf = gpd.read_file(work / pre_vrt.stem / "features.gpkg", layer="buildings")
    return gdf[[]].set_geometry(gdf.geometry).assign(footprint_id=np.arange(len(gdf)))


# ----------------------------------------------------------------------------- block tasks


@dataclass
class BlockJob:
    """One block of the overlap (pre-grid pixels) and its footprints (local ids 1..n)."""

    window: Window
    footprints: list  # shapely geometries in the pre CRS
    ids: np.ndarray  # their indexes in the buildings table


@dataclass
class BlockResult:
    window: Window
    change: np.ndarray | None  # (4, h, w) uint8 DN (value = DN / 254), 255 = nodata
    ids: np.ndarray
    sums: np.ndarray  # (4, n) sums of CHANGE_BANDS over valid pixels
    counts: np.ndarray  # (n,) valid pixels per building
    valid_pixels: int
    timings: dict


def assess_block(job: BlockJob, pre_vrt: str, post_vrt: str, pre: Grid, model_path: str, s: DamageSettings,
                 device: str, precision: str, radiometry: tuple | None = None) -> BlockResult:
    """Read a block (plus halo) of both epochs on the pre grid, score change, sum per building."""
    from geounet.models.registry import cached_model
    from geounet.engine.tiles import predict_array

    t = {k: 0.0 for k in BLOCK_TIMINGS}
    clock = lambda: (time.perf_counter(), time.process_time())  # noqa: E731  (wall, CPU of all threads)
    net, card = cached_model(model_path, device)
    building = next(i for i, c in enumerate(card.classes) if c.kind == "building")
    w = job.window
    halo = Window(w.col_off - s.halo, w.row_off - s.halo, w.width + 2 * s.halo, w.height + 2 * s.halo)
    halo = halo.intersection(Window(0, 0, pre.width, pre.height))
    core = (slice(w.row_off - halo.row_off, w.row_off - halo.row_off + w.height),
            slice(w.col_off - halo.col_off, w.col_off - halo.col_off + w.width))
    t0 = clock()
    with rasterio.open(pre_vrt) as src:
        pre_px = src.read(card.bands, window=halo)
        pre_ok = src.dataset_mask(window=halo) > 0
    t1 = clock()
    with rasterio.open(post_vrt) as src, post_on_pre(src, pre) as vrt:
        post_px = vrt.read(card.bands, window=halo)
        post_ok = vrt.read(vrt.count, window=halo) > 0
    t2 = clock()
    _lap(t, "read_pre", t0, t1)
    _lap(t, "warp_post", t1, t2)
    valid = pre_ok & post_ok
    n = len(job.ids)
    empty = BlockResult(w, None, job.ids, np.zeros((len(CHANGE_BANDS), n)), np.zeros(n, np.int64), 0, t)
    if not valid[core].any():
        return empty
    if radiometry is not None:  # post -> pre's radiometry (gain, offset per band)
        post_px = post_px.astype(np.float32) * radiometry[0][:, None, None] + radiometry[1][:, None, None]
    x_pre, x_post = normalise(pre_px, card), normalise(post_px, card)
    x_pre[:, ~pre_ok] = 0.0  # nodata -> band mean
    x_post[:, ~post_ok] = 0.0
    nb = x_pre.shape[0]
    tile = s.tile_size or card.tile_size
    ov = card.overlap if s.overlap is None else s.overlap

    def forward(net_, batch, dev, prec):
        return pair_forward(net_, batch[:, :nb], batch[:, nb:], building, dev, prec, tuple(s.feature_stages))

    measures = predict_array(net, np.concatenate([x_pre, x_post]), tile, ov, device, precision, s.batch_size,
                             valid=valid, forward=forward)[:, core[0], core[1]]
    t3 = clock()
    _lap(t, "model", t2, t3)
    valid = valid[core]
    p_pre, p_post, dist = measures
    score = change_score(p_pre, p_post, dist, s.rules())
    values = np.stack([score, p_pre, p_post, dist])
    dn = np.rint(np.clip(values, 0.0, 1.0) * SCALE).astype(np.uint8)
    dn[:, ~valid] = NODATA
    if n:
        ids = rasterize(zip(job.footprints, range(1, n + 1)), out_shape=(w.height, w.width),
                        transform=rasterio.windows.transform(w, pre.affine), fill=0, dtype="int32")
        sums, counts = zonal_sums(ids, values, valid, n)
        sums, counts = sums[:, 1:], counts[1:]
    else:
        sums, counts = empty.sums, empty.counts
    _lap(t, "zonal", t3, clock())
    return BlockResult(w, dn, job.ids, sums, counts, int(valid.sum()), t)


def _lap(t: dict, name: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    t[f"{name}_s"] += end[0] - start[0]
    t[f"{name}_cpu_s"] += end[1] - start[1]


def _blocks(win: Window, size: int) -> list[Window]:
    c0, r0 = int(win.col_off), int(win.row_off)
    c1, r1 = c0 + int(win.width), r0 + int(win.height)
    return [Window(c, r, min(size, c1 - c), min(size, r1 - r)) for r in range(r0, r1, size) for c in range(c0, c1, size)]


# ----------------------------------------------------------------------------- the run


def run_damage(pre: list[Path], post: list[Path], out_dir: Path, footprints: Path | None, model_path: Path,
               settings: DamageSettings, client=None) -> dict:
    """Grade every building for damage from pre- and post-event scenes; returns the run.json content.

    ``pre`` / ``post``: one or more tiles per epoch (mosaicked as VRTs). ``footprints``:
    polygons in any CRS (reprojected to the pre scene's), or None to detect buildings with
    the model on the pre scene. ``client``: a dask.distributed client, or None to run the
    blocks in this process.
    """
    from geounet.models.hardware import resolve_device, resolve_precision
    from geounet.io.folders import check_output_root

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    pre, post = [Path(p) for p in pre], [Path(p) for p in post]
    model_path, out_dir = Path(model_path), Path(out_dir)
    card = read_card(model_path)
    if not any(c.kind == "building" for c in card.classes):
        raise GeounetError(model_path, f"model {card.name!r} has no building class: damage runs need a buildings model")
    s = settings
    head = None
    if s.head:
        from geounet.damage.head import load_head

        head = load_head(s.head)
    device = resolve_device(s.device)
    precision = resolve_precision(device, s.precision)
    # Every input is checked before anything is written.
    t0 = time.perf_counter()
    pre_xml, pre_grid = mosaic_vrt(pre, card, "pre")
    post_xml, post_grid = mosaic_vrt(post, card, "post")
    win = overlap_window(pre_grid, post_grid)
    if win is None:
        raise InputError(post[0], f"post scene(s) do not overlap the pre scene(s) ({pre[0].name}"
                                  f"{' ...' if len(pre) > 1 else ''}): nothing to assess")
    fp_counts: dict = {"source": "footprints file" if footprints else "buildings model on the pre scene"}
    if footprints is not None:
        buildings, more = read_footprints(Path(footprints), pre_grid.crs_wkt)
        fp_counts |= more
    created = not out_dir.exists()
    check_output_root(out_dir)
    tmp = out_dir / f".damage.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(out_dir, f"cannot write output folder ({exc.strerror or exc})") from None
    try:
        (tmp / "pre.vrt").write_text(pre_xml)
        (tmp / "post.vrt").write_text(post_xml)
        if footprints is None:
            buildings = detect_footprints(tmp / "pre.vrt", tmp / "_detect", model_path, s, client)
            fp_counts |= {"used": len(buildings)}
            if buildings.empty:
                raise InputError(pre[0], "the buildings model found no building in the pre scene(s)")
        radiometry = None
        if s.match_radiometry:  # from a decimated read of the overlap (about 1 MP)
            pre_s, post_s, ok = read_pair_preview(tmp / "pre.vrt", tmp / "post.vrt", pre_grid, win, 1024, card.bands)
            radiometry = match_moments(pre_s, post_s, ok[0] & ok[1])
        timings["prepare_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        n = len(buildings)
        geoms = np.asarray(buildings.geometry.values, dtype=object)
        tree = shapely.STRtree(geoms)
        sums = np.zeros((len(CHANGE_BANDS), n))
        counts = np.zeros(n, np.int64)
        jobs = []
        for bw in _blocks(win, s.block):
            box = shapely.box(*rasterio.windows.bounds(bw, pre_grid.affine))
            idx = np.sort(tree.query(box, predicate="intersects"))
            jobs.append(BlockJob(bw, list(geoms[idx]), idx))
        block_t = {k: 0.0 for k in BLOCK_TIMINGS}
        valid_pixels = 0
        staged = tmp / "change.tiled.tif"
        from geounet.io.rasters import tiled_profile

        from tqdm import tqdm

        with tqdm(total=len(jobs), unit="block", desc="damage", disable=True if s.quiet else None, leave=False) as bar, \
                rasterio.open(staged, "w", **tiled_profile(pre_grid.crs_wkt, pre_grid.affine, pre_grid.width,
                                                          pre_grid.height, len(CHANGE_BANDS), "uint8", NODATA)) as dst:
            dst.descriptions = CHANGE_BANDS
            dst.scales = (1.0 / SCALE,) * len(CHANGE_BANDS)
            dst.offsets = (0.0,) * len(CHANGE_BANDS)
            dst.update_tags(GEOUNET_CONTENT="damage change measures on the pre scene grid",
                            GEOUNET_SCALE=f"value = DN / {SCALE}; {NODATA} = nodata (outside overlap or no data)",
                            GEOUNET_MODEL=card.name)
            for res in _run_jobs(jobs, client, str(tmp / "pre.vrt"), str(tmp / "post.vrt"), pre_grid,
                                 str(model_path), s, device, precision, radiometry):
                bar.update(1)
                for k, v in res.timings.items():
                    block_t[k] += v
                if res.change is not None:
                    dst.write(res.change, window=res.window)
                    np.add.at(sums, (slice(None), res.ids), res.sums)
                    np.add.at(counts, res.ids, res.counts)
                    valid_pixels += res.valid_pixels
        if valid_pixels == 0:
            raise InputError(post[0], "pre and post overlap only where one of them has no data: nothing to assess")
        timings["blocks_s"] = time.perf_counter() - t0
        timings |= {f"blocks_{k}": round(v, 3) for k, v in block_t.items()}

        t0 = time.perf_counter()
        means = zonal_means(sums, counts)
        px_area = abs(pre_grid.affine.determinant)
        expected = np.maximum(shapely.area(geoms) / px_area, 1.0)
        frac = np.minimum(counts / expected, 1.0)
        assessed = (counts > 0) & (frac >= s.min_valid_fraction)
        score = np.where(assessed, means[0], np.nan)
        grades = grade(score, tuple(s.thresholds))
        if head is not None:  # the trained head replaces the thresholds (and gives the score)
            idx, head_score = head.predict(np.stack([score, means[1], means[2], means[3]], axis=1)[assessed])
            grades[assessed] = np.array(GRADES, dtype=object)[idx]
            score[assessed] = head_score
        from geounet.compute.postprocess import metric_crs

        bounds = tuple(buildings.total_bounds)
        area = buildings.geometry.to_crs(metric_crs(buildings.crs, bounds)).area.to_numpy()
        out = gpd.GeoDataFrame({
            "footprint_id": buildings["footprint_id"].to_numpy(),
            "damage": grades.astype(str),
            "damage_score": np.round(score, 4),
            "area_m2": np.round(area, 2),
            "building_prob_pre": np.round(np.where(assessed, means[1], np.nan), 4),
            "building_prob_post": np.round(np.where(assessed, means[2], np.nan), 4),
            "feature_distance": np.round(np.where(assessed, means[3], np.nan), 4),
            "valid_fraction": np.round(frac, 4),
        }, geometry=buildings.geometry.values, crs=pre_grid.crs_wkt)
        out.to_file(tmp / "damage.gpkg", layer="buildings", driver="GPKG")
        _write_style(tmp / "damage.gpkg")
        timings["buildings_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        from geounet.io.rasters import write_cog

        write_cog(staged, tmp / "change.tif", "AVERAGE")
        staged.unlink()
        timings["cog_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_quicklook(tmp / "pre.vrt", tmp / "post.vrt", pre_grid, win, out, tmp / "quicklook.png",
                        s.quicklook_width)
        timings["quicklook_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start

        per_grade = {g: int((grades == g).sum()) for g in GRADES + (NOT_ASSESSED,)}
        inside = shapely.intersects(geoms, shapely.box(*rasterio.windows.bounds(win, pre_grid.affine)))
        not_assessed_why = {
            "outside_overlap": int((~inside).sum()),
            "too_little_valid_data": int((inside & ~assessed).sum()),  # nodata in pre or post, or sub-pixel
        }
        run = {
            "geounet_version": __version__,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "task": "damage",
            "inputs": {"pre": [_fingerprint(p) for p in pre], "post": [_fingerprint(p) for p in post],
                       "footprints": _fingerprint(Path(footprints)) if footprints else None},
            "model": {"path": str(model_path.resolve()), "name": card.name, "sha256": file_sha256(model_path),
                      "resolution_m": card.resolution_m},
            "settings": asdict(s) | {"device": device, "precision": precision},
            "method": {
                "grid": "pre scene grid (its CRS and resolution); post warped onto it (bilinear)",
                "pre_grid": {"crs": rasterio.crs.CRS.from_wkt(pre_grid.crs_wkt).to_string(),
                             "transform": list(pre_grid.transform), "width": pre_grid.width, "height": pre_grid.height},
                "overlap_window": {"col_off": int(win.col_off), "row_off": int(win.row_off),
                                   "width": int(win.width), "height": int(win.height)},
                "valid_pixels": valid_pixels,
                "post_radiometry": None if radiometry is None else
                {"gain": radiometry[0].round(4).tolist(), "offset": radiometry[1].round(3).tolist()},
                "feature_distance": f"1 - cosine similarity of the U-Net encoder features of pre and post, "
                                    f"encoder stage(s) {s.feature_stages}, upsampled bilinearly to pixels",
                "change_score": "(F + w c D) / (1 + w c); F = clip((feature_distance - feature_low) / "
                                "(feature_high - feature_low), 0, 1); D = clip((p_pre - p_post) / p_pre, 0, 1); "
                                "c = min(1, p_pre / prob_ref); w = prob_weight",
                "damage_score": "mean change_score over the footprint's pixels valid in pre and post",
                "grades": dict(zip(GRADES[1:], s.thresholds)) if head is None else
                {"damage_head": str(s.head), "trained": head.facts.get("train"), "validation": head.facts.get("val"),
                 "damage_score": "expected severity under the head's grade probabilities (0, 1/3, 2/3, 1)"},
            },
            "footprints": fp_counts,
            "buildings": {"total": n, "per_grade": per_grade, "not_assessed": not_assessed_why},
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "outputs": {
                "damage.gpkg": {"layer": "buildings", "crs": "pre scene", "count": n},
                "change.tif": {"bands": list(CHANGE_BANDS), "value": f"DN / {SCALE}", "nodata": NODATA},
                "quicklook.png": "pre (left) and post warped to the pre grid (right), footprints coloured by grade",
            },
        }
        _publish(tmp, out_dir, run)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave no trace of a run that wrote nothing
        raise
    log.info("damage: %d buildings (%s) in %.1f s -> %s", n,
             ", ".join(f"{k} {v}" for k, v in per_grade.items()), timings["total_s"], out_dir)
    return run


def _run_jobs(jobs, client, *args):
    """Yield ``assess_block(job, *args)`` results: in this process, or on Dask (a few in flight) with a client."""
    if client is None:
        for job in jobs:
            yield assess_block(job, *args)
        return
    from distributed import as_completed

    queue = iter(jobs)
    submit = lambda j: client.submit(assess_block, j, *args, pure=False, retries=1)  # noqa: E731
    futures = as_completed([submit(j) for _, j in zip(range(4), queue)])
    for fut in futures:
        res = fut.result()
        fut.release()
        yield res
        nxt = next(queue, None)
        if nxt is not None:
            futures.add(submit(nxt))


def _write_style(gpkg: Path) -> None:
    """Default QGIS style of the buildings layer: categorized on ``damage`` in the grade colours.

    Reuses the vector outputs' style writer (categories on ``class``) with the grades as
    classes, then points the renderer at the ``damage`` attribute.
    """
    import sqlite3

    from geounet.engine.vector_stage import _write_style as write_class_style
    from geounet.models.card import ClassInfo

    card = ModelCard(name="damage grades", classes=[ClassInfo(g, c, "building") for g, c in GRADE_COLOURS.items()],
                     bands=[1], band_names=["-"], mean=[0.0], std=[1.0], scale=1.0, input_dtypes=["uint8"],
                     resolution_m=1.0)
    write_class_style(gpkg, "buildings", card, "building")
    with sqlite3.connect(gpkg) as db:
        db.execute("UPDATE layer_styles SET styleQML = replace(styleQML, 'attr=\"class\"', 'attr=\"damage\"') "
                   "WHERE f_table_name = 'buildings'")


def _fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size}


def _publish(tmp: Path, out_dir: Path, run: dict) -> None:
    """Rename the finished outputs into ``out_dir``; run.json (the completeness mark) last."""
    (out_dir / "run.json").unlink(missing_ok=True)
    for name in OUTPUTS:
        os.replace(tmp / name, out_dir / name)
    part = tmp / "run.json"
    part.write_text(json.dumps(run, indent=2, default=str))
    os.replace(part, out_dir / "run.json")
    shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- quicklook


def write_quicklook(pre_vrt: Path, post_vrt: Path, pre: Grid, win: Window, buildings: gpd.GeoDataFrame,
                    path: Path, max_width: int = 1600) -> None:
    """PNG: pre (left) and post on the pre grid (right) over the overlap, outlines coloured by grade.

    Both panels are warped straight to the small quicklook grid (GDAL reads overviews or
    decimates), so no full-resolution array is read.
    """
    gap = 8
    panel_w = max(32, (max_width - gap) // 2)
    pre_rgb, post_rgb, ok = read_pair_preview(pre_vrt, post_vrt, pre, win, panel_w, [1, 2, 3])
    panels = [_stretch(pre_rgb, ok[0]), _stretch(post_rgb, ok[1])]
    qh, qw = ok.shape[1:]
    qt = rasterio.windows.transform(win, pre.affine) * Affine.scale(win.width / qw, win.height / qh)
    codes = {g: i + 1 for i, g in enumerate(GRADE_COLOURS)}
    outline = rasterize(
        ((shapely.boundary(g), codes[d]) for g, d in zip(buildings.geometry.values, buildings["damage"]) if g is not None),
        out_shape=(qh, qw), transform=qt, fill=0, dtype="uint8", all_touched=True,
    )
    for rgb in panels:
        for g, code in codes.items():
            sel = outline == code
            for b in range(3):
                rgb[b][sel] = GRADE_COLOURS[g][b]
    img = np.full((3, qh, 2 * qw + gap), 255, np.uint8)
    img[:, :, :qw] = panels[0]
    img[:, :, qw + gap:] = panels[1]
    with warnings.catch_warnings():  # a plain picture: no georeferencing on purpose
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=img.shape[2], height=qh, count=3, dtype="uint8") as dst:
            dst.write(img)
    aux = path.with_name(path.name + ".aux.xml")
    aux.unlink(missing_ok=True)


def read_pair_preview(pre_vrt: Path, post_vrt: Path, pre: Grid, win: Window, size: int, bands: list[int]):
    """Pre and post over ``win`` of the pre grid, at most ``size`` px a side: ``(pre, post, valid (2, h, w))``.

    Both are warped straight to the small grid (average resampling; GDAL uses overviews
    where the files have them), so no full-resolution array is read.
    """
    scale = max(1.0, win.width / size, win.height / size)
    w, h = max(1, round(win.width / scale)), max(1, round(win.height / scale))
    t = rasterio.windows.transform(win, pre.affine) * Affine.scale(win.width / w, win.height / h)
    out, ok = [], []
    for vrt in (pre_vrt, post_vrt):
        with rasterio.open(vrt) as src, WarpedVRT(src, crs=pre.crs_wkt, transform=t, width=w, height=h,
                                                  resampling=Resampling.average, add_alpha=True) as v:
            out.append(v.read([b if b < v.count else 1 for b in bands]))
            ok.append(v.read(v.count) > 0)
    return out[0], out[1], np.stack(ok)


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2-98% linear stretch over valid pixels to uint8 (display only); invalid -> white."""
    out = np.full(rgb.shape, 255, np.uint8)
    if valid.any():
        v = rgb[:, valid].astype(np.float32)
        lo, hi = np.percentile(v, 2), np.percentile(v, 98)
        scaled = np.clip((rgb.astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        out[:, valid] = scaled[:, valid]
    return out
