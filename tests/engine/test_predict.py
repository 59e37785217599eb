"""End-to-end prediction: georeferencing, nodata, seams, determinism, resampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geounet.engine.predict import predict_batch
from geounet.engine.settings import PredictSettings
from geounet.errors import GeounetError
from tests.helpers import DEMO_SCENE, shared_file, write_scene


def run(scenes, out, model, **kw):
    kw.setdefault("quiet", True)
    reports = predict_batch([Path(s) for s in scenes], out, model, PredictSettings(**kw))
    return reports


def read(path, band=None):
    with rasterio.open(path) as ds:
        return ds.read() if band is None else ds.read(band)


def assert_same_grid(scene: Path, out_dir: Path):
    with rasterio.open(scene) as src:
        for name in ("scores.tif", "classes.tif"):
            with rasterio.open(out_dir / name) as o:
                assert o.crs == src.crs, name
                assert o.transform.almost_equals(src.transform, precision=1e-12), name
                assert (o.width, o.height) == (src.width, src.height), name
                assert o.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", name
                assert o.block_shapes[0] == (512, 512) and o.compression is not None, name


def test_demo_scene_outputs_are_cogs_on_the_scene_grid_with_nodata(tiny_model, tmp_path):
    [rep] = run([DEMO_SCENE], tmp_path, tiny_model)
    assert rep.ok, rep.error
    out = tmp_path / "kampala_demo"
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.tif",
        "features.gpkg",
        "item.json",
        "quicklook.png",
        "run.json",
        "scores.tif",
    ]
    assert_same_grid(DEMO_SCENE, out)
    with rasterio.open(DEMO_SCENE) as src:
        invalid = src.dataset_mask() == 0
    assert invalid.any()
    classes, scores = read(out / "classes.tif", 1), read(out / "scores.tif")
    np.testing.assert_array_equal(classes == 255, invalid)
    assert np.all(scores[:, invalid] == 255) and np.all(scores[:, ~invalid] <= 254)
    # probabilities sum to ~1 (DN / 254)
    total = scores[:, ~invalid].astype(int).sum(0)
    assert np.abs(total - 254).max() <= 2
    with rasterio.open(out / "classes.tif") as c, rasterio.open(out / "scores.tif") as s:
        assert c.colormap(1)[1][:3] == (230, 60, 60) and c.nodata == 255
        assert json.loads(c.tags()["GEOUNET_CLASSES"]) == ["background", "building"]
        assert s.descriptions == ("background", "building") and s.scales[0] == pytest.approx(1 / 254)
        assert c.overviews(1) and s.overviews(1)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["input"]["sha256"] and run_json["model"]["sha256"] and run_json["geounet_version"]
    assert run_json["settings"]["tile_size"] == 128 and run_json["working_grid"]["resampled"] is True
    assert run_json["tiles"]["run"] > 0 and "total_s" in run_json["timings"]


@pytest.mark.parametrize("backend", ["onnx", "torch"])  # torch: threads sharing one network, as on a GPU
def test_workers_1_and_2_give_identical_classes(tiny_model, tmp_path, backend):
    kw = dict(tile_size=96, overlap=32, chunk_pixels=128, backend=backend, precision="fp32")
    a = run([DEMO_SCENE], tmp_path / "w1", tiny_model, workers=1, **kw)
    b = run([DEMO_SCENE], tmp_path / "w2", tiny_model, workers=2, **kw)
    assert a[0].ok and b[0].ok and a[0].tiles["chunks"] > 4
    np.testing.assert_array_equal(
        read(tmp_path / "w1/kampala_demo/classes.tif"), read(tmp_path / "w2/kampala_demo/classes.tif")
    )
    np.testing.assert_array_equal(
        read(tmp_path / "w1/kampala_demo/scores.tif"), read(tmp_path / "w2/kampala_demo/scores.tif")
    )


def test_chunking_does_not_change_the_result(tiny_model, tmp_path):
    """Chunk boundaries (stitched by the writer) give the same rasters as one chunk."""
    run([DEMO_SCENE], tmp_path / "small", tiny_model, tile_size=96, overlap=32, chunk_pixels=64)
    run([DEMO_SCENE], tmp_path / "one", tiny_model, tile_size=96, overlap=32, chunk_pixels=100000)
    a = read(tmp_path / "small/kampala_demo/scores.tif").astype(int)
    b = read(tmp_path / "one/kampala_demo/scores.tif").astype(int)
    assert np.abs(a - b).max() <= 1  # float sums in another order may round one DN apart


def test_direct_path_chunking_and_mask(tiny_model, tmp_path):
    """On the model's own grid, regions go straight to uint8: chunk seams and the mask as above."""
    with rasterio.open(DEMO_SCENE) as src:
        data, mask = src.read(), src.dataset_mask() > 0
    assert (~mask).any()
    scene = write_scene(tmp_path / "native.tif", data, res=0.15, mask=mask)  # the tiny model's resolution
    small = run([scene], tmp_path / "small", tiny_model, tile_size=96, overlap=32, chunk_pixels=64)
    one = run([scene], tmp_path / "one", tiny_model, tile_size=96, overlap=32, chunk_pixels=100000)
    assert small[0].ok and one[0].ok and small[0].tiles["chunks"] > 4 and one[0].tiles["chunks"] == 1
    assert json.loads((tmp_path / "small/native/run.json").read_text())["working_grid"]["resampled"] is False
    a = read(tmp_path / "small/native/scores.tif").astype(int)
    b = read(tmp_path / "one/native/scores.tif").astype(int)
    assert np.abs(a - b).max() <= 1
    for out in ("small", "one"):
        classes = read(tmp_path / out / "native/classes.tif", 1)
        np.testing.assert_array_equal(classes == 255, ~mask)
        assert set(np.unique(classes[mask])) <= {0, 1}
    assert_same_grid(scene, tmp_path / "small" / "native")


