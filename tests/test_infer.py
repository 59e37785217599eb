import numpy as np
import pytest
import torch

from geounet.infer import forward_probabilities, predict_array, resolve_precision


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
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert resolve_precision("cpu") == "fp32"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_BF16")
    assert resolve_precision("cpu") == "bf16"
    assert resolve_precision("cpu", "fp32") == "fp32"


def test_batches_are_computed_in_order_and_pulled_lazily():
    from geounet.infer import iter_probabilities

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
