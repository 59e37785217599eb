"""settings: tiling from the card, machine defaults, cluster agreement, post-processing overrides."""

from __future__ import annotations

import pytest

import geounet.models.hardware as hardware
from geounet.engine.settings import PredictSettings
from geounet.errors import GeounetError


def test_postprocess_overrides_replace_only_the_given_fields():
    from geounet.compute.postprocess import DEFAULT_RULES
    from geounet.engine.settings import rules_with_overrides

    rules = rules_with_overrides({"building": {"split_m": 3.0, "min_area_m2": 10}})
    assert rules["building"].split_m == 3.0 and rules["building"].min_area_m2 == 10
    assert rules["building"].regularize is DEFAULT_RULES["building"].regularize
    assert rules["road"] == DEFAULT_RULES["road"]
    with pytest.raises(GeounetError, match="unknown class kind 'roof'"):
        rules_with_overrides({"roof": {}})
    with pytest.raises(GeounetError, match="postprocess.building"):
        rules_with_overrides({"building": {"min_area": 1}})


def _card():
    """What settling the tiling reads of a model card."""
    return type("Card", (), {"tile_size": 512, "overlap": 64, "class_names": ["background"], "decision_weights": {}})()


def test_workers_that_settle_differently_or_fail_are_named():
    from geounet.engine.settings import agree_on_settings

    card = _card()
    gpu = {"device": "cuda", "precision": "bf16", "backend": "torch", "batch_size": 4, "chunk_pixels": 2048}
    cpu = {"device": "cpu", "precision": "fp32", "backend": "onnx", "batch_size": 1, "chunk_pixels": 448}
    s = PredictSettings(scheduler="tcp://h:8786")
    agreed = agree_on_settings(s, {"tcp://a:1": gpu, "tcp://b:1": dict(gpu)}, card)
    assert (agreed.device, agreed.precision, agreed.backend, agreed.batch_size, agreed.chunk_pixels) == (
        "cuda",
        "bf16",
        "torch",
        4,
        2048,
    )
    with pytest.raises(GeounetError, match=r"workers settle .*tcp://a:1: cuda/bf16/torch; tcp://b:1: cpu/fp32/onnx"):
        agree_on_settings(s, {"tcp://a:1": gpu, "tcp://b:1": cpu}, card)
    with pytest.raises(GeounetError, match=r"^Dask worker tcp://b:1: --device cuda asked for"):
        agree_on_settings(
            s, {"tcp://a:1": gpu, "tcp://b:1": "--device cuda asked for, but torch sees no CUDA GPU"}, card
        )


def test_default_workers_and_batch_size_per_backend(monkeypatch):
    from geounet.engine.settings import PredictSettings

    for cores, expected in ((1, 1), (2, 2), (3, 3), (16, hardware.MAX_AUTO_WORKERS)):
        monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert hardware.default_workers("cpu", "onnx") == expected
        assert hardware.default_workers("cpu", "torch") == 1
        assert hardware.default_workers("cuda:0", "torch") == expected  # a GPU: the CPU stages on as many cores

        class Worker:  # a Dask worker running ``expected`` task threads
            class state:
                nthreads = expected

        assert hardware.threads_per_task(Worker) == max(1, cores // expected)  # the cores shared, none oversubscribed
    card = _card()
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1})
    assert PredictSettings(device="cpu", backend="torch").resolved(card).workers == 1
    assert PredictSettings(device="cpu", backend="torch", workers=3).resolved(card).workers == 3
    torch_cpu = PredictSettings(device="cpu", backend="torch").resolved(card)
    assert (torch_cpu.batch_size, torch_cpu.chunk_pixels) == (4, 2048)
    if hardware.resolve_backend("cpu", "fp32") == "onnx":
        auto = PredictSettings(device="cpu", precision="fp32").resolved(card)
        assert (auto.workers, auto.batch_size, auto.chunk_pixels) == (2, 1, 512 - 64)  # one tile per task
        assert PredictSettings(device="cpu", precision="fp32", batch_size=8).resolved(card).batch_size == 8


def test_every_bad_setting_is_named_at_once_as_the_user_wrote_it():
    card = _card()
    bad = PredictSettings(
        tile_size=100, batch_size=0, precision="int4", backend="tensorrt", tta="d8", device="tpu", vector_format="shp"
    )
    with pytest.raises(GeounetError) as err:
        bad.tiling_resolved(card)
    assert str(err.value).split("; ") == [
        "--tile-size: must be a multiple of 32 (the U-Net's stride), got 100",
        "--batch-size: must be at least 1, got 0",
        "--precision: must be one of auto, fp32, bf16, fp16, int8, got 'int4'",
        "--backend: must be one of auto, torch, onnx, got 'tensorrt'",
        "--tta: must be one of none, flip, flips, d4, got 'd8'",
        "--vector-format: must be one of gpkg, fgb, parquet, got 'shp'",
        "--device: must be auto, cpu, cuda or cuda:N, got 'tpu'",
    ]
    assert bad.tiling_problems(card, {"tile_size": "tiling.tile_size"})[0].startswith("tiling.tile_size: ")
    ok = PredictSettings(overlap=0).tiling_resolved(card)
    assert (ok.tile_size, ok.overlap) == (512, 0)