def test_vector_stage_in_worker_processes_gives_the_same_features(default_model, tmp_path):
    """The local vector pool (forkserver worker processes) writes what the in-process threads write."""
    import geopandas as gpd
    import shapely

    results = {}
    for processes in (False, True):
        [rep] = run([DEMO_SCENE], tmp_path / str(processes), default_model, vector_block=96, vector_processes=processes)
        assert rep.ok, rep.error
        out = tmp_path / str(processes) / "kampala_demo"
        ran_on = json.loads((out / "run.json").read_text())["vector"]["ran_on"]
        assert ran_on == ("local worker processes" if processes else "in-process threads")
        results[processes] = gpd.read_file(out / "features.gpkg", layer="buildings")
    a, b = results[False], results[True]
    assert len(a) == len(b) > 5
    assert a.area_m2.sum() == pytest.approx(b.area_m2.sum(), rel=1e-9)
    sym = shapely.union_all(a.geometry.values).symmetric_difference(shapely.union_all(b.geometry.values)).area
    assert sym <= 1e-9 * a.geometry.area.sum()


@pytest.mark.parametrize("res", [0.15, 0.25], ids=["scene-grid", "resampled"])
@pytest.mark.parametrize("while_predicting", [True, None], ids=["while-predicting", "auto-cpu-threads"])
def test_blocks_polygonized_while_predicting_give_what_the_finished_raster_gives(
    default_model, tmp_path, res, while_predicting
):
    """Vector blocks handed over as the raster writer completes them (during the chunks, or during stage 2
    when resampled) give the same features as vectorizing the finished classes.tif afterwards.

    Left to choose (None), a CPU run whose vector tasks share the model's threads polygonizes
    every block after the chunks instead, with the same features."""
    import geopandas as gpd

    from geounet.engine.executors import ThreadedExecutor
    from geounet.engine.vector_stage import vectorize_scene
    from geounet.models.card import read_card

    with rasterio.open(DEMO_SCENE) as src:
        data = src.read()
    data[:, 600:, :200] = 0  # a nodata corner: its blocks are never complete while predicting
    scene = write_scene(tmp_path / "scene.tif", data, res=res, nodata=0)
    [rep] = run(
        [scene],
        tmp_path / "out",
        default_model,
        vector_block=128,
        precision="fp32",
        device="cpu",
        vector_while_predicting=while_predicting,
    )
    assert rep.ok, rep.error
    out = tmp_path / "out" / "scene"
    vector = json.loads((out / "run.json").read_text())["vector"]
    if while_predicting:
        assert vector["while_predicting"] and 0 < vector["blocks_while_predicting"] <= 36
    else:
        assert not vector["while_predicting"] and vector["blocks_while_predicting"] == 0
    executor = ThreadedExecutor(1)
    try:
        vectorize_scene(
            out / "classes.tif",
            out / "scores.tif",
            tmp_path / "after.gpkg",
            read_card(default_model),
            executor,
            block=128,
        )
    finally:
        executor.close()

    def rows(path: Path) -> list[tuple[float, float, float]]:
        gdf = gpd.read_file(path, layer="buildings")  # in fid order
        return list(zip(gdf.area_m2, gdf.score, gdf.geometry.normalize().to_wkb()))

    # the same rows in the same order (blocks finish in any order; rows go in the blocks' raster order)
    streamed, after = rows(out / "features.gpkg"), rows(tmp_path / "after.gpkg")
    assert len(streamed) > 5 and streamed == after


