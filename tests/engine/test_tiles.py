import numpy as np
import pytest
import torch

from geounet.engine.tiles import forward_probabilities, predict_array, resolve_precision


class Pointwise(torch.nn.Module):
    """A per-pixel model: tiling must not change its output at all."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("shape,tile,overlap", [((3, 300, 200), 64, 16), ((3, 50, 70), 128, 32), ((3, 129, 97), 96, 32)])
def test_tiled_prediction_of_a_pointwise_model_equals_the_whole_image(shape, tile, overlap):
    net = Pointwise().eval()
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    whole = forward_probabilities(net, x[None], "cpu", "fp32")[0]
    tiled = predict_array(net, x, tile, overlap)
    assert tiled.shape == whole.shape
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_invalid_tiles_are_skipped():
    net = Pointwise().eval()
    x = np.zeros((3, 200, 200), np.float32)
    valid = np.zeros((200, 200), bool)
    valid[:50, :50] = True
    probs = predict_array(net, x, 64, 16, valid=valid)
    assert probs[:, :50, :50].sum(0) == pytest.approx(1.0, abs=1e-5)
    assert probs[:, 150:, 150:].max() == 0.0


def test_auto_precision_is_fp32_on_cpus_without_native_bf16(monkeypatch):
    import geounet.engine.tiles as infer

    monkeypatch.setattr(infer, "cpu_flags", lambda: {"avx2", "fma"})
    assert resolve_precision("cpu") == "fp32"
    monkeypatch.setattr(infer, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert resolve_precision("cpu") == "bf16"
    monkeypatch.setattr(infer, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert resolve_precision("cpu") == "bf16"
    assert resolve_precision("cpu", "fp32") == "fp32"
    monkeypatch.setattr(infer, "cpu_flags", set)  # no /proc/cpuinfo: torch's answer
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert resolve_precision("cpu") == "fp32"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_BF16")
    assert resolve_precision("cpu") == "bf16"


def test_cpu_flags_agree_with_torch_on_this_machine():
    from geounet.engine.tiles import cpu_flags

    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo on this system")
    cap = torch.backends.cpu.get_cpu_capability().upper()
    if cap.startswith("AVX2"):
        assert "avx2" in flags
    if cap.startswith("AVX512"):
        assert "avx512f" in flags


def test_auto_device_is_the_cpu_without_importing_torch_when_no_gpu_device_exists(monkeypatch):
    import geounet.engine.tiles as infer

    monkeypatch.setattr(infer, "_may_have_cuda", lambda: False)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # any torch import would now fail
    assert infer.resolve_device("auto") == "cpu"
    assert infer.resolve_device("cpu") == "cpu"


def test_batches_are_computed_in_order_and_pulled_lazily():
    from geounet.engine.tiles import iter_probabilities

    net = Pointwise().eval()
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(2, 3, 16, 16)).astype(np.float32) for _ in range(3)]
    pulled = []

    def source():
        for i, b in enumerate(batches):
            pulled.append(i)
            yield b

    out = iter_probabilities(net, source(), "cpu", "fp32")
    first = next(out)
    assert pulled == [0]  # on the CPU nothing is read ahead: memory stays one batch
    rest = list(out)
    for b, p in zip(batches, [first] + rest):
        np.testing.assert_allclose(p, forward_probabilities(net, b, "cpu", "fp32"), atol=1e-6)
        assert p.shape == (2, 4, 16, 16)


def test_fuse_batchnorm_keeps_outputs_and_module_tree(tiny_model):
    """Folded norms give the same logits (float rounding) and the encoder stays callable."""
    from geounet.engine.tiles import fuse_batchnorm
    from geounet.models.card import load_model

    net, _ = load_model(tiny_model)
    torch.manual_seed(1)
    for m in net.modules():  # non-trivial running statistics, so folding is really tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        logits, feats = net(x), net.encoder(x)
    n_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    folded = fuse_batchnorm(net)
    assert 0 < folded < n_norms  # the tiny model's unused deeper encoder stages keep theirs
    with torch.inference_mode():
        torch.testing.assert_close(net(x), logits, atol=1e-4, rtol=1e-4)
        for a, b in zip(net.encoder(x), feats):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == n_norms - folded
    net.train()
    with pytest.raises(ValueError):
        fuse_batchnorm(net)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_input_batch_equals_normalise_with_nodata_at_the_mean(tiny_model, dtype):
    from geounet.engine.tiles import input_batch
    from geounet.models.card import normalise, read_card

    card = read_card(tiny_model)
    pixels = (np.random.default_rng(0).random((3, 100, 120)) * 250).astype(dtype)
    valid = np.ones((100, 120), bool)
    valid[:7, 40:] = False
    windows = [(slice(0, 64), slice(0, 64)), (slice(30, 94), slice(50, 114))]
    batch = input_batch(pixels, valid, windows, card)
    assert batch.shape == (2, 3, 64, 64) and batch.is_contiguous(memory_format=torch.channels_last)
    ref = normalise(pixels, card)
    ref[:, ~valid] = 0.0
    np.testing.assert_allclose(batch.numpy(), np.stack([ref[:, r, c] for r, c in windows]), atol=1e-5)
    assert (batch[1, :, :0, :] == 0).all() and (batch[0, :, :7, 40:] == 0).all()


def test_default_workers_and_batch_size_per_backend(monkeypatch):
    from geounet.engine import tiles as infer
    from geounet.engine.predict import PredictSettings

    for cores, expected in ((1, 1), (2, 2), (3, 3), (16, infer.MAX_AUTO_WORKERS)):
        monkeypatch.setattr(infer.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert infer.default_workers("cpu", "onnx") == expected
        assert infer.default_workers("cpu", "torch") == 1
        assert infer.default_workers("cuda:0", "torch") == 1

        class Worker:  # a Dask worker running ``expected`` task threads
            class state:
                nthreads = expected

        assert infer.threads_per_task(Worker) == max(1, cores // expected)  # the cores shared, none oversubscribed
    card = type("Card", (), {"tile_size": 512, "overlap": 64})()
    monkeypatch.setattr(infer.os, "sched_getaffinity", lambda pid: {0, 1})
    assert PredictSettings(device="cpu", backend="torch").resolved(card).workers == 1
    assert PredictSettings(device="cpu", backend="torch", workers=3).resolved(card).workers == 3
    torch_cpu = PredictSettings(device="cpu", backend="torch").resolved(card)
    assert (torch_cpu.batch_size, torch_cpu.chunk_pixels) == (4, 2048)
    if infer.resolve_backend("cpu", "fp32") == "onnx":
        auto = PredictSettings(device="cpu", precision="fp32").resolved(card)
        assert (auto.workers, auto.batch_size, auto.chunk_pixels) == (2, 1, 512 - 64)  # one tile per task
        assert PredictSettings(device="cpu", precision="fp32", batch_size=8).resolved(card).batch_size == 8
