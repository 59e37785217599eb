"""Tiling geometry on a raster grid, in pixel coordinates (row, col). Pure: no I/O.

The grid is cut into *core cells* of ``stride = tile_size - overlap`` pixels.
Tile ``(i, j)`` is its core cell grown by ``overlap / 2`` on every side, so it is
exactly ``tile_size`` pixels square, and neighbouring tiles share a band of
``overlap`` pixels centred on their common core edge. Every pixel of the scene lies
in the core of exactly one tile. Tiles at the scene border reach past it; those
pixels are padding (the reader fills them) and carry no weight.

Tiles are grouped into *chunks* of ``chunk_tiles x chunk_tiles`` tiles: the unit of
work of one Dask task. A chunk's stitched buffer covers its tiles' union; pixels in
the ``overlap``-wide seams along chunk edges also receive a contribution from the
neighbouring chunk, and :meth:`TileGrid.regions` lists the rectangles of the scene
with the chunks that contribute to each, so the writer knows when one is final.

:class:`GeoGrid` ties pixels to a CRS (a north-up affine, CRS as WKT), and
:func:`blocks` cuts an area into the fixed-size blocks that stage-2 writing, vectorizing
and damage scoring work through, in raster order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from affine import Affine


@dataclass(frozen=True)
class Box:
    """Half-open pixel rectangle ``[row0, row1) x [col0, col1)``; may extend past the scene."""

    row0: int
    col0: int
    row1: int
    col1: int

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    def intersect(self, other: Box) -> Box | None:
        r0, c0 = max(self.row0, other.row0), max(self.col0, other.col0)
        r1, c1 = min(self.row1, other.row1), min(self.col1, other.col1)
        return Box(r0, c0, r1, c1) if r0 < r1 and c0 < c1 else None

    def relative_to(self, origin: Box) -> tuple[slice, slice]:
        """Slices of this box inside an array whose [0, 0] is ``origin``'s corner."""
        return (
            slice(self.row0 - origin.row0, self.row1 - origin.row0),
            slice(self.col0 - origin.col0, self.col1 - origin.col0),
        )


def blocks(area: Box, size: int) -> list[Box]:
    """``area`` cut into ``size`` x ``size`` boxes (smaller at its right and bottom edges), in raster order."""
    return [
        Box(r, c, min(r + size, area.row1), min(c + size, area.col1))
        for r in range(area.row0, area.row1, size)
        for c in range(area.col0, area.col1, size)
    ]


@dataclass(frozen=True)
class GeoGrid:
    """A raster grid on the ground: CRS (WKT), affine coefficients ``(a, b, c, d, e, f)`` in CRS units, size in pixels."""

    crs_wkt: str
    transform: tuple[float, ...]
    width: int
    height: int

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])

    @property
    def extent(self) -> Box:
        """The whole grid as a pixel box."""
        return Box(0, 0, self.height, self.width)


@dataclass(frozen=True)
class Tile:
    """One model input: grid index, extent (``tile_size`` square) and which edges blend."""

    index: tuple[int, int]
    box: Box
    taper: tuple[bool, bool, bool, bool]  # top, bottom, left, right: a neighbour shares that edge


@dataclass(frozen=True)
class Chunk:
    """A block of tiles processed by one task; ``box`` is the union of its tiles."""

    index: tuple[int, int]
    box: Box
    tiles: tuple[Tile, ...]