def test_scene_smaller_than_a_tile(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    scene = write_scene(tmp_path / "small.tif", rng.integers(0, 255, (3, 30, 45), dtype=np.uint8), res=0.15)
    [rep] = run([scene], tmp_path / "out", tiny_model)
    assert rep.ok and rep.tiles["total"] == 1
    assert_same_grid(scene, tmp_path / "out" / "small")
    assert (read(tmp_path / "out/small/classes.tif", 1) != 255).all()


def test_all_nodata_tiles_are_skipped_and_stay_nodata(tiny_model, tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(1, 255, (3, 300, 300), dtype=np.uint8)
    mask = np.zeros((300, 300), bool)
    mask[:, :100] = True  # only the left third is data
    scene = write_scene(tmp_path / "part.tif", data, res=0.15, mask=mask)
    [rep] = run([scene], tmp_path / "out", tiny_model, tile_size=64, overlap=16)
    assert rep.ok and rep.tiles["skipped"] > 0 and rep.tiles["run"] < rep.tiles["total"]
    classes = read(tmp_path / "out/part/classes.tif", 1)
    np.testing.assert_array_equal(classes == 255, ~mask)


def test_all_nodata_scene_gives_all_nodata_outputs_and_succeeds(tiny_model, tmp_path):
    scene = write_scene(tmp_path / "empty.tif", np.zeros((3, 100, 120), np.uint8), res=0.15, nodata=0)
    [rep] = run([scene], tmp_path / "out", tiny_model)
    assert rep.ok and rep.tiles["run"] == 0
    assert (read(tmp_path / "out/empty/classes.tif") == 255).all()
    assert (read(tmp_path / "out/empty/scores.tif") == 255).all()


def test_rerun_replaces_previous_outputs_atomically(tiny_model, tmp_path):
    run([DEMO_SCENE], tmp_path, tiny_model)
    first = json.loads((tmp_path / "kampala_demo/run.json").read_text())["created_utc"]
    run([DEMO_SCENE], tmp_path, tiny_model)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["kampala_demo"]
    assert json.loads((tmp_path / "kampala_demo/run.json").read_text())["created_utc"] >= first


@pytest.mark.parametrize("rel", ["kampala/kampala_b.tif", "joplin/post/tile_31500-5137.tif"])
def test_georeferencing_on_real_scenes(rel, tiny_model_03, tmp_path):
    """EPSG:3857 (Kampala) and EPSG:4326 in degrees (Joplin post), both resampled to the model."""
    scene = shared_file(rel)
    [rep] = run([scene], tmp_path, tiny_model_03, tile_size=256, overlap=32)
    assert rep.ok, rep.error
    assert_same_grid(scene, tmp_path / scene.stem)


def test_onnx_and_torch_backends_give_the_same_rasters(default_model, tmp_path):
    """The CPU default (ONNX Runtime, exported from the same weights) and torch: same maps up to rounding."""
    kw = dict(tile_size=128, overlap=32, vector=False, precision="fp32")  # ONNX Runtime runs fp32 only
    [a] = run([DEMO_SCENE], tmp_path / "onnx", default_model, backend="onnx", **kw)
    [b] = run([DEMO_SCENE], tmp_path / "torch", default_model, backend="torch", **kw)
    assert a.ok and b.ok and a.tiles["run"] > 4
    for name, backend in (("onnx", "onnx"), ("torch", "torch")):
        assert json.loads((tmp_path / name / "kampala_demo/run.json").read_text())["settings"]["backend"] == backend
    sa, sb = (
        read(tmp_path / "onnx/kampala_demo/scores.tif").astype(int),
        read(tmp_path / "torch/kampala_demo/scores.tif").astype(int),
    )
    assert np.abs(sa - sb).max() <= 1
    ca, cb = read(tmp_path / "onnx/kampala_demo/classes.tif", 1), read(tmp_path / "torch/kampala_demo/classes.tif", 1)
    assert (ca != cb).mean() < 1e-3  # only exact ties may flip
    assert (cb == 1).sum() > 1000  # the real model finds buildings here: the comparison means something


def test_a_cpu_run_through_onnx_never_imports_torch(tiny_model, tmp_path):
    """What makes the ONNX backend start fast: predict and vectorize with torch, torchvision, smp unimported."""
    import os
    import subprocess
    import sys

    from geounet.models import onnx as onnxrt
    from geounet.models.hardware import may_have_cuda

    if may_have_cuda():
        pytest.skip("a GPU device exists here: device auto asks torch, and the GPU runs torch")
    onnxrt.load_onnx(tiny_model, 1)  # exporting needs torch: done here, into the session's cache
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from geounet.engine.predict import PredictSettings, predict_batch\n"
        f"[r] = predict_batch([Path({str(DEMO_SCENE)!r})], Path({str(tmp_path)!r}), Path({str(tiny_model)!r}), "
        "PredictSettings(quiet=True, precision='fp32'))\n"  # auto is bf16 on CPUs with native bf16 (torch)
        "assert r.ok, r.error\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'segmentation_models_pytorch', 'timm'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []
    run_json = json.loads((tmp_path / "kampala_demo/run.json").read_text())
    assert run_json["settings"]["backend"] == "onnx" and run_json["vector"]["layers"]


@pytest.mark.parametrize("vector", [False, True])
def test_a_local_run_never_imports_dask_distributed(tiny_model, tmp_path, vector):
    """Local chunks run on dask's threaded scheduler and vector tasks on a thread pool: no
    dask.distributed import, no cluster (its start-up, memory and event loop cost every command)."""
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from geounet.engine.predict import PredictSettings, predict_batch\n"
        f"[r] = predict_batch([Path({str(DEMO_SCENE)!r})], Path({str(tmp_path)!r}), Path({str(tiny_model)!r}), "
        f"PredictSettings(quiet=True, vector={vector}, workers=2))\n"
        "assert r.ok, r.error\n"
        "print(json.dumps(['dask' in sys.modules, 'distributed' in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [True, False]


def test_test_time_augmentation_averages_views_on_both_backends(default_model, tmp_path):
    """--tta: each tile's probabilities are the mean over its flips/turns, the same on ONNX Runtime and torch."""
    kw = dict(tile_size=128, overlap=32, vector=False, precision="fp32")
    [plain] = run([DEMO_SCENE], tmp_path / "plain", default_model, backend="onnx", **kw)
    [onnx] = run([DEMO_SCENE], tmp_path / "onnx", default_model, backend="onnx", tta="d4", **kw)
    [torch_] = run([DEMO_SCENE], tmp_path / "torch", default_model, backend="torch", tta="d4", **kw)
    assert plain.ok and onnx.ok and torch_.ok
    assert json.loads((tmp_path / "onnx/kampala_demo/run.json").read_text())["settings"]["tta"] == "d4"
    p = read(tmp_path / "plain/kampala_demo/scores.tif").astype(int)
    a = read(tmp_path / "onnx/kampala_demo/scores.tif").astype(int)
    b = read(tmp_path / "torch/kampala_demo/scores.tif").astype(int)
    assert np.abs(a - b).max() <= 1  # both backends average the same 8 views
    assert np.abs(a - p).mean() > 0.5  # and the views do change the answer
    with pytest.raises(GeounetError, match="--tta: must be one of none, flip, flips, d4"):
        run([DEMO_SCENE], tmp_path / "bad", default_model, tta="d8", **kw)


@pytest.mark.parametrize("vector", [False, True])
def test_the_model_is_freed_after_the_last_scene_s_chunks_and_before_vectors_on_its_cores(
    tiny_model, tmp_path, monkeypatch, vector
):
    """A batch drops its model once the last scene's chunks are done, and also after each scene's
    chunks when that scene's vectors then run on this process's cores (here: the 2-core CPU).

    Dropped before the COGs and vectors (their peak memory then holds no model); without
    vectors the model stays between scenes. A later chunk loads the model again, with the
    same result.
    """
    from geounet.engine import executors
    from geounet.models import registry

    released: list[int] = []
    real = registry.release_models

    def spy() -> int:
        n = real()
        released.append(n)
        return n

    monkeypatch.setattr(executors, "release_models", spy)
    scenes = [write_scene(tmp_path / f"s{i}.tif", np.full((3, 96, 96), 60 * i, np.uint8)) for i in (1, 2)]
    reports = run(scenes, tmp_path / "out", tiny_model, vector=vector, device="cpu")
    assert all(r.ok for r in reports)
    # without vectors, once after the second scene (the first scene's model stayed); with, after each
    assert released == ([1, 1] if vector else [1])
    assert not registry._CACHE
    [again] = run(scenes[:1], tmp_path / "again", tiny_model, vector=vector, device="cpu")
    assert again.ok and released[-1] == 1 and len(released) == (3 if vector else 2)
    np.testing.assert_array_equal(
        read(tmp_path / "out" / "s1" / "classes.tif"), read(tmp_path / "again" / "s1" / "classes.tif")
    )


def test_a_cluster_lost_outside_the_chunk_loop_is_one_line_naming_the_scene(monkeypatch, tmp_path):
    """Lost while loading or stitching (not inside the chunk loop): the same ClusterError as inside it."""
    from concurrent.futures import CancelledError

    import geounet.engine.predict as predict_module
    from geounet.engine.executors import ClusterError

    def lost(*args, **kwargs):
        raise CancelledError("scheduler gone")

    monkeypatch.setattr(predict_module, "predict_scene", lost)
    with pytest.raises(ClusterError, match=r"lost the Dask scheduler while predicting kampala_demo\.tif \(Cancel"):
        predict_batch([DEMO_SCENE], tmp_path / "out", "buildings", PredictSettings(quiet=True))


def test_vector_blocks_go_with_the_chunks_only_where_the_vector_stage_has_cores_of_its_own():
    """Unset, blocks are polygonized while predicting unless the model is on the CPU and the
    vector tasks share its threads; a given setting is kept."""
    from types import SimpleNamespace
    from unittest import mock

    from geounet.engine.executors import ThreadedExecutor, VectorPool
    from geounet.engine.predict import _vectors_while_predicting

    threads = ThreadedExecutor(1)
    processes = mock.Mock(spec=VectorPool)  # local worker processes (none started here)

    def plan(device: str, chosen: bool | None = None) -> SimpleNamespace:
        return SimpleNamespace(settings=PredictSettings(device=device, vector_while_predicting=chosen))

    assert not _vectors_while_predicting(plan("cpu"), threads)  # type: ignore[arg-type]
    assert _vectors_while_predicting(plan("cuda"), threads)  # type: ignore[arg-type]
    assert _vectors_while_predicting(plan("cpu"), processes)  # type: ignore[arg-type]
    assert _vectors_while_predicting(plan("cpu", True), threads)  # type: ignore[arg-type]
    assert not _vectors_while_predicting(plan("cuda", False), processes)  # type: ignore[arg-type]
