"""Web Mercator (EPSG:3857) tile maths: zoom levels, tile ranges and their grids, in metres of EPSG:3857.

Tiles are the XYZ scheme of web maps: 256 px, x from the west, y from the north, zoom 0
one tile for the world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine

HALF_WORLD = 20037508.342789244  # metres: the EPSG:3857 x (and y) of the antimeridian (and of 85.05 deg N)
TILE = 256  # pixels a side
MAX_ZOOM = 24
MERCATOR = "EPSG:3857"


def resolution(zoom: int) -> float:
    """Metres of EPSG:3857 per pixel at ``zoom``."""
    return 2 * HALF_WORLD / (TILE * 2**zoom)


def zoom_for_resolution(res: float) -> int:
    """The zoom whose pixel size is nearest to ``res`` (metres of EPSG:3857, log scale), 0 to ``MAX_ZOOM``."""
    return max(0, min(MAX_ZOOM, round(math.log2(2 * HALF_WORLD / (TILE * res)))))


def zoom_for_extent(size: float) -> int:
    """The finest zoom at which ``size`` metres of EPSG:3857 fit in one tile (0 to ``MAX_ZOOM``)."""
    return max(0, min(MAX_ZOOM, math.floor(math.log2(2 * HALF_WORLD / max(size, 1e-9)))))


@dataclass(frozen=True)
class TileRange:
    """The tiles ``x0..x1``, ``y0..y1`` (inclusive) of one zoom that cover a box."""

    zoom: int
    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def covering(cls, bounds: tuple[float, float, float, float], zoom: int) -> TileRange:
        """The tiles of ``zoom`` that ``bounds`` (minx, miny, maxx, maxy in EPSG:3857 metres) meets."""
        n = 2**zoom
        size = 2 * HALF_WORLD / n
        minx, miny, maxx, maxy = bounds

        def clamp(v: float) -> int:
            return max(0, min(n - 1, int(math.floor(v))))

        return cls(
            zoom,
            clamp((minx + HALF_WORLD) / size),
            clamp((HALF_WORLD - maxy) / size),
            clamp((maxx + HALF_WORLD) / size - 1e-9),
            clamp((HALF_WORLD - miny) / size - 1e-9),
        )

    @property
    def width(self) -> int:
        """Pixels across the range."""
        return (self.x1 - self.x0 + 1) * TILE

    @property
    def height(self) -> int:
        """Pixels down the range."""
        return (self.y1 - self.y0 + 1) * TILE

    @property
    def count(self) -> int:
        return (self.x1 - self.x0 + 1) * (self.y1 - self.y0 + 1)

    @property
    def transform(self) -> Affine:
        """The affine transform of the range's pixel grid (EPSG:3857 metres)."""
        res = resolution(self.zoom)
        return Affine(res, 0.0, -HALF_WORLD + self.x0 * TILE * res, 0.0, -res, HALF_WORLD - self.y0 * TILE * res)


def lonlat_bounds(bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of EPSG:3857 ``bounds`` (metres), as web maps take them."""
    minx, miny, maxx, maxy = bounds

    def lon(x: float) -> float:
        return x / HALF_WORLD * 180.0

    def lat(y: float) -> float:
        return math.degrees(2 * math.atan(math.exp(y / 6378137.0)) - math.pi / 2)

    return lon(minx), lat(miny), lon(maxx), lat(maxy)
