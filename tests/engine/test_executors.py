"""geounet on a real dask.distributed cluster: a ``dask scheduler`` and ``dask worker``
processes on 127.0.0.1, started here (bounded in time, killed by process group).

Faults: a worker SIGKILLed mid-scene (outputs identical to a clean run) and the
scheduler killed mid-run (one-line error, non-zero exit, no output folder left).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geounet.engine import executors, predict, stitch
from geounet.engine import settings as engine_settings
from geounet.engine.executors import ClusterError
from geounet.engine.predict import make_executor, predict_scene
from geounet.engine.settings import PredictSettings
from tests.helpers import DEMO_SCENE, write_scene

BIN = Path(sys.executable).parent
START_TIMEOUT = 90.0  # workers import torch: several seconds each on a busy 2-core machine


class LoopbackCluster:
    """A scheduler and N single-threaded workers, each in its own process group."""

    def __init__(self, tmp: Path, n_workers: int = 2) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.file = tmp / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.scheduler = self._spawn(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(self.file),
            ],
            env,
            "scheduler",
        )
        self.workers = [
            self._spawn(
                [
                    str(BIN / "dask"),
                    "worker",
                    "--scheduler-file",
                    str(self.file),
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--no-dashboard",
                    "--death-timeout",
                    "60",
                    "--local-directory",
                    str(tmp / f"w{i}"),
                ],
                env,
                f"worker{i}",
            )
            for i in range(n_workers)
        ]
        try:
            self.address = self._wait_for_workers(n_workers)
        except BaseException:
            self.close()
            raise

    def _spawn(self, cmd: list[str], env: dict, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def _wait_for_workers(self, n: int) -> str:
        from distributed import Client

        deadline = time.monotonic() + START_TIMEOUT
        while not self.file.exists():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler did not start: {(self.tmp / 'scheduler.log').read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written in one go, but give it a moment
        address = json.loads(self.file.read_text())["address"]
        with Client(address, timeout="20s") as c:
            c.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
        return address

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a process and everything it started (its nanny's worker process)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def close(self) -> None:
        for p in reversed(self.procs):
            self.kill(p)


_LIVE: list[LoopbackCluster] = []


def _live_cluster(factory, min_workers: int) -> LoopbackCluster:
    """One cluster for the module (start-up costs seconds); a new one once a test broke it."""
    if _LIVE and (
        _LIVE[0].scheduler.poll() is not None or sum(p.poll() is None for p in _LIVE[0].workers) < min_workers
    ):
        _LIVE.pop().close()
    if not _LIVE:
        _LIVE.append(LoopbackCluster(factory.mktemp("cluster")))
    return _LIVE[0]


@pytest.fixture
def cluster(tmp_path_factory):
    return _live_cluster(tmp_path_factory, 2)


@pytest.fixture
def cluster_any(tmp_path_factory):
    """A cluster with at least one worker left (the scheduler test kills the scheduler)."""
    return _live_cluster(tmp_path_factory, 1)


@pytest.fixture(scope="module", autouse=True)
def _stop_clusters():
    yield
    while _LIVE:
        _LIVE.pop().close()


def _scene(path: Path, size: int) -> Path:
    rng = np.random.default_rng(5)
    return write_scene(path, rng.integers(0, 255, (3, size, size), dtype=np.uint8), res=0.15)


def _read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(folder / "scores.tif") as s, rasterio.open(folder / "classes.tif") as c:
        return s.read(), c.read()


def test_workers_settle_auto_settings_for_themselves(cluster, tiny_model, tmp_path, monkeypatch):
    """`auto` device/precision/backend are settled by the workers, not the client (a client without a GPU
    must send GPU work to GPU workers): here the client's own view is made to differ from the workers'."""
    monkeypatch.setattr(engine_settings, "resolve_backend", lambda device, precision, backend="auto": "torch")
    scene = _scene(tmp_path / "scene.tif", 480)
    settings = PredictSettings(
        precision="fp32", scheduler=cluster.address, vector=False, quiet=True
    )  # auto: bf16 where the CPU has it
    client = make_executor(settings)
    try:
        rep = predict_scene(scene, tmp_path / "out", tiny_model, settings, client)
    finally:
        client.close()
    assert rep.ok, rep.error
    run = json.loads((tmp_path / "out" / "scene" / "run.json").read_text())["settings"]
    # the CPU workers' view (ONNX Runtime, one tile per call and per task), not the client's (torch, 4, 2048)
    assert (run["device"], run["backend"], run["batch_size"]) == ("cpu", "onnx", 1), run
    assert run["chunk_pixels"] == run["tile_size"] - run["overlap"]


def _features(folder: Path) -> list[tuple[float, float]]:
    import geopandas as gpd

    gdf = gpd.read_file(folder / "features.gpkg", layer="buildings")
    return sorted(zip(gdf.area_m2.round(3), gdf.geometry.centroid.x.round(2)))


@pytest.mark.parametrize("res", [0.15, 0.3], ids=["scene-grid", "resampled"])
def test_workers_write_only_the_blocks_an_area_of_interest_reaches(cluster, tiny_model, tmp_path, res):
    """With --bbox, chunks outside the area never run and blocks they alone reach are never written:
    the cluster run's rasters equal a local run's (nodata outside the area)."""
    scene = _scene(tmp_path / "scene.tif", 480)
    with rasterio.open(scene) as src:
        b = src.bounds
    w, h = b.right - b.left, b.top - b.bottom
    box = (b.left + 0.1 * w, b.bottom + 0.55 * h, b.left + 0.4 * w, b.bottom + 0.9 * h)  # a corner's worth
    base = dict(chunk_pixels=96, vector_block=128, quiet=True, precision="fp32", bbox=box, bbox_crs="EPSG:32633")
    scene = write_scene(tmp_path / "scene.tif", _read_scene(scene), res=res)
    local = predict_scene(
        scene, tmp_path / "local", tiny_model, PredictSettings(**base), make_executor(PredictSettings())
    )
    settings = PredictSettings(**base, scheduler=cluster.address)
    executor = make_executor(settings)
    try:
        remote = predict_scene(scene, tmp_path / "remote", tiny_model, settings, executor)
    finally:
        executor.close()
    assert local.ok and remote.ok, (local.error, remote.error)
    assert remote.tiles == local.tiles and local.tiles["skipped_aoi"] > 0
    for a, b2 in zip(_read(Path(local.out_dir)), _read(Path(remote.out_dir))):
        np.testing.assert_array_equal(a, b2)
    classes = _read(Path(remote.out_dir))[1]
    assert 0 < (classes != 255).mean() < 0.3


def _read_scene(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.mark.parametrize("res", [0.15, 0.3], ids=["scene-grid", "resampled"])
def test_workers_write_the_blocks_and_outputs_equal_a_local_run(cluster, default_model, tmp_path, res):
    """A cluster run's workers blend and write whole blocks (the client receives no chunk): the same
    scores, classes and features as a local run, on the scene's grid and through stage 2 when resampled;
    nodata and a masked corner included."""
    with rasterio.open(DEMO_SCENE) as src:  # real roofs: many features to compare
        data = src.read(window=rasterio.windows.Window(0, 0, 480, 480))
    data[:, :100, :150] = 0  # nodata corner
    scene = write_scene(tmp_path / "scene.tif", data, res=res, nodata=0)
    base = dict(chunk_pixels=448, vector_block=128, quiet=True, precision="fp32")
    local = predict_scene(
        scene, tmp_path / "local", default_model, PredictSettings(**base), make_executor(PredictSettings())
    )
    settings = PredictSettings(**base, scheduler=cluster.address)
    executor = make_executor(settings)
    received: list[int] = []
    add = stitch.Stitcher.add
    try:
        stitch.Stitcher.add = lambda self, result: (received.append(1), add(self, result))  # type: ignore[assignment]
        remote = predict_scene(scene, tmp_path / "remote", default_model, settings, executor)
    finally:
        stitch.Stitcher.add = add  # type: ignore[method-assign]
        executor.close()
    assert local.ok and remote.ok, (local.error, remote.error)
    assert received == [], "no chunk result reached the client"
    assert remote.tiles == local.tiles
    for a, b in zip(_read(Path(local.out_dir)), _read(Path(remote.out_dir))):
        np.testing.assert_array_equal(a, b)
    classes = _read(Path(remote.out_dir))[1]
    assert {0, 1, 255} <= set(np.unique(classes)), "both classes and nodata are compared"
    features = _features(Path(local.out_dir))
    assert len(features) > 5 and features == _features(Path(remote.out_dir))
    assert not (Path(remote.out_dir) / "blocks").exists()
    run = json.loads((Path(remote.out_dir) / "run.json").read_text())
    assert run["settings"]["stitch_on"] == "workers" and run["timings"]["cog_s"] > 0
    # on the scene's grid the block tasks polygonize too; a resampled scene's blocks are on the working grid
    assert (run["vector"]["blocks_while_predicting"] > 0) == (res == 0.15)


@pytest.mark.parametrize("stitch_on", ["workers", "client"])
def test_worker_killed_mid_scene_outputs_identical_to_a_clean_run(
    cluster, tiny_model, tmp_path, monkeypatch, stitch_on
):
    scene = _scene(tmp_path / "scene.tif", 480)  # tiny model: 96-px cells, 5x5 tiles, 2x2 a chunk -> 9 chunks
    settings = PredictSettings(
        chunk_pixels=192, vector_block=160, scheduler=cluster.address, vector=False, quiet=True, stitch_on=stitch_on
    )
    executor = make_executor(settings)
    client = executor.client
    try:
        pids = executor.run_on_workers(os.getpid)  # worker address -> pid of the worker process
        clean = predict_scene(scene, tmp_path / "clean", tiny_model, settings, executor)
        assert clean.ok and clean.tiles["run"] == 25 and clean.tiles["chunks"] == 9

        killed = []

        class KillingBar:
            """The progress bar: the first chunk's tiles are in, so kill a worker that is busy with another."""

            def update(self, n: int) -> None:
                if n and not killed:
                    busy = [w for w, keys in client.processing().items() if keys] or list(pids)
                    victim = next(p for p in cluster.workers if p.pid == os.getpgid(pids[busy[0]]))
                    cluster.kill(victim)
                    killed.append(busy[0])

        @contextmanager
        def killing_bar(*args, **kwargs):
            yield KillingBar()

        monkeypatch.setattr(predict, "progress_bar", killing_bar)
        monkeypatch.setattr(stitch, "progress_bar", killing_bar)
        faulty = predict_scene(scene, tmp_path / "faulty", tiny_model, settings, executor)
    finally:
        executor.close()
    assert killed and faulty.ok and faulty.tiles == clean.tiles
    for a, b in zip(_read(Path(clean.out_dir)), _read(Path(faulty.out_dir))):
        np.testing.assert_array_equal(a, b)


