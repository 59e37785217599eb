import numpy as np
import pytest
import torch

from geounet.engine.tiles import predict_array
from geounet.models.torch_backend import forward_probabilities


class Pointwise(torch.nn.Module):
    """A per-pixel model: tiling must not change its output at all."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize(
    "shape,tile,overlap", [((3, 300, 200), 64, 16), ((3, 50, 70), 128, 32), ((3, 129, 97), 96, 32)]
)
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


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_raw_tiles_normalised_on_the_device_equal_normalise_with_nodata_at_the_mean(tiny_model, dtype):
    from geounet.engine.tiles import raw_tiles
    from geounet.models.card import normalisation, normalise, read_card
    from geounet.models.torch_backend import normaliser

    card = read_card(tiny_model)
    pixels = (np.random.default_rng(0).random((3, 100, 120)) * 250).astype(dtype)
    valid = np.ones((100, 120), bool)
    valid[:7, 40:] = False
    windows = [(slice(0, 64), slice(0, 64)), (slice(30, 94), slice(50, 114))]
    raw, ok = raw_tiles(pixels, valid, windows)
    assert raw.dtype == dtype  # the DNs themselves travel
    batch = normaliser(*normalisation(card), "cpu")(torch.from_numpy(raw), torch.from_numpy(ok))
    assert batch.shape == (2, 3, 64, 64) and batch.is_contiguous(memory_format=torch.channels_last)
    ref = normalise(pixels, card)
    ref[:, ~valid] = 0.0
    np.testing.assert_allclose(batch.numpy(), np.stack([ref[:, r, c] for r, c in windows]), atol=1e-5)
    assert (batch[1, :, :0, :] == 0).all() and (batch[0, :, :7, 40:] == 0).all()