@dataclass(frozen=True)
class Region:
    """A rectangle of the scene and the chunks whose buffers contribute to it."""

    box: Box
    chunks: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles over a ``height x width`` pixel grid (see module docstring)."""

    height: int
    width: int
    tile_size: int = 512
    overlap: int = 64
    chunk_tiles: int = 4

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"grid must be at least 1x1 pixel, got {self.height}x{self.width}")
        if self.tile_size < 1 or self.overlap < 0 or self.overlap % 2 or self.overlap >= self.tile_size:
            raise ValueError(
                f"need tile_size > overlap >= 0 and overlap even (tile_size={self.tile_size}, overlap={self.overlap})"
            )
        if self.chunk_tiles < 1:
            raise ValueError("chunk_tiles must be >= 1")

    @property
    def stride(self) -> int:
        return self.tile_size - self.overlap

    @property
    def halo(self) -> int:
        return self.overlap // 2

    @property
    def shape_tiles(self) -> tuple[int, int]:
        return math.ceil(self.height / self.stride), math.ceil(self.width / self.stride)

    @property
    def shape_chunks(self) -> tuple[int, int]:
        ny, nx = self.shape_tiles
        return math.ceil(ny / self.chunk_tiles), math.ceil(nx / self.chunk_tiles)

    @property
    def n_tiles(self) -> int:
        ny, nx = self.shape_tiles
        return ny * nx

    @property
    def scene(self) -> Box:
        return Box(0, 0, self.height, self.width)

    def tile(self, i: int, j: int) -> Tile:
        ny, nx = self.shape_tiles
        if not (0 <= i < ny and 0 <= j < nx):
            raise IndexError(f"tile ({i}, {j}) outside {ny}x{nx} tiles")
        s, h = self.stride, self.halo
        box = Box(i * s - h, j * s - h, i * s - h + self.tile_size, j * s - h + self.tile_size)
        return Tile((i, j), box, (i > 0, i < ny - 1, j > 0, j < nx - 1))

    def tiles(self) -> Iterator[Tile]:
        ny, nx = self.shape_tiles
        for i in range(ny):
            for j in range(nx):
                yield self.tile(i, j)

    def chunk(self, ci: int, cj: int) -> Chunk:
        ny, nx = self.shape_tiles
        k = self.chunk_tiles
        rows = range(ci * k, min((ci + 1) * k, ny))
        cols = range(cj * k, min((cj + 1) * k, nx))
        if not rows or not cols:
            raise IndexError(f"chunk ({ci}, {cj}) outside {self.shape_chunks} chunks")
        tiles = tuple(self.tile(i, j) for i in rows for j in cols)
        first, last = tiles[0].box, tiles[-1].box
        return Chunk((ci, cj), Box(first.row0, first.col0, last.row1, last.col1), tiles)

    def chunks(self) -> Iterator[Chunk]:
        cy, cx = self.shape_chunks
        for ci in range(cy):
            for cj in range(cx):
                yield self.chunk(ci, cj)

    @cached_property
    def _row_segments(self) -> list[tuple[int, int, tuple[int, ...]]]:
        return _segments(self.height, self.shape_chunks[0], self.chunk_tiles * self.stride, self.halo)

    @cached_property
    def _col_segments(self) -> list[tuple[int, int, tuple[int, ...]]]:
        return _segments(self.width, self.shape_chunks[1], self.chunk_tiles * self.stride, self.halo)

    @cached_property
    def _segments_by_chunk(self) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
        """Chunk row -> its row segments' indexes, chunk column -> its column segments' indexes."""
        index: tuple[dict[int, list[int]], dict[int, list[int]]] = ({}, {})
        for axis, segments in enumerate((self._row_segments, self._col_segments)):
            for k, (_, _, chunks) in enumerate(segments):
                for c in chunks:
                    index[axis].setdefault(c, []).append(k)
        return index

    def regions(self) -> Iterator[Region]:
        """Partition of the scene into rectangles, each with its contributing chunks."""
        for r0, r1, crows in self._row_segments:
            for c0, c1, ccols in self._col_segments:
                yield Region(Box(r0, c0, r1, c1), tuple((a, b) for a in crows for b in ccols))

    def chunk_regions(self, ci: int, cj: int) -> list[Region]:
        """The regions of :meth:`regions` that chunk ``(ci, cj)`` contributes to, in the same order."""
        by_row, by_col = self._segments_by_chunk
        return [
            Region(Box(r0, c0, r1, c1), tuple((a, b) for a in crows for b in ccols))
            for r0, r1, crows in (self._row_segments[k] for k in by_row[ci])
            for c0, c1, ccols in (self._col_segments[k] for k in by_col[cj])
        ]


def _segments(size: int, n_chunks: int, chunk_px: int, halo: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """Split ``[0, size)`` along one axis into chunk interiors and the seams between chunks.

    A seam is the ``2 * halo`` pixels centred on a chunk edge, where both chunks'
    tiles overlap; an interior gets a contribution from its own chunk only.
    """
    cuts: list[tuple[int, int, tuple[int, ...]]] = []
    start = 0
    for c in range(n_chunks):
        edge = (c + 1) * chunk_px
        if c == n_chunks - 1:
            cuts.append((start, size, (c,)))
            break
        seam0, seam1 = min(edge - halo, size), min(edge + halo, size)
        if start < seam0:
            cuts.append((start, seam0, (c,)))
        if seam0 < seam1:
            cuts.append((seam0, seam1, (c, c + 1)))
        start = seam1
    return [s for s in cuts if s[0] < s[1]]


class BlockProgress:
    """Which ``size``-pixel blocks of a ``height x width`` grid are complete, as disjoint boxes are written.

    Invariant: each pixel is reported once (the boxes added are disjoint, as the
    stitcher's regions are); a block is complete when all its pixels are in. Pure.
    """

    def __init__(self, height: int, width: int, size: int) -> None:
        self.height, self.width, self.size = height, width, size
        rows, cols = -(-height // size), -(-width // size)
        heights = [min(size, height - r * size) for r in range(rows)]
        widths = [min(size, width - c * size) for c in range(cols)]
        self.missing = [[h * w for w in widths] for h in heights]  # pixels still to come, per block

    def add(self, box: Box) -> list[Box]:
        """Count ``box`` (clipped to the grid) in; returns the blocks it completes, in raster order."""
        s = self.size
        done = []
        for r in range(max(0, box.row0) // s, -(-min(box.row1, self.height) // s)):
            for c in range(max(0, box.col0) // s, -(-min(box.col1, self.width) // s)):
                block = Box(r * s, c * s, min((r + 1) * s, self.height), min((c + 1) * s, self.width))
                cut = block.intersect(box)
                if cut is None:
                    continue
                self.missing[r][c] -= cut.height * cut.width
                if self.missing[r][c] == 0:
                    done.append(block)
                elif self.missing[r][c] < 0:
                    raise ValueError(f"pixels of block {block} reported twice")
        return done