def test_scheduler_killed_mid_run_fails_cleanly(cluster_any, tiny_model, tmp_path):
    cluster = cluster_any
    scene = _scene(tmp_path / "big.tif", 1536)  # 256 tiles: long enough to be caught mid-run
    out = tmp_path / "out"
    cmd = [
        str(BIN / "geounet"),
        "predict",
        str(scene),
        "--out",
        str(out),
        "--model",
        str(tiny_model),
        "--scheduler",
        cluster.address,
        "--no-vector",
        "--batch-size",
        "2",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".big.partial-*")):  # the run has started writing
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "geounet predict did not start in 60 s"
            time.sleep(0.1)
        time.sleep(1.0)
        cluster.kill(cluster.scheduler)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode not in (0, None)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert cluster.address in lines[0] and "scheduler" in lines[0] and "big.tif" in lines[0], lines[0]
    assert [p.name for p in out.iterdir()] == [".big.lock"], "no output folder, no partial folder (the lock stays)"
    assert "geounet: Dask dashboard: http://127.0.0.1:" in err  # the link of a distributed run, one line


def test_unreachable_scheduler_is_one_line_error(monkeypatch):
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ClusterError, match=r"^tcp://127\.0\.0\.1:9: cannot connect to the Dask scheduler"):
        make_executor(PredictSettings(scheduler="tcp://127.0.0.1:9"))


