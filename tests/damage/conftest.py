"""Fixtures of the damage tests: a synthetic pre/post pair with nine roofs, three of them erased in post."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from scipy.ndimage import gaussian_filter

from geounet.damage.run import run_damage
from geounet.damage.settings import DamageSettings
from tests.helpers import make_tiny_model, write_scene


@dataclass(frozen=True)
class SyntheticPair:
    """A small pre/post pair on a projected grid: flat roofs with a ridge on a textured ground, some erased in post.

    Files in ``folder``: ``pre.tif``, ``post.tif``, ``footprints.gpkg`` (1 px inside each
    roof) and ``tiny.safetensors`` (a random-weight buildings model).
    """

    folder: Path
    crs: str = "EPSG:26915"
    res: float = 0.6
    origin: tuple[float, float] = (367000.0, 4104000.0)
    size: int = 256
    boxes: tuple[tuple[int, int], ...] = tuple((r, c) for r in (30, 110, 190) for c in (30, 110, 190))  # (row, col)
    erased: frozenset[int] = frozenset({0, 4, 8})

    @property
    def settings_dict(self) -> dict[str, Any]:
        """The tests' damage settings, as a config's ``damage:`` section.

        The tiny model's weights are random, so its building probabilities mean nothing: grade on
        the encoder feature distance (the image-change term) alone, which responds to real change.
        """
        return {"prob_weight": 0.0, "feature_low": 0.1, "feature_high": 0.3, "block": 128, "halo": 32, "device": "cpu"}

    @property
    def model(self) -> Path:
        return self.folder / "tiny.safetensors"

    @property
    def transform(self) -> Affine:
        return Affine(self.res, 0, self.origin[0], 0, -self.res, self.origin[1])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(background, pre, post) as (3, size, size) uint8."""
        rng = np.random.default_rng(1)
        bg = np.stack([gaussian_filter(rng.uniform(0, 255, (self.size, self.size)), 2) for _ in range(3)])
        bg = np.clip((bg - bg.mean()) * 3 + np.array([90, 120, 70])[:, None, None], 0, 255).astype(np.uint8)
        pre = bg.copy()
        for r, c in self.boxes:
            pre[:, r : r + 20, c : c + 24] = np.array([200, 190, 180])[:, None, None]
            pre[:, r + 9 : r + 11, c : c + 24] = 120  # ridge
        post = pre.copy()
        for k in self.erased:
            r, c = self.boxes[k]
            post[:, r : r + 20, c : c + 24] = bg[:, r : r + 20, c : c + 24]
        return bg, pre, post

    def footprints(self, crs: str | None = None) -> gpd.GeoDataFrame:
        """The roofs' footprints, 1 px inside each roof, in ``crs`` (default: the pair's)."""
        geoms = []
        for r, c in self.boxes:
            (x0, y0), (x1, y1) = self.transform @ (c + 1, r + 1), self.transform @ (c + 23, r + 19)
            geoms.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        gdf = gpd.GeoDataFrame({"name": [f"b{k}" for k in range(len(self.boxes))]}, geometry=geoms, crs=self.crs)
        return gdf.to_crs(crs or self.crs)

    def expected(self, k: int) -> str:
        return "destroyed" if k in self.erased else "no-damage"

    def settings(self, **overrides: Any) -> DamageSettings:
        return DamageSettings(**(self.settings_dict | overrides))

    def write(self, path: Path, pixels: np.ndarray, **kw: Any) -> Path:
        """A GeoTIFF of ``pixels`` on the pair's grid (``kw``: ``write_scene``'s, e.g. mask, crs, origin)."""
        return write_scene(path, pixels, **({"crs": self.crs, "res": self.res, "origin": self.origin} | kw))

    def run(
        self,
        out: Path,
        post: list[Path] | None = None,
        footprints: Path | None = None,
        pre: list[Path] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """``run_damage`` on the pair (or on other pre/post/footprints files) with the tiny model."""
        return run_damage(
            pre or [self.folder / "pre.tif"],
            post or [self.folder / "post.tif"],
            out,
            footprints or self.folder / "footprints.gpkg",
            self.model,
            self.settings(**overrides),
        )

    @staticmethod
    def grades(out: Path) -> list[str]:
        """The grades of ``out/damage.gpkg``, in footprint order."""
        gdf = gpd.read_file(out / "damage.gpkg", layer="buildings").sort_values("footprint_id")
        return list(gdf["damage"])


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPair:
    p = SyntheticPair(tmp_path_factory.mktemp("pair"))
    _, pre, post = p.arrays()
    p.write(p.folder / "pre.tif", pre)
    p.write(p.folder / "post.tif", post)
    p.footprints().to_file(p.folder / "footprints.gpkg", layer="buildings")
    make_tiny_model(p.model)
    return p


@pytest.fixture(scope="session")
def labelled_pair(pair: SyntheticPair) -> SyntheticPair:
    """The pair with ``labels.geojson``: its footprints, field ``subtype`` = destroyed where erased."""
    labels = pair.footprints()
    labels["subtype"] = [pair.expected(k) for k in range(len(labels))]
    labels.to_file(pair.folder / "labels.geojson")
    return pair
