import json
import pickle

import numpy as np
import pytest
import torch

from geounet.errors import ModelError
from geounet.models.card import CARD_KEY, ModelCard, normalise, read_card
from geounet.models.network import load_model, save_model


def test_save_and_load_round_trip(tiny_model, tmp_path):
    net, card = load_model(tiny_model)
    assert card.name == "tiny-test" and card.class_names == ["background", "building"]
    x = torch.zeros(1, 3, 64, 64)
    with torch.inference_mode():
        assert net(x).shape == (1, 2, 64, 64)
    again = tmp_path / "again.safetensors"
    save_model(again, net, card)
    net2, card2 = load_model(again)
    assert card2 == card
    for (k, a), (_, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert torch.equal(a, b), k


def test_a_pickle_is_refused(tmp_path):
    bad = tmp_path / "weights.safetensors"
    with open(bad, "wb") as f:
        pickle.dump({"w": np.zeros(3)}, f)
    with pytest.raises(ModelError, match="not a valid geounet model") as info:
        read_card(bad)
    assert str(bad) in str(info.value)


def test_a_torch_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, bad)
    with pytest.raises(ModelError, match="not a safetensors file"):
        load_model(bad)


def test_safetensors_without_card_is_refused(tmp_path):
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(ModelError, match="no geounet card"):
        read_card(bare)


def test_card_with_unknown_key_or_bad_values_is_refused(tiny_model, tmp_path):
    card = read_card(tiny_model)
    raw = json.loads(card.to_json())
    raw["colour_map"] = "x"
    with pytest.raises(ModelError, match="unknown card keys"):
        ModelCard.from_json(json.dumps(raw))
    raw = json.loads(card.to_json())
    raw["std"] = [0.2, 0.0, 0.2]
    with pytest.raises(ModelError, match="std and scale must be positive"):
        ModelCard.from_json(json.dumps(raw))


def test_weights_that_do_not_fit_the_card_are_refused(tiny_model, tmp_path):
    from safetensors.torch import save_file

    card = read_card(tiny_model)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "m.safetensors"), metadata={CARD_KEY: card.to_json()})
    with pytest.raises(ModelError, match="weights do not match"):
        load_model(tmp_path / "m.safetensors")


def test_normalise_uses_scale_mean_and_std(tiny_model):
    card = read_card(tiny_model)
    x = normalise(np.full((3, 2, 2), 255, np.uint8), card)
    np.testing.assert_allclose(x, (1.0 - 0.45) / 0.25, rtol=1e-6)


def test_describe_lists_everything_a_user_needs(tiny_model):
    text = read_card(tiny_model).describe()
    for needle in ("Unet", "resnet18", "1=red", "uint8", "0.15 m/px", "building", "#e63c3c", "128 px"):
        assert needle in text