def test_vector_stage_uses_processes_only_with_cores_to_spare(monkeypatch):
    """Local runs: vector worker processes for scenes of 4+ blocks on 4+ cores; otherwise this process's
    threads (the model keeps fewer cores busy while the blocks come); True/False decide."""
    started = []
    monkeypatch.setattr(executors, "VectorPool", lambda n, fallback: started.append(n) or "pool")
    local = executors.ThreadedExecutor(1)
    for cores, n_blocks, processes, expected in [
        (2, 16, None, "threads"),
        (4, 16, None, "pool"),
        (8, 3, None, "threads"),
        (2, 16, True, "pool"),
        (8, 16, False, "threads"),
    ]:
        monkeypatch.setattr(executors, "cpu_cores", lambda c=cores: c)
        local._pools.clear()
        got = local.vector_executor(n_blocks, processes)
        assert ("pool" if got == "pool" else "threads") == expected, (cores, n_blocks, processes)
    assert started == [4, 2]


def test_local_futures_run_on_a_thread_pool_bounded_in_order_and_retried_only_after_io_errors():
    """ThreadedExecutor's futures: imap_unordered keeps at most ``in_flight`` running, map keeps
    order, an OSError is retried ``retries`` times, any other error is raised at once."""
    import threading

    local = executors.ThreadedExecutor(2)
    running, most, lock = [0], [0], threading.Lock()

    def slow(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i * i

    calls: dict[str, int] = {"io": 0, "bad": 0}

    def flaky(kind: str, fail_times: int) -> str:
        calls[kind] += 1
        if calls[kind] <= fail_times:
            raise OSError("transient") if kind == "io" else ValueError("wrong input")
        return kind

    try:
        assert sorted(local.imap_unordered(slow, range(12), in_flight=1)) == [i * i for i in range(12)]
        assert most[0] == 1, "in_flight=1 ran tasks at once"
        assert local.map(slow, list(range(6))) == [0, 1, 4, 9, 16, 25]
        assert local.result(local.submit(flaky, "io", 2, retries=2)) == "io" and calls["io"] == 3
        with pytest.raises(ValueError, match="wrong input"):
            local.map(flaky, ["bad"], 1, retries=2)
        assert calls["bad"] == 1
        assert "distributed" not in local.description
    finally:
        local.close()


def test_decision_weights_reach_the_cluster_workers_blocks(cluster, default_model, tmp_path):
    """The workers pick each pixel's class with the run's decision weights, as a local run does."""
    with rasterio.open(DEMO_SCENE) as src:
        data = src.read(window=rasterio.windows.Window(0, 0, 320, 320))
    scene = write_scene(tmp_path / "scene.tif", data)
    base = dict(chunk_pixels=448, vector_block=128, quiet=True, precision="fp32", vector=False)
    weights = {"building": 3.0, "contact": 0.5}
    plain = predict_scene(
        scene, tmp_path / "plain", default_model, PredictSettings(**base), make_executor(PredictSettings())
    )
    local = predict_scene(
        scene,
        tmp_path / "local",
        default_model,
        PredictSettings(**base, decision_weights=weights),
        make_executor(PredictSettings()),
    )
    settings = PredictSettings(**base, decision_weights=weights, scheduler=cluster.address)
    executor = make_executor(settings)
    try:
        remote = predict_scene(scene, tmp_path / "remote", default_model, settings, executor)
    finally:
        executor.close()
    assert plain.ok and local.ok and remote.ok, (plain.error, local.error, remote.error)
    (plain_scores, plain_classes), (scores, classes) = _read(Path(plain.out_dir)), _read(Path(local.out_dir))
    np.testing.assert_array_equal(scores, plain_scores)
    assert (classes == 1).sum() > (plain_classes == 1).sum()
    for a, b in zip(_read(Path(local.out_dir)), _read(Path(remote.out_dir))):
        np.testing.assert_array_equal(a, b)
