"""Mostly empty scenes: a 200,000^2 px VRT holding one 512^2 source costs what the source costs.

Only the chunks whose tiles touch the source run; the rest of the grid stays nodata
without being written (sparse tiled rasters, sparse COGs); memory stays below a small
fully valid scene's; and the predictions over the source are those of the source alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from geounet.engine.predict import predict_batch
from geounet.engine.settings import PredictSettings
from geounet.io.rasters import written_blocks
from tests.helpers import REPO, make_tiny_model, sparse_vrt, write_scene

RES = 0.5
ORIGIN = (300000.0, 5000000.0)  # EPSG:32615
SIZE = 200_000
STRIDE, HALO = 96, 16  # the tiny model's tiles: 128 px, overlap 32
ROW, COL = 1001 * STRIDE, 733 * STRIDE  # on the tile stride (tiles line up with the source's own), off the 512 blocks


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny random model at the scenes' 0.5 m (no resampling), exported to ONNX now.

    The export is cached for the session (and the child processes), so that no measured
    run pays for it.
    """
    from geounet.models.onnx import load_onnx

    path = make_tiny_model(tmp_path_factory.mktemp("sparse-model") / "tiny05.safetensors", RES)
    load_onnx(path, 1)
    return path


def write_source(path: Path, row: int, col: int, seed: int = 0) -> Path:
    data = np.random.default_rng(seed).integers(1, 256, (3, 512, 512), dtype=np.uint8)  # 0 is the VRT's nodata
    return write_scene(path, data, crs="EPSG:32615", res=RES, origin=(ORIGIN[0] + col * RES, ORIGIN[1] - row * RES))


