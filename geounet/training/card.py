"""The model a training run writes: its card (classes, bands, normalisation, network, training facts) and file."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geounet.errors import GeounetError
from geounet.io.remote import gdal_path, scene_name
from geounet.models.card import ClassInfo, ModelCard
from geounet.models.hardware import cpu_cores
from geounet.models.network import build_network, load_model, save_model
from geounet.training.config import SceneConfig, TrainConfig
from geounet.training.data import Scene

if TYPE_CHECKING:
    import torch


def build_card(cfg: TrainConfig, scenes: list[Scene], mean: list[float], std: list[float], scale: float) -> ModelCard:
    """The model card for this config; ``mean`` / ``std`` per band of DN / ``scale`` (``training`` is filled later)."""
    d, m = cfg.data, cfg.model
    return ModelCard(
        name=cfg.name,
        classes=[ClassInfo(c.name, (int(c.color[0]), int(c.color[1]), int(c.color[2])), c.kind) for c in cfg.classes],
        bands=list(d.bands),
        band_names=list(d.band_names) if d.band_names else _band_names(cfg),
        mean=list(mean),
        std=list(std),
        scale=float(scale),
        input_dtypes=sorted({s.dtype for s in scenes}),
        resolution_m=d.resolution_m,
        tile_size=m.tile_size,
        overlap=m.overlap,
        architecture=m.architecture,
        encoder=m.encoder,
        encoder_depth=m.encoder_depth,
        decoder_channels=list(m.decoder_channels),
        decision_weights={k: float(v) for k, v in cfg.card.decision_weights.items()},
    )


def _band_names(cfg: TrainConfig) -> list[str]:
    """The first training scene's band descriptions, else colour interpretations, else ``band<n>``."""
    import rasterio

    with rasterio.open(gdal_path(cfg.data.train[0].image)) as ds:
        names = []
        for b in cfg.data.bands:
            desc = ds.descriptions[b - 1]
            interp = ds.colorinterp[b - 1].name
            names.append(desc or (interp if interp not in ("undefined", "gray", "alpha") else f"band{b}"))
        return names


def machine_description(device: str) -> str:
    """CPU model and core count (and the GPU when training on CUDA), torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = f"{cpu}, {cpu_cores()} cores ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}"
    if device.startswith("cuda"):
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def training_facts(
    cfg: TrainConfig,
    command: str | None,
    history: list[dict[str, Any]],
    best_epoch: int,
    best_val: dict[str, Any],
    seconds: float,
    device: str,
    precision: str,
    step: int,
) -> dict[str, Any]:
    """The ``training`` section of the card: data, licence, command, schedule, time (s), machine, best metrics."""
    import torch

    from geounet import __version__

    t = cfg.train
    return {
        "description": cfg.card.description,
        "data": cfg.card.data,
        "licence": cfg.card.licence,
        "train_scenes": [_scene_text(s) for s in cfg.data.train],
        "val_scenes": [_scene_text(s) for s in cfg.data.val],
        "command": command or "",
        "epochs": len(history) and history[-1]["epoch"],
        "best_epoch": best_epoch,
        "steps": step,
        "batch_size": t.batch_size,
        "chip_size": t.chip_size,
        "loss": t.loss,
        "lr": t.lr,
        "ema_decay": t.ema_decay,
        "seed": t.seed,
        "precision": precision,
        "time_s": round(seconds, 1),
        "machine": machine_description(device),
        "software": f"geounet {__version__}, torch {torch.__version__}",
        "val": best_val,
        **(
            {"contact_class": cfg.labels.contact_class, "contact_m": cfg.labels.contact_m}
            if cfg.labels.contact_class is not None
            else {}
        ),
    }


def _scene_text(s: SceneConfig) -> str:
    """``image (labels file[, moved E, N m]) [window ...]``: a scene in a few words, file names without folders."""
    moved = ""
    if s.labels_offset_m is not None:
        east, north = s.labels_offset_m
        moved = f", moved {east:+g} m east, {north:+g} m north"
    labels = f"labels {s.labels.name}" if s.labels is not None else "no labels"
    negative = ", negative: all background" if s.negative else ""
    text = f"{scene_name(s.image)} ({labels}{moved}{negative})"
    return text + (f" window {s.window}" if s.window else "")


def save_model_file(path: Path, card: ModelCard, state: dict[str, torch.Tensor], dtype: str) -> None:
    """Write the network with weights ``state`` and its card to the model file, weights as ``dtype``."""
    import torch

    net = build_network(card)
    net.load_state_dict(state)
    if dtype == "float16":
        net = net.to(torch.float16)
    save_model(path, net, card)


def load_init_weights(path: Path, cfg: TrainConfig) -> tuple[torch.nn.Module, ModelCard]:
    """``(network, card)`` of a model file to fine-tune, checked against the config's classes and network."""
    net, card = load_model(path)
    m = cfg.model
    mine = (cfg.class_names, m.architecture, m.encoder, m.encoder_depth, list(m.decoder_channels), len(cfg.data.bands))
    theirs = (
        card.class_names,
        card.architecture,
        card.encoder,
        card.encoder_depth,
        list(card.decoder_channels),
        len(card.bands),
    )
    if mine != theirs:
        raise GeounetError(
            path, f"train.init_weights: the model's classes/network {theirs} differ from the config's {mine}"
        )
    return net, card
