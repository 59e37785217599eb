"""Training data: scenes read onto the training grid with their labels, band statistics, random chips.

Every scene is read resampled to the training ground resolution ``resolution_m``
(metres per pixel on the ground, measured geodesically at the scene centre, so
EPSG:4326 and EPSG:3857 scenes are right) in its own CRS, with its dataset mask:
pixels outside the mask, and unlabelled pixels where the labels cover only part of a
scene, get the ignore index 255. Arrays are (bands, rows, cols) and (rows, cols),
row 0 at the top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from geounet.compute.instances import contact_pixels
from geounet.errors import GeounetError
from geounet.io.aoi import read_area
from geounet.io.labels import (
    IGNORE_INDEX,
    RASTER_LABEL_SUFFIXES,
    instance_ids,
    labels_to_raster,
    read_label_raster,
    read_vector_labels,
)
from geounet.io.remote import cloud_defaults, gdal_path, is_remote, scene_name
from geounet.io.scene import ground_pixel_size
from geounet.training.config import DataConfig, SceneConfig, TrainConfig, background_index


@dataclass
class Scene:
    """A scene on the training grid: raw DNs (bands, rows, cols) and class indexes (rows, cols).

    ``transform`` maps pixels of these arrays to ``crs`` coordinates; ``label`` is
    ``IGNORE_INDEX`` outside the dataset mask and where there is no usable label.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    crs: Any
    transform: Any
    dtype: str
    weight: float = 1.0


class _Grid(NamedTuple):
    """The training grid of a scene: its CRS, pixel -> CRS transform, (rows, cols) and CRS bounds."""

    crs: Any
    transform: Any
    shape: tuple[int, int]
    bounds: Any


def load_scene(scene: SceneConfig, cfg: TrainConfig) -> Scene:
    """Read a scene resampled to ``cfg.data.resolution_m`` in its own CRS, with its labels (and its window)."""
    from affine import Affine

    path = scene.image
    image, valid, dtype, grid = _read_image(path, cfg.data)
    label = _read_labels(scene.labels, grid, cfg, scene.labels_offset_m, scene.negative)
    if scene.unlabelled_ignore_in is not None:
        in_area = read_area(scene.unlabelled_ignore_in).on_grid(grid.crs, grid.transform, grid.shape)
        label[(label == background_index(cfg)) & in_area] = IGNORE_INDEX
    label[~valid] = IGNORE_INDEX
    transform = grid.transform
    if scene.window is not None:
        height, width = grid.shape
        x0, y0, x1, y1 = scene.window
        c0, c1 = round(x0 * width), round(x1 * width)
        r0, r1 = round(y0 * height), round(y1 * height)
        image, label = image[:, r0:r1, c0:c1], label[r0:r1, c0:c1]
        transform = transform @ Affine.translation(c0, r0)
    if not (label != IGNORE_INDEX).any():
        raise GeounetError(path, "no labelled pixels in the scene (or its window)")
    return Scene(
        scene_name(path),
        np.ascontiguousarray(image),
        np.ascontiguousarray(label),
        grid.crs,
        transform,
        dtype,
        scene.weight,
    )