def predict_in_child(scene: Path, out: Path, model: Path, **settings) -> dict:
    """``predict_batch`` on one scene in a fresh Python process: its report and the process's peak RSS (KiB).

    The peak is the kernel's high-water mark of this process's own memory (``VmHWM``), not
    ``ru_maxrss``, which keeps the forking test process's across ``exec``.
    """
    code = (
        "import json, re, sys\n"
        "from pathlib import Path\n"
        "from geounet.engine.predict import predict_batch\n"
        "from geounet.engine.settings import PredictSettings\n"
        "s = PredictSettings(quiet=True, **json.loads(sys.argv[4]))\n"
        "[r] = predict_batch([Path(sys.argv[1])], Path(sys.argv[2]), Path(sys.argv[3]), s)\n"
        "peak = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
        "print(json.dumps({'ok': r.ok, 'error': r.error, 'tiles': r.tiles, 'peak_kib': peak}))\n"
    )
    args = [sys.executable, "-c", code, str(scene), str(out), str(model), json.dumps(settings)]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def touching(start: int, length: int = 512) -> list[int]:
    """Tile indexes, along one axis, whose 128 px extent meets ``[start, start + length)``."""
    return [
        i for i in range(SIZE // STRIDE + 1) if i * STRIDE - HALO < start + length and i * STRIDE + 128 - HALO > start
    ]


def read(path: Path, window: Window | None = None) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(window=window)


def test_a_200000_px_vrt_with_one_source_runs_its_chunks_only(model, tmp_path):
    source = write_source(tmp_path / "source.tif", ROW, COL)
    vrt = sparse_vrt(tmp_path / "mosaic.vrt", SIZE, source, ROW, COL)
    full = write_scene(  # the yardstick: a small scene, every pixel valid
        tmp_path / "full4096.tif",
        np.random.default_rng(1).integers(0, 256, (3, 4096, 4096), dtype=np.uint8),
        crs="EPSG:32615",
        res=RES,
    )
    # fp32: ONNX Runtime, one tile per chunk (auto takes bf16 on torch, 2048 px chunks, on CPUs with AMX)
    sparse = predict_in_child(vrt, tmp_path / "out", model, precision="fp32")
    dense = predict_in_child(full, tmp_path / "out_full", model, precision="fp32")
    assert sparse["ok"] and dense["ok"], (sparse["error"], dense["error"])

    # (a) chunks: one tile each (ONNX Runtime on the CPU); only those touching the source ran
    tiles = sparse["tiles"]
    expected = len(touching(ROW)) * len(touching(COL))
    assert tiles["chunks_run"] == expected == 49 and tiles["run"] == expected
    assert tiles["total"] == tiles["chunks"] == (-(-SIZE // STRIDE)) ** 2
    assert tiles["skipped"] == tiles["total"] - tiles["run"]
    record = json.loads((tmp_path / "out/mosaic/run.json").read_text())
    assert record["tiles"] == tiles and record["timings"]["coverage_s"] >= 0

    # (b) memory: below that of a 4096^2 fully valid scene (whose chunk tasks run every tile, vectors aside)
    assert dense["tiles"]["run"] == dense["tiles"]["total"] > 1000
    assert sparse["peak_kib"] < dense["peak_kib"], (sparse["peak_kib"], dense["peak_kib"])

    # (c) over the source: the predictions of the source alone (the tiles line up), a halo's width from its edges
    [alone] = predict_batch(
        [source], tmp_path / "alone", model, PredictSettings(quiet=True, vector=False, precision="fp32")
    )
    assert alone.ok and alone.tiles["run"] == 36
    at = Window(COL, ROW, 512, 512)
    out = tmp_path / "out/mosaic"
    for name in ("scores.tif", "classes.tif"):
        mine, theirs = read(out / name, at), read(tmp_path / "alone/source" / name)
        np.testing.assert_array_equal(mine[:, HALO:, HALO:], theirs[:, HALO:, HALO:])
        assert (mine != 255).all()  # every source pixel is valid

    # (d) outside the source: nodata, next to it and far away
    around = read(out / "classes.tif", Window(COL - 700, ROW - 700, 1912, 1912))[0]
    inside = np.zeros(around.shape, bool)
    inside[700:1212, 700:1212] = True
    assert (around[~inside] == 255).all() and (around[inside] != 255).all()
    for r, c in ((0, 0), (SIZE - 300, SIZE - 300), (ROW, COL + 4000), (150_000, 20_000)):
        assert (read(out / "scores.tif", Window(c, r, 300, 300)) == 255).all()

    # (e) valid COGs, stored where the data is only
    for name in ("scores.tif", "classes.tif"):
        with rasterio.open(out / name) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.nodata == 255
            assert ds.overviews(1)[:3] == [2, 4, 8] and ds.overviews(1)[-1] >= 256
            small = ds.read(1, out_shape=(500, 500))  # from an overview
            assert 0 < (small != 255).sum() <= 9
        assert written_blocks(out / name).sum() == 4  # the 512^2 source straddles 2 x 2 blocks
        assert (out / name).stat().st_size < 8 * 2**20  # block indexes mostly: 2 x 8 bytes per block and level
    assert (out / "features.gpkg").exists() and record["vector"] is not None


def test_a_mostly_empty_resampled_scene_skips_stage_2_and_its_empty_blocks(tmp_path):
    """The working grid 2x coarser than the scene: stage 1 on it, stage 2 back on the scene grid, both sparse."""
    model = make_tiny_model(tmp_path / "tiny1m.safetensors", 2 * RES)
    row, col = 7003, 9011
    source = write_source(tmp_path / "source.tif", row, col, seed=2)
    vrt = sparse_vrt(tmp_path / "mosaic.vrt", 20_000, source, row, col)
    [rep] = predict_batch([vrt], tmp_path / "out", model, PredictSettings(quiet=True, vector=False, precision="fp32"))
    assert rep.ok, rep.error
    record = json.loads((tmp_path / "out/mosaic/run.json").read_text())
    wg = record["working_grid"]
    assert wg["resampled"] and abs(wg["width"] - 10_000) <= 2 and abs(wg["height"] - 10_000) <= 2
    assert rep.tiles["chunks"] == -(-wg["width"] // STRIDE) * -(-wg["height"] // STRIDE)
    assert 4 <= rep.tiles["chunks_run"] <= 25 and rep.tiles["run"] <= rep.tiles["chunks_run"]
    classes = read(tmp_path / "out/mosaic/classes.tif", Window(col - 600, row - 600, 1712, 1712))[0]
    inside = np.zeros(classes.shape, bool)
    inside[600:1112, 600:1112] = True
    assert (classes[~inside] == 255).all() and (classes[inside] != 255).all()
    assert written_blocks(tmp_path / "out/mosaic/classes.tif").sum() <= 4
