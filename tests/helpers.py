"""Test helpers, imported one way (``from tests.helpers import ...``): the repo's real demo
scene and default model, a tiny random model, small GeoTIFFs, and the larger shared scenes
(``../shared/data``), skipped with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

REPO = Path(__file__).resolve().parent.parent
DEMO_SCENE = REPO / "data" / "demo" / "kampala_demo.tif"
DEFAULT_MODEL = REPO / "data" / "models" / "buildings.safetensors"
SHARED = Path(os.environ.get("GEOUNET_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(rel: str) -> Path:
    """A file under ../shared/data, or skip the test saying plainly what is missing."""
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (CI has ../shared/data beside the repo)")
    return path


def make_tiny_model(path: Path, resolution_m: float = 0.15) -> Path:
    """A small random-weight RGB building model (mechanics only, not accuracy)."""
    import torch

    from geounet.models.card import ClassInfo, ModelCard
    from geounet.models.network import build_network, save_model

    card = ModelCard(
        name="tiny-test",
        classes=[ClassInfo("background", (0, 0, 0), "background"), ClassInfo("building", (230, 60, 60), "building")],
        bands=[1, 2, 3],
        band_names=["red", "green", "blue"],
        mean=[0.45, 0.45, 0.45],
        std=[0.25, 0.25, 0.25],
        scale=255.0,
        input_dtypes=["uint8"],
        resolution_m=resolution_m,
        tile_size=128,
        overlap=32,
        encoder="resnet18",
        encoder_depth=3,
        decoder_channels=[32, 16, 8],
    )
    torch.manual_seed(0)
    save_model(path, build_network(card), card)
    return path


def write_scene(
    path: Path,
    data: np.ndarray,
    crs="EPSG:32633",
    res: float = 0.15,
    nodata=None,
    mask=None,
    origin=(500000.0, 5800000.0),
) -> Path:
    """Write a small GeoTIFF (bands, rows, cols) with an optional nodata value or mask."""
    count, h, w = data.shape
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=count,
        dtype=data.dtype.name,
        nodata=nodata,
        crs=crs,
        transform=Affine(res, 0, origin[0], 0, -res, origin[1]) if crs else None,
    )
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
    return path


def invoke(*args: object):
    """Run the ``geounet`` command in this process (typer's test runner); returns its result."""
    from typer.testing import CliRunner

    from geounet.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    """The ``error: ...`` lines a command wrote to stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def make_card(*kinds: tuple[str, str, tuple[int, int, int]]):
    """A one-band model card: ``background`` plus one class per ``(name, kind, colour)`` (no weights)."""
    from geounet.models.card import ClassInfo, ModelCard

    classes = [ClassInfo("background", (0, 0, 0), "background")] + [ClassInfo(n, col, k) for n, k, col in kinds]
    return ModelCard(
        name="test",
        classes=classes,
        bands=[1],
        band_names=["x"],
        mean=[0.0],
        std=[1.0],
        scale=1.0,
        input_dtypes=["uint8"],
        resolution_m=1.0,
    )


def sparse_vrt(path: Path, size: int, source: Path, row: int, col: int) -> Path:
    """A ``size`` x ``size`` VRT (nodata 0) on ``source``'s CRS and pixel size, holding ``source`` at pixel
    (row, col) and nothing else: the shape of a huge, mostly empty mosaic."""
    with rasterio.open(source) as src:
        t, w, h, crs, count = src.transform, src.width, src.height, src.crs.to_wkt(), src.count
    x0, y0 = t.c - col * t.a, t.f - row * t.e  # the VRT's upper-left corner
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue><SimpleSource>'
        f"<SourceFilename>{source}</SourceFilename><SourceBand>{b}</SourceBand>"
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
        f'<DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/></SimpleSource></VRTRasterBand>'
        for b in range(1, count + 1)
    )
    srs = crs.replace("&", "&amp;").replace("<", "&lt;")
    path.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{srs}</SRS>'
        f"<GeoTransform>{x0!r}, {t.a!r}, 0, {y0!r}, 0, {t.e!r}</GeoTransform>{bands}</VRTDataset>"
    )
    return path
