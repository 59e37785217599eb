"""Writing rasters: profiles for the stitched scores and classes, and Cloud-Optimized GeoTIFFs.

Scores are stored as uint8: probability = DN / 254 (the band's GDAL scale, so GDAL
and QGIS show probabilities), 255 = nodata. Classes are uint8 indexes with a colour
table, class names in the band description and metadata, 255 = nodata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.shutil import copy as gdal_copy

from geounet.io.sparse_cog import write_sparse_cog
from geounet.models.card import ModelCard
from geounet.models.hardware import cpu_cores

SCORE_SCALE = 254  # probability 1.0 -> DN 254
NODATA = 255
STAGE_SCALE = 65535  # stage-1 (working grid) probabilities, uint16
BLOCK = 512


def tiled_profile(crs, transform: Affine, width: int, height: int, count: int, dtype: str, nodata=None) -> dict:
    """An uncompressed tiled GTiff profile for block-by-block writing (in any order).

    Several bands are measures (class scores, change terms), never colours: photometric MINISBLACK,
    else GDAL tags 3 or 4 uint8 bands red, green, blue (and a fourth as alpha, which masks the others).
    One band keeps GDAL's default, so that a colour table makes it a palette raster.
    """
    return dict(
        **({"photometric": "MINISBLACK"} if count > 1 else {}),
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
        interleave="pixel",
        BIGTIFF="IF_SAFER",
        SPARSE_OK=True,
    )


def describe_scores(ds: rasterio.io.DatasetWriter, card: ModelCard) -> None:
    """Band names, GDAL scale (DN -> probability) and metadata on a scores raster."""
    ds.descriptions = tuple(card.class_names)
    ds.scales = (1.0 / SCORE_SCALE,) * len(card.classes)
    ds.offsets = (0.0,) * len(card.classes)
    ds.update_tags(
        GEOUNET_CONTENT="class probabilities",
        GEOUNET_SCALE=f"probability = DN / {SCORE_SCALE}; {NODATA} = nodata",
        GEOUNET_CLASSES=json.dumps(card.class_names),
        GEOUNET_MODEL=card.name,
    )
    for i, name in enumerate(card.class_names, start=1):
        ds.update_tags(i, CLASS_NAME=name)


def describe_classes(ds: rasterio.io.DatasetWriter, card: ModelCard) -> None:
    """Colour table, class names and metadata on a classes raster."""
    ds.descriptions = ("class",)
    ds.write_colormap(1, {i: (*c.color, 255) for i, c in enumerate(card.classes)} | {NODATA: (0, 0, 0, 0)})
    ds.update_tags(
        GEOUNET_CONTENT="winning class index",
        GEOUNET_CLASSES=json.dumps(card.class_names),
        GEOUNET_NODATA=str(NODATA),
        GEOUNET_MODEL=card.name,
        **{f"CLASS_{i}": n for i, n in enumerate(card.class_names)},
    )


def finalize_block(
    probabilities: np.ndarray, valid: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(classes, h, w)`` in [0, 1] + valid mask -> (uint8 scores, uint8 classes).

    Classes: the index of the highest probability, the first one on ties (as ``np.argmax``),
    computed by pairwise comparison, which is several times faster than an argmax over
    the first axis (benchmarks/README.md). ``weights``: one
    factor per class on its probability for that choice only (the model card's
    ``decision_weights``); the scores stay the probabilities.
    """
    n = probabilities.shape[0]

    def weighed(k: int) -> np.ndarray:  # one class at a time: no weighted copy of the whole block
        return probabilities[k] if weights is None else probabilities[k] * np.float32(weights[k])

    classes = np.zeros(probabilities.shape[1:], np.uint8)
    if n == 2:
        np.greater(weighed(1), weighed(0), out=classes, casting="unsafe")
    elif n > 2:
        best = weighed(0).copy()
        for k in range(1, n):
            candidate = weighed(k)
            better = candidate > best
            classes[better] = k
            np.maximum(best, candidate, out=best)
    dn = np.multiply(probabilities, np.float32(SCORE_SCALE))
    np.clip(dn, 0.0, SCORE_SCALE, out=dn)
    np.rint(dn, out=dn)
    scores = dn.astype(np.uint8)
    if not valid.all():
        invalid = ~valid
        classes[invalid] = NODATA
        scores[:, invalid] = NODATA
    return scores, classes