def _read_image(path: str | Path, d: DataConfig) -> tuple[np.ndarray, np.ndarray, str, _Grid]:
    """``(DNs (bands, rows, cols), valid mask (rows, cols), dtype, grid)`` of a scene at ``d.resolution_m``."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling

    if not is_remote(path) and not Path(path).is_file():
        raise GeounetError(path, "scene not found")
    if is_remote(path):
        cloud_defaults()
    try:
        ds = rasterio.open(gdal_path(path))
    except rasterio.errors.RasterioError as exc:
        raise GeounetError(path, f"cannot read the scene ({str(exc).splitlines()[0]})") from None
    with ds:
        if ds.crs is None:
            raise GeounetError(path, "scene has no CRS")
        if max(d.bands) > ds.count:
            raise GeounetError(path, f"scene has {ds.count} bands; the config asks for bands {d.bands}")
        dtypes = {ds.dtypes[b - 1] for b in d.bands}
        if len(dtypes) != 1:
            raise GeounetError(path, f"bands {d.bands} have different dtypes {sorted(dtypes)}")
        res_x, res_y = ground_pixel_size(ds.crs, ds.transform, ds.width, ds.height)
        width = max(1, round(ds.width * res_x / d.resolution_m))
        height = max(1, round(ds.height * res_y / d.resolution_m))
        resampling = d.resampling
        if resampling == "auto":
            resampling = "average" if width < ds.width else ("nearest" if width == ds.width else "bilinear")
        image = ds.read(d.bands, out_shape=(len(d.bands), height, width), resampling=Resampling[resampling])
        valid = ds.dataset_mask(out_shape=(height, width), resampling=Resampling.nearest) > 0
        transform = ds.transform @ Affine.scale(ds.width / width, ds.height / height)
        return image, valid, dtypes.pop(), _Grid(ds.crs, transform, (height, width), ds.bounds)


def _read_labels(
    path: Path | None, grid: _Grid, cfg: TrainConfig, offset_m: list[float] | None = None, negative: bool = False
) -> np.ndarray:
    """Class indexes (rows, cols) uint8 on the scene's grid from a class raster or a vector file.

    ``offset_m`` ``[east, north]`` moves vector labels by that many metres on the ground (the
    grid's pixels are ``cfg.data.resolution_m`` on the ground, so it is exact in degrees too).
    ``negative``: labels that miss the scene leave it all background instead of failing;
    without labels (``path`` None) a negative scene is all background.
    """
    names = cfg.class_names
    lab = cfg.labels
    if path is None:
        if not negative:
            raise ValueError("a scene without labels must be negative")
        return np.full(grid.shape, background_index(cfg), np.uint8)
    if path.suffix.lower() in RASTER_LABEL_SUFFIXES:
        if offset_m is not None:
            raise GeounetError(path, "labels_offset_m moves vector labels only")
        return read_label_raster(path, grid.crs, grid.transform, grid.shape, names, lab.value_map or None)
    gdf = read_vector_labels(
        path,
        grid.crs,
        grid.bounds,
        names,
        class_field=lab.class_field,
        default_class=lab.default_class,
        value_map=lab.value_map,
        line_width_m=lab.line_width_m,
        layer=lab.layer,
        allow_empty=negative,  # a negative scene: no label needs to overlap it
    )
    if offset_m is not None:
        east_px, north_px = (v / cfg.data.resolution_m for v in offset_m)
        gdf = gdf.set_geometry(gdf.translate(east_px * grid.transform.a, -north_px * grid.transform.e))
    fill = background_index(cfg) if lab.unlabelled == "background" else IGNORE_INDEX
    y = labels_to_raster(gdf, grid.shape, grid.transform, all_touched=lab.all_touched, unlabelled=fill)
    if lab.contact_class is not None:
        buildings = [i for i, c in enumerate(cfg.classes) if c.kind == "building"]
        ids = instance_ids(gdf[gdf.class_value.isin(buildings)], grid.shape, grid.transform, lab.all_touched)
        radius = max(1, round(lab.contact_m / cfg.data.resolution_m))
        y[contact_pixels(ids, radius) & np.isin(y, buildings)] = names.index(lab.contact_class)
    return y


def band_stats(scenes: list[Scene], scale: float) -> tuple[list[float], list[float]]:
    """Per-band mean and std of DN / scale over the labelled pixels of the scenes."""
    total: np.ndarray | None = None  # per band: sum, sum of squares
    n = 0
    for s in scenes:
        keep = s.label != IGNORE_INDEX
        px = s.image[:, keep].astype(np.float64) / scale
        sums = np.stack([px.sum(axis=1), (px**2).sum(axis=1)])
        total = sums if total is None else total + sums
        n += px.shape[1]
    assert total is not None, "no scenes"
    mean = total[0] / n
    std = np.sqrt(np.maximum(total[1] / n - mean**2, 1e-12))
    return [round(float(v), 5) for v in mean], [round(float(v), 5) for v in std]


# --------------------------------------------------------------------------- chips


class ChipSampler:
    """Draws square training chips (raw DNs, class indexes) from in-memory scenes.

    With probability ``rare_class_bias`` a chip is placed so that it contains a random
    pixel of a random non-background class; otherwise anywhere in a scene (scenes drawn
    in proportion to their labelled area times their ``weight``). Chips with less than
    ``min_labelled`` of their pixels labelled are redrawn a few times (the best draw is
    kept). Scenes smaller than a chip are padded with zeros and the ignore index.
    ``chip_size`` is in pixels of the training grid.
    """

    MAX_INDEX = 500_000  # pixel positions kept per class and scene for biased draws
    DRAWS = 10  # draws per chip at most, while chips have too few labelled pixels

    def __init__(
        self,
        scenes: list[Scene],
        chip_size: int,
        rare_classes: list[int],
        rare_class_bias: float,
        min_labelled: float,
        rng: np.random.Generator,
    ) -> None:
        self.scenes = scenes
        self.size = chip_size
        self.bias = rare_class_bias
        self.min_labelled = min_labelled
        self.rng = rng
        areas = np.array([(s.label != IGNORE_INDEX).sum() * s.weight for s in scenes], dtype=np.float64)
        self.scene_p = areas / areas.sum()
        # class -> list of (scene index, flat pixel indexes of that class)
        self.where: dict[int, list[tuple[int, np.ndarray]]] = {}
        for c in rare_classes:
            for i, s in enumerate(scenes):
                idx = np.flatnonzero(s.label == c)
                if len(idx) > self.MAX_INDEX:
                    idx = np.sort(rng.choice(idx, self.MAX_INDEX, replace=False))
                if len(idx):
                    self.where.setdefault(c, []).append((i, idx))

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One chip: ``(image (bands, size, size) raw dtype, label (size, size) uint8)``."""
        best: tuple[float, tuple[np.ndarray, np.ndarray]] | None = None
        for _ in range(self.DRAWS):
            chip = self._draw()
            labelled = float((chip[1] != IGNORE_INDEX).mean())
            if labelled >= self.min_labelled:
                return chip
            if best is None or labelled > best[0]:
                best = (labelled, chip)
        assert best is not None
        return best[1]

    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        """One chip at a random place: around a rare-class pixel (with probability ``bias``) or anywhere."""
        s = self.size
        if self.where and self.rng.random() < self.bias:
            c = list(self.where)[self.rng.integers(len(self.where))]
            entries = self.where[c]
            weights = np.array([len(idx) * self.scenes[i].weight for i, idx in entries], dtype=np.float64)
            i, idx = entries[self.rng.choice(len(entries), p=weights / weights.sum())]
            scene = self.scenes[i]
            r, col = divmod(int(idx[self.rng.integers(len(idx))]), scene.label.shape[1])
            top = r - int(self.rng.integers(s))
            left = col - int(self.rng.integers(s))
        else:
            scene = self.scenes[self.rng.choice(len(self.scenes), p=self.scene_p)]
            h, w = scene.label.shape
            top = int(self.rng.integers(max(1, h - s + 1)))
            left = int(self.rng.integers(max(1, w - s + 1)))
        return crop(scene, top, left, s)


def crop(scene: Scene, top: int, left: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` window (pixels; ``top``, ``left`` its corner), moved inside the scene where it fits.

    Where the scene is smaller than the window, the rest is padded with zeros and the ignore index.
    """
    h, w = scene.label.shape
    top = min(max(top, 0), max(h - size, 0))
    left = min(max(left, 0), max(w - size, 0))
    img = scene.image[:, top : top + size, left : left + size]
    lab = scene.label[top : top + size, left : left + size]
    if lab.shape != (size, size):
        pad_img = np.zeros((img.shape[0], size, size), dtype=img.dtype)
        pad_lab = np.full((size, size), IGNORE_INDEX, dtype=np.uint8)
        pad_img[:, : lab.shape[0], : lab.shape[1]] = img
        pad_lab[: lab.shape[0], : lab.shape[1]] = lab
        img, lab = pad_img, pad_lab
    return img, lab
