"""Cloud-Optimized GeoTIFFs of mostly empty rasters, written in time that follows their data.

GDAL's COG driver reads and tests every block of every level of the raster, empty or
not, even with ``SPARSE_OK`` (which only leaves empty blocks out of the file): minutes
for a 200,000^2 px mosaic that holds one small image (``benchmarks/sparse_scene.py``);
and building overviews visits every pixel. Given the blocks that may hold data,
:func:`write_sparse_cog` instead:

- computes each overview level from the one before (2 x 2 pixels: ``average`` with
  nodata left out, or the upper-left pixel for ``nearest``, as GDAL's overviews do) over
  the blocks with data only, into sparse temporary GeoTIFFs;
- writes the COG layout itself: the TIFF header and GDAL's structural metadata (which
  GDAL reads as ``LAYOUT=COG``), the IFD of every level, then the tiles from the
  coarsest level to the full resolution, each in raster order with GDAL's 4-byte size
  before it and its last 4 bytes repeated after it. Tiles of nodata only are not stored
  (offset and size 0: they read back as nodata), as GDAL's ``SPARSE_OK``.

Tiles are deflated (zlib, level 1) after horizontal differencing (``PREDICTOR=2``). The
tags that describe the raster (georeferencing, nodata, GDAL metadata, colour table,
photometric interpretation) are copied from the source GeoTIFF, which GDAL wrote. Only
uint8 rasters, pixel-interleaved, are handled: what ``geounet.io.rasters`` writes.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

GHOST = (
    "LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n "
)
# tags copied from the source: every level / the full resolution only (as GDAL's COGs)
LEVEL_TAGS = (262, 320, 338, 339, 42113)  # photometric, colour map, extra samples, sample format, nodata
FULL_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112)  # GeoTIFF tags and GDAL_METADATA
SHORT, LONG, LONG8 = 3, 4, 16
TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}


@dataclass
class _Level:
    path: Path
    width: int
    height: int
    blocks: np.ndarray  # (rows, columns) bool: the tiles that may hold data
    offsets: np.ndarray | None = None  # uint64 per tile, raster order; 0: not stored
    sizes: np.ndarray | None = None


def write_sparse_cog(src: Path, dst: Path, resampling: str, blocks: np.ndarray, block: int = 512) -> None:
    """``src`` (a tiled uint8 GeoTIFF, ``block``-pixel tiles) -> a COG at ``dst``, visiting the flagged blocks only.

    ``blocks``: (rows, columns) bool over ``src``'s blocks, False where a block holds no
    data (it reads as nodata). ``resampling``: GDAL's name, AVERAGE or NEAREST. Overview
    factors 2, 4, ... until a level fits in one block, as ``rasters.overview_factors``.
    """
    with rasterio.open(src) as ds:
        if ds.dtypes[0] != "uint8" or ds.block_shapes[0] != (block, block):
            raise ValueError(f"{src}: a tiled uint8 raster of {block} px blocks expected")
        width, height, count, nodata = ds.width, ds.height, ds.count, ds.nodata
    tags = _first_ifd_tags(src)
    levels = [_Level(src, width, height, blocks)]
    try:
        while max(levels[-1].width, levels[-1].height) > block:
            prev = levels[-1]
            path = src.with_name(f"{src.stem}.ovr{2 ** len(levels)}.tif")
            level = _Level(path, -(-prev.width // 2), -(-prev.height // 2), _any_2x2(prev.blocks))
            levels.append(level)
            _write_half(prev.path, level, Resampling[resampling.lower()], block)
        _write_cog(dst, levels, tags, count, nodata, block)
    finally:
        for level in levels[1:]:
            level.path.unlink(missing_ok=True)


def _any_2x2(blocks: np.ndarray) -> np.ndarray:
    """Block flags of the next level: each of its blocks covers 2 x 2 blocks of this one."""
    rows, cols = -(-blocks.shape[0] // 2), -(-blocks.shape[1] // 2)
    padded = np.zeros((2 * rows, 2 * cols), bool)
    padded[: blocks.shape[0], : blocks.shape[1]] = blocks
    return np.asarray(padded.reshape(rows, 2, cols, 2).any(axis=(1, 3)))


def _write_half(src: Path, level: _Level, resampling: Resampling, block: int) -> None:
    """``src`` at half its resolution (sides rounded up) into the sparse tiled GeoTIFF ``level.path``, flagged blocks only."""
    with rasterio.open(src) as s:
        profile = dict(
            driver="GTiff",
            width=level.width,
            height=level.height,
            crs=s.crs,
            transform=s.transform @ Affine.scale(s.width / level.width, s.height / level.height),
            count=s.count,
            dtype=s.dtypes[0],
            nodata=s.nodata,
            tiled=True,
            blockxsize=block,
            blockysize=block,
            interleave="pixel",
            SPARSE_OK=True,
            BIGTIFF="IF_SAFER",
        )
        with rasterio.open(level.path, "w", **profile) as d:
            for i, j in np.argwhere(level.blocks):
                r0, c0 = int(i) * block, int(j) * block
                h, w = min(block, level.height - r0), min(block, level.width - c0)
                window = Window(2 * c0, 2 * r0, min(2 * w, s.width - 2 * c0), min(2 * h, s.height - 2 * r0))
                if resampling == Resampling.nearest:  # the upper-left pixel of each 2 x 2, as GDAL's overviews
                    half = s.read(window=window)[:, ::2, ::2]
                else:
                    half = s.read(window=window, out_shape=(s.count, h, w), resampling=resampling)
                d.write(half, window=Window(c0, r0, w, h))


def _encode(tile: np.ndarray, block: int) -> bytes:
    """One tile (bands, h, w) uint8, padded to ``block`` square with 0 -> deflated, horizontally differenced bytes."""
    bands, h, w = tile.shape
    pixels = np.zeros((block, block, bands), np.uint8)
    pixels[:h, :w] = np.moveaxis(tile, 0, -1)
    diff = pixels.copy()
    np.subtract(pixels[:, 1:], pixels[:, :-1], out=diff[:, 1:])  # wraps around modulo 256, as TIFF's predictor 2
    return zlib.compress(diff.tobytes(), 1)


def _write_cog(
    dst: Path, levels: list[_Level], tags: dict[int, tuple[int, int, bytes]], count: int, nodata, block: int
) -> None:
    """Header, structural metadata and IFDs first (space reserved, then filled), tiles after: coarsest level first."""
    worst = sum(int(lv.blocks.sum()) for lv in levels) * (block * block * count + 1024)
    big = worst > 2**32 - 2**26  # BigTIFF when the tiles could pass 4 GiB, as GDAL's BIGTIFF=IF_SAFER
    fmt = _Format(big)
    ghost = f"GDAL_STRUCTURAL_METADATA_SIZE={len(GHOST):06d} bytes\n{GHOST}".encode()
    first_ifd = fmt.header_size + len(ghost)
    first_ifd += first_ifd % 2
    entries = [_entries(lv, k == 0, tags, count, block, fmt) for k, lv in enumerate(levels)]
    ifd_sizes = [fmt.ifd_size(e) for e in entries]
    data_start = first_ifd + sum(ifd_sizes)
    with open(dst, "wb") as f:
        f.seek(data_start)
        for lv in reversed(levels):
            _write_tiles(f, lv, count, nodata, block)
        # every level's tile offsets are known: the IFDs, now
        f.seek(0)
        f.write(fmt.header(first_ifd))
        f.write(ghost)
        pos = f.tell()
        if pos < first_ifd:
            f.write(b"\0" * (first_ifd - pos))
        for k, (lv, size) in enumerate(zip(levels, ifd_sizes)):
            at = f.tell()
            nxt = at + size if k + 1 < len(levels) else 0
            final = _entries(lv, k == 0, tags, count, block, fmt)
            f.write(fmt.ifd(final, at, nxt))
        assert f.tell() == data_start, (f.tell(), data_start)


def _write_tiles(f, level: _Level, count: int, nodata, block: int) -> None:
    """Write ``level``'s tiles with data, in raster order, at ``f``'s position; record their offsets and sizes."""
    rows, cols = level.blocks.shape
    level.offsets = np.zeros(rows * cols, np.uint64)
    level.sizes = np.zeros(rows * cols, np.uint64)
    with rasterio.open(level.path) as ds:
        for i, j in np.argwhere(level.blocks):
            r0, c0 = int(i) * block, int(j) * block
            h, w = min(block, level.height - r0), min(block, level.width - c0)
            tile = ds.read(window=Window(c0, r0, w, h))
            if nodata is not None and (tile == nodata).all():
                continue  # as SPARSE_OK: not stored, reads back as nodata
            data = _encode(tile, block)
            f.write(struct.pack("<I", len(data)))  # GDAL's block leader: the size
            k = int(i) * cols + int(j)
            level.offsets[k], level.sizes[k] = f.tell(), len(data)
            f.write(data)
            f.write(data[-4:])  # GDAL's block trailer: the last 4 bytes again


def _entries(
    level: _Level, full: bool, tags: dict[int, tuple[int, int, bytes]], count: int, block: int, fmt: _Format
) -> list[tuple[int, int, int, bytes]]:
    """The IFD entries (tag, type, count, value bytes) of one level, sorted by tag."""
    n = int(level.blocks.size)
    offsets = level.offsets if level.offsets is not None else np.zeros(n, np.uint64)
    sizes = level.sizes if level.sizes is not None else np.zeros(n, np.uint64)
    off_type, off_dtype = (LONG8, "<u8") if fmt.big else (LONG, "<u4")
    out: dict[int, tuple[int, int, bytes]] = {
        256: (LONG, 1, struct.pack("<I", level.width)),
        257: (LONG, 1, struct.pack("<I", level.height)),
        258: (SHORT, count, struct.pack(f"<{count}H", *([8] * count))),
        259: (SHORT, 1, struct.pack("<H", 8)),  # deflate
        277: (SHORT, 1, struct.pack("<H", count)),
        284: (SHORT, 1, struct.pack("<H", 1)),  # pixel-interleaved
        317: (SHORT, 1, struct.pack("<H", 2)),  # horizontal differencing
        322: (SHORT, 1, struct.pack("<H", block)),
        323: (SHORT, 1, struct.pack("<H", block)),
        324: (off_type, n, offsets.astype(off_dtype).tobytes()),
        325: (off_type, n, sizes.astype(off_dtype).tobytes()),
    }
    if not full:
        out[254] = (LONG, 1, struct.pack("<I", 1))  # a reduced-resolution image
    for code in LEVEL_TAGS + (FULL_TAGS if full else ()):
        if code in tags:
            out[code] = tags[code]
    return [(code, *out[code]) for code in sorted(out)]


class _Format:
    """Classic TIFF or BigTIFF, little-endian: sizes and packing of the header and IFDs."""

    def __init__(self, big: bool) -> None:
        self.big = big
        self.header_size = 16 if big else 8
        self.inline = 8 if big else 4

    def header(self, first_ifd: int) -> bytes:
        if self.big:
            return b"II" + struct.pack("<HHHQ", 43, 8, 0, first_ifd)
        return b"II" + struct.pack("<HI", 42, first_ifd)

    def ifd_size(self, entries: list[tuple[int, int, int, bytes]]) -> int:
        head = (8 + 20 * len(entries) + 8) if self.big else (2 + 12 * len(entries) + 4)
        return head + sum(len(v) + len(v) % 2 for _, _, _, v in entries if len(v) > self.inline)

    def ifd(self, entries: list[tuple[int, int, int, bytes]], at: int, next_ifd: int) -> bytes:
        """The IFD at file offset ``at``, its out-of-line values right after it; ``next_ifd``: 0 for the last."""
        head = (8 + 20 * len(entries) + 8) if self.big else (2 + 12 * len(entries) + 4)
        extra = bytearray()
        packed = bytearray(struct.pack("<Q", len(entries)) if self.big else struct.pack("<H", len(entries)))
        for code, typ, n, value in entries:
            if len(value) <= self.inline:
                field = value.ljust(self.inline, b"\0")
            else:
                offset = at + head + len(extra)
                field = struct.pack("<Q" if self.big else "<I", offset)
                extra += value + (b"\0" if len(value) % 2 else b"")
            packed += struct.pack("<HHQ" if self.big else "<HHI", code, typ, n) + field
        packed += struct.pack("<Q" if self.big else "<I", next_ifd)
        return bytes(packed + extra)


def _first_ifd_tags(path: Path) -> dict[int, tuple[int, int, bytes]]:
    """The tags of a little-endian (Big)TIFF's first IFD: {code: (type, count, value bytes)}."""
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:2] != b"II":
            raise ValueError(f"{path}: not a little-endian TIFF")
        big = struct.unpack("<H", head[2:4])[0] == 43
        f.seek(struct.unpack("<Q", head[8:16])[0] if big else struct.unpack("<I", head[4:8])[0])
        n = struct.unpack("<Q", f.read(8))[0] if big else struct.unpack("<H", f.read(2))[0]
        size = 20 if big else 12
        raw = f.read(n * size)
        tags = {}
        for k in range(n):
            entry = raw[k * size : (k + 1) * size]
            code, typ = struct.unpack("<HH", entry[:4])
            count = struct.unpack("<Q", entry[4:12])[0] if big else struct.unpack("<I", entry[4:8])[0]
            field = entry[12:20] if big else entry[8:12]
            nbytes = TYPE_SIZE.get(typ, 1) * count
            if nbytes <= len(field):
                value = field[:nbytes]
            else:
                here = f.tell()
                f.seek(struct.unpack("<Q", field)[0] if big else struct.unpack("<I", field)[0])
                value = f.read(nbytes)
                f.seek(here)
            tags[code] = (typ, count, value)
    return tags
