import json
import pickle
import re

import numpy as np
import pytest
import torch

from geounet.errors import ModelError
from geounet.models.card import CARD_KEY, ModelCard, normalise, read_card
from geounet.models.network import load_model, save_model
from tests.helpers import REPO


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
    assert "decision_weights" not in json.loads(card.to_json())  # older readers refuse unknown keys
    weighted = ModelCard.from_json(card.to_json())
    weighted.decision_weights = {"building": 2.0}
    assert ModelCard.from_json(weighted.to_json()).decision_weights == {"building": 2.0}
    for weights, message in (
        ({"roof": 2.0}, "decision_weights: unknown class 'roof' (classes: background, building)"),
        ({"building": 0}, "decision_weights: the weight of 'building' must be a positive number"),
        ({"building": "high"}, "decision_weights: the weight of 'building' must be a positive number"),
        ([2.0], "decision_weights must map class names to weights"),
    ):
        raw = json.loads(card.to_json())
        raw["decision_weights"] = weights
        with pytest.raises(ModelError, match=re.escape(message)):
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
    card = read_card(tiny_model)
    text = card.describe()
    for needle in ("Unet", "resnet18", "1=red", "uint8", "0.15 m/px", "building", "#e63c3c", "128 px"):
        assert needle in text
    assert "decision weight" not in text
    card.decision_weights = {"building": 3.0}
    [line] = [x for x in card.describe().splitlines() if "decision weight" in x]
    assert "building" in line and line.endswith("decision weight 3")


def _with_card(src, dst, **changes):
    """``src``'s tensors saved to ``dst`` under its card with ``changes`` (a card that may not fit them)."""
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    card = replace(read_card(src), **changes)
    save_file(load_file(str(src)), str(dst), metadata={CARD_KEY: card.to_json()})
    return dst


def _raw_safetensors(path, header: bytes, data: bytes) -> None:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def test_a_truncated_safetensors_file_is_not_called_a_pickle(tiny_model, tmp_path):
    card = read_card(tiny_model).to_json()
    header = json.dumps(
        {"__metadata__": {CARD_KEY: card}, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    )
    header = header.encode().ljust(((len(header) // 256) + 1) * 256 + 0x80)  # length's first byte 0x80, as pickles
    cut = tmp_path / "cut.safetensors"
    _raw_safetensors(cut, header, bytes(10))
    assert cut.read_bytes()[:1] == b"\x80"
    with pytest.raises(ModelError) as info:
        read_card(cut)
    size, full = 8 + len(header) + 10, 8 + len(header) + 16
    assert info.value.problem.startswith(f"truncated safetensors file: {size} bytes, the header says {full}")
    cut.write_bytes(cut.read_bytes()[:100])  # the header itself cut off
    with pytest.raises(
        ModelError, match=f"truncated safetensors file: 100 bytes, the header says at least {8 + len(header)}"
    ):
        read_card(cut)
    _raw_safetensors(cut, b"{not json" + b" " * 0x77, b"")
    with pytest.raises(ModelError, match="header is not JSON"):
        read_card(cut)


def test_a_card_whose_bands_or_classes_do_not_fit_the_weights_is_refused_at_read_time(tiny_model, tmp_path):
    four = _with_card(
        tiny_model,
        tmp_path / "four.safetensors",
        bands=[1, 2, 3, 4],
        band_names=list("rgbn"),
        mean=[0.5] * 4,
        std=[0.2] * 4,
    )
    with pytest.raises(ModelError) as info:
        read_card(four)
    assert (
        "encoder.conv1.weight [64, 3, 7, 7] takes 3" in info.value.problem
        and "bands [1, 2, 3, 4]" in info.value.problem
    )
    card = read_card(tiny_model)
    three = _with_card(tiny_model, tmp_path / "three.safetensors", classes=card.classes + card.classes[1:])
    with pytest.raises(ModelError) as info:
        read_card(three)
    assert "segmentation_head.0.weight [2, 8, 3, 3] gives 2" in info.value.problem and "are 3" in info.value.problem


def test_weights_of_another_network_are_refused_naming_the_first_tensor(tiny_model, tmp_path):
    other = _with_card(tiny_model, tmp_path / "other.safetensors", decoder_channels=[64, 16, 8])
    with pytest.raises(ModelError) as info:
        load_model(other)
    assert "tensor decoder.blocks.0.conv1.0.weight is [32, " in info.value.problem
    assert "the network needs [64, " in info.value.problem and "\n" not in str(info.value)


@pytest.mark.parametrize("path", sorted((REPO / "data" / "models").glob("*.safetensors")), ids=lambda p: p.stem)
def test_every_bundled_model_card_fits_its_weights(path):
    from geounet.models.card import read_header, stem_tensor

    card = read_card(path)
    shapes = read_header(path).shapes
    stem = stem_tensor(shapes)
    assert stem is not None and shapes[stem][1] == len(card.bands)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("architecture", "UNet", "architecture: expected one of Unet, UnetPlusPlus, FPN, "),
        ("encoder", "resnet-18", "encoder: expected one of resnet18, resnet34, "),
        ("kind", "house", "class 'building' has unknown kind 'house' (one of background, building, road, landcover)"),
    ],
)
def test_a_card_naming_an_unknown_choice_is_refused_listing_the_valid_ones(tiny_model, field, value, expected):
    raw = json.loads(read_card(tiny_model).to_json())
    (raw["classes"][1] if field == "kind" else raw)[field] = value
    with pytest.raises(ModelError) as info:
        ModelCard.from_json(json.dumps(raw))
    assert expected in info.value.problem and repr(value) in info.value.problem


def test_the_card_choices_are_what_smp_builds():
    from geounet._torchvision_compat import ensure_torchvision
    from geounet.models.card import ARCHITECTURES, ENCODERS

    ensure_torchvision()  # before smp imports torchvision, as geounet does
    import segmentation_models_pytorch as smp

    assert sorted(ENCODERS) == sorted(smp.encoders.get_encoder_names())
    assert set(ARCHITECTURES) <= {name for name in dir(smp) if isinstance(getattr(smp, name), type)}


def test_the_contact_class_is_found_by_the_training_record_or_by_its_name():
    """A card's contact class: ``training.contact_class`` (geounet train writes it), else a background class
    named ``contact`` (model files trained before the record existed, e.g. configs/buildings_contact.yaml's)."""
    from tests.helpers import make_card

    old = make_card(("building", "building", (230, 60, 60)), ("contact", "background", (60, 60, 230)))
    assert ModelCard.from_json(old.to_json()).contact_ids == [2]
    named = make_card(("building", "building", (230, 60, 60)), ("touch", "background", (60, 60, 230)))
    assert named.contact_ids == []
    named.training = {"contact_class": "touch", "contact_m": 0.75}
    assert ModelCard.from_json(named.to_json()).contact_ids == [2]
    not_background = make_card(("building", "building", (230, 60, 60)), ("contact", "building", (60, 60, 230)))
    assert not_background.contact_ids == []
    assert make_card(("building", "building", (230, 60, 60))).contact_ids == []
