"""torch backend: probabilities per batch, in order, pulled lazily."""

from __future__ import annotations

import numpy as np
import torch

from geounet.models.torch_backend import forward_probabilities, iter_probabilities


class Pointwise(torch.nn.Module):
    """A per-pixel network (1x1 convolution, fixed seed)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_batches_are_computed_in_order_and_pulled_lazily():

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


class Overflowing(torch.nn.Module):
    """Logits far beyond fp16's range (65504): fp16 autocast turns them into inf, the softmax into NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1000.0)
            self.conv.weight[1] *= -1
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_a_batch_that_overflows_autocast_is_computed_again_in_fp32():
    from geounet.models.torch_backend import _forward_tensor

    net = Overflowing().eval()
    batches = [np.full((1, 3, 8, 8), v, np.float32) for v in (0.001, 10.0)]  # the second overflows in fp16
    assert not bool(_forward_tensor(net, torch.as_tensor(batches[1]), "cpu", "fp16").isfinite().all())
    got = list(iter_probabilities(net, iter(batches), "cpu", "fp16"))
    assert all(np.isfinite(p).all() for p in got)
    np.testing.assert_array_equal(got[1], forward_probabilities(net, batches[1], "cpu", "fp32"))
    np.testing.assert_allclose(got[0], forward_probabilities(net, batches[0], "cpu", "fp32"), atol=1e-2)


def test_raw_batches_prepared_on_the_device_give_the_probabilities_of_normalised_ones():
    """With ``prepare`` a batch travels as host arrays (raw uint8 DNs and a mask, as a GPU receives them) and is
    normalised and expanded where it is computed: the same probabilities as the host-normalised batch, and an
    overflow is still computed again in fp32 from the prepared input. (The CUDA branch's copies: benchmarks/gpu.py.)"""
    from geounet.compute.tta import TTA_SETS, expand, reduce
    from geounet.engine.tiles import raw_tiles
    from geounet.models.torch_backend import normaliser

    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (3, 40, 48)).astype(np.uint8)
    valid = np.ones((40, 48), bool)
    valid[:5, 30:] = False
    windows = [(slice(0, 32), slice(0, 32)), (slice(8, 40), slice(16, 48))]
    gain, offset = np.full(3, 1 / 127.5, np.float32), np.ones(3, np.float32)
    flips = TTA_SETS["flips"]
    normalised = normaliser(gain, offset, "cpu")

    def prepare(raw, ok):
        assert raw.dtype == torch.uint8 and ok.dtype == torch.bool  # the DNs themselves travel
        return expand(normalised(raw, ok), flips)

    host = (
        np.stack([pixels[:, r, c] for r, c in windows]).astype(np.float32) * gain[:, None, None] - offset[:, None, None]
    )
    host *= np.stack([valid[r, c] for r, c in windows])[:, None]
    net = Pointwise().eval()
    want = reduce(forward_probabilities(net, expand(host, flips), "cpu", "fp32"), flips)
    [got] = list(iter_probabilities(net, iter([raw_tiles(pixels, valid, windows)]), "cpu", "fp32", prepare))
    np.testing.assert_allclose(reduce(got, flips), want, atol=1e-6)
    [redone] = list(
        iter_probabilities(Overflowing().eval(), iter([raw_tiles(pixels, valid, windows)]), "cpu", "fp16", prepare)
    )
    assert np.isfinite(redone).all() and redone.shape == (8, 2, 32, 32)
