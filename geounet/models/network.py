"""The smp network a card describes: built without downloading weights, saved and loaded as safetensors."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from geounet.errors import ModelError
from geounet.models.card import CARD_KEY, ModelCard, read_card, read_header, short_message

log = logging.getLogger("geounet")


def build_network(card: ModelCard):
    """Build the (untrained) smp network the card describes; never downloads weights."""
    from geounet._torchvision_compat import ensure_torchvision

    ensure_torchvision()  # before smp or timm import torchvision
    import segmentation_models_pytorch as smp

    try:
        arch = getattr(smp, card.architecture)
    except AttributeError:
        raise ModelError(None, f"unknown smp architecture {card.architecture!r}") from None
    kwargs: dict[str, Any] = dict(
        encoder_name=card.encoder,
        encoder_depth=card.encoder_depth,
        encoder_weights=None,
        in_channels=card.in_channels,
        classes=len(card.classes),
    )
    if card.architecture in ("Unet", "UnetPlusPlus"):
        kwargs["decoder_channels"] = tuple(card.decoder_channels)
    return arch(**kwargs)


def save_model(path: str | Path, network, card: ModelCard) -> None:
    """Write weights and card to one safetensors file (atomically: temp name, then rename)."""
    from safetensors.torch import save_file

    card.validate(path)
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(state, str(tmp), metadata={CARD_KEY: card.to_json()})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; a model file is for everyone to read
    os.replace(tmp, path)


def load_model(path: str | Path, device: str = "cpu"):
    """Return ``(network in eval mode on device, card)`` from a geounet model file.

    The file's tensors are compared with the network the card describes (names and
    shapes, from the header) before any is read: a mismatch names the first tensor
    that does not fit.
    """
    from safetensors.torch import load_file

    card = read_card(path)
    net = build_network(card)
    problem = state_problem(net, read_header(path).shapes)
    if problem:
        raise ModelError(
            path,
            f"weights do not match the card's network ({card.architecture}, encoder {card.encoder}, "
            f"depth {card.encoder_depth}): {problem}; the card must describe the network the weights were saved from",
        )
    try:
        state = load_file(str(path), device="cpu")
        net.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelError(path, f"not a valid safetensors model file ({short_message(exc)})") from None
    return net.to(device).eval(), card


def state_problem(net, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The first tensor (in the network's order) that ``shapes`` lacks or has in another shape, or an extra one."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for name, shape in expected.items():
        if name not in shapes:
            missing = sum(k not in shapes for k in expected)
            return f"tensor {name} {list(shape)} is not in the file ({missing} of {len(expected)} missing)"
        if shapes[name] != shape:
            return f"tensor {name} is {list(shapes[name])} in the file, the network needs {list(shape)}"
    extra = [k for k in shapes if k not in expected]
    if extra:
        return f"tensor {extra[0]} {list(shapes[extra[0]])} in the file is not in the network ({len(extra)} extra)"
    return None


def fuse_batchnorm(net) -> int:
    """Fold each eval-mode BatchNorm2d into the Conv2d that feeds only it, in place; returns how many.

    The pairs come from the network's traced data flow (``torch.fx``), so only a norm
    applied directly to a convolution's sole output is folded; the module tree keeps
    its shape (``net.encoder`` still works), folded norms become ``Identity``. Outputs
    change by float rounding only; faster on the CPU (benchmarks/README.md). A network fx
    cannot trace is left as it is.
    """
    import torch
    import torch.fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if net.training:
        raise ValueError("fuse_batchnorm needs a network in eval mode")
    try:
        graph = torch.fx.symbolic_trace(net).graph
    except Exception as exc:  # noqa: BLE001 - dynamic control flow: keep the network as it is
        log.debug("batch norms not folded (%s cannot be traced: %s)", type(net).__name__, exc)
        return 0
    modules = dict(net.named_modules())
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        src = node.args[0] if node.args else None
        if (
            node.op == "call_module"
            and isinstance(modules.get(node.target), torch.nn.BatchNorm2d)
            and isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and len(src.users) == 1
            and isinstance(modules.get(src.target), torch.nn.Conv2d)
        ):
            pairs.append((str(src.target), str(node.target)))
    for conv, norm in pairs:
        _set_module(net, conv, fuse_conv_bn_eval(modules[conv], modules[norm]))
        _set_module(net, norm, torch.nn.Identity())
    return len(pairs)


def _set_module(net, path: str, module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, name, module)