def own_class_scores(scores: np.ndarray, classes: np.ndarray) -> np.ndarray | None:
    """Each pixel's score of its own class: ``scores`` (classes, h, w) picked by ``classes`` (h, w).

    Nodata pixels take band 0's value (their score is never used); None when ``classes``
    holds an index beyond the bands.
    """
    idx = np.where(classes == NODATA, 0, classes).astype(np.intp)
    if idx.max(initial=0) >= scores.shape[0]:
        return None
    return np.take_along_axis(scores, idx[None], axis=0)[0]


def overview_factors(width: int, height: int, block: int = BLOCK) -> list[int]:
    """Overview decimation factors 2, 4, ... until a level fits in one ``block`` (the COG driver's rule)."""
    factors, f = [], 2
    while max(width, height) / (f // 2) > block:
        factors.append(f)
        f *= 2
    return factors


# geounet's own sparse COG writer only where GDAL's would visit many empty blocks: every other
# raster goes through GDAL's COG driver
SPARSE_MIN_BLOCKS = 1024  # blocks of the full-resolution raster
SPARSE_MIN_EMPTY = 0.9  # share of those that hold no data


def write_cog(
    src: str | Path, dst: str | Path, resampling: str, threads: int | None = None, blocks: np.ndarray | None = None
) -> None:
    """Copy a tiled GTiff to a Cloud-Optimized GeoTIFF (deflate, 512 blocks, overviews).

    The overviews are built in ``src`` first (``resampling``: GDAL's name, e.g. AVERAGE
    or NEAREST; nodata honoured), then copied, which is faster than letting the COG
    driver build them in a compressed temporary file. GDAL works block by block, so
    memory does not grow with the raster. Deflate level 1 (any GDAL reads it): less
    than half the time of the default level 6 for slightly larger files
    (benchmarks/README.md, "Design measurements"). ``threads``: compression
    threads (default: this process's cores; overviews are built on one).

    ``blocks``: (rows, columns) bool over ``src``'s ``BLOCK``-pixel blocks, False where a
    block holds no data (``src`` is sparse: never written there, it reads as nodata).
    When a large raster is mostly empty (``SPARSE_MIN_BLOCKS``, ``SPARSE_MIN_EMPTY``),
    :func:`geounet.io.sparse_cog.write_sparse_cog` writes it instead,
    in time that follows its data rather than its extent (GDAL's COG driver visits every
    block of every level), empty blocks not stored (they read back as nodata).
    """
    if blocks is not None and blocks.size >= SPARSE_MIN_BLOCKS and blocks.mean() <= 1 - SPARSE_MIN_EMPTY:
        write_sparse_cog(Path(src), Path(dst), resampling, blocks, BLOCK)
        return
    with rasterio.open(src, "r+") as ds:
        factors = overview_factors(ds.width, ds.height)
        if factors:
            ds.build_overviews(factors, Resampling[resampling.lower()])
    gdal_copy(
        str(src),
        str(dst),
        driver="COG",
        COMPRESS="DEFLATE",
        LEVEL="1",
        PREDICTOR="2",
        BLOCKSIZE=str(BLOCK),
        OVERVIEW_RESAMPLING=resampling,
        RESAMPLING=resampling,
        NUM_THREADS=str(threads or cpu_cores()),
        BIGTIFF="IF_SAFER",
    )


def written_blocks(path: str | Path) -> np.ndarray:
    """(rows, columns) bool over a tiled GeoTIFF's internal blocks (band 1): False where a block is not stored.

    A block a sparse file (``SPARSE_OK``) never stored reads back as nodata; for a file
    that stores every block, or another format than GeoTIFF, all True. One metadata
    query per block.
    """
    with rasterio.open(path) as ds:
        bh, bw = ds.block_shapes[0]
        rows, cols = -(-ds.height // bh), -(-ds.width // bw)
        if ds.driver != "GTiff":
            return np.ones((rows, cols), bool)
        return np.array(
            [
                [bool(ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1)) for x in range(cols)]
                for y in range(rows)
            ],
            dtype=bool,
        ).reshape(rows, cols)
