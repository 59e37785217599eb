"""Resume checkpoints: a run's progress, weights, optimiser and random streams, saved after every epoch.

A checkpoint is a ``torch.save`` dict of tensors and plain data (read back with
``weights_only=True``): the card (JSON), ``network``, ``optimizer``, ``scheduler`` and
``ema`` state dicts, the :class:`Progress` fields, and the torch, augmentation and numpy
random states.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geounet.errors import GeounetError
from geounet.models.card import ModelCard
from geounet.training.config import TrainConfig

if TYPE_CHECKING:
    import torch


@dataclass
class Progress:
    """How far a run is: epochs and optimiser steps done, the best epoch so far and the history, time in seconds."""

    epoch: int = 0
    step: int = 0
    best_score: float = -1.0  # val mean IoU of the best epoch (-1: none yet)
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one
    best_state: dict[str, Any] | None = None  # the best epoch's weights (on the CPU)
    best_val: dict[str, Any] = field(default_factory=dict)  # the best epoch's validation metrics
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (the CSV log)
    seconds: float = 0.0  # training time in total, including earlier runs resumed from


def checkpoint_state(
    card: ModelCard,
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    ema: torch.optim.swa_utils.AveragedModel | None,
    progress: Progress,
    gen: torch.Generator,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Everything needed to continue a run exactly, as a dict for :func:`save_checkpoint`."""
    import torch

    return dict(
        card=card.to_json(),
        network=net.state_dict(),
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        ema=ema.state_dict() if ema is not None else None,
        **{f.name: getattr(progress, f.name) for f in dataclasses.fields(progress)},
        torch_rng=torch.get_rng_state(),
        aug_rng=gen.get_state(),
        numpy_rng=rng.bit_generator.state,
    )


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary name, then rename)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Read a resume checkpoint (tensors and plain data only) and check it fits the config."""
    import torch

    if not path.is_file():
        raise GeounetError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several error types for a bad file
        raise GeounetError(path, f"not a geounet training checkpoint ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(ckpt, dict) or "card" not in ckpt:
        raise GeounetError(path, "not a geounet training checkpoint")
    card = ModelCard.from_json(ckpt["card"], path)
    m = cfg.model
    mismatch = [
        name
        for name, a, b in (
            ("classes", card.class_names, cfg.class_names),
            ("bands", card.bands, cfg.data.bands),
            ("architecture", card.architecture, m.architecture),
            ("encoder", card.encoder, m.encoder),
            ("encoder_depth", card.encoder_depth, m.encoder_depth),
            ("decoder_channels", list(card.decoder_channels), list(m.decoder_channels)),
            ("resolution_m", card.resolution_m, cfg.data.resolution_m),
        )
        if a != b
    ]
    if mismatch:
        raise GeounetError(path, f"checkpoint does not match the config: {', '.join(mismatch)} differ")
    return ckpt


def restore(
    ckpt: dict[str, Any],
    net: torch.nn.Module,
    ema: torch.optim.swa_utils.AveragedModel | None,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
    lr: float,
    gen: torch.Generator,
    rng: np.random.Generator,
) -> Progress:
    """Load a checkpoint's weights, optimiser, schedule and random streams in place; its :class:`Progress`.

    ``lr`` (the config's, which may have changed since) becomes the schedule's base learning rate.
    """
    import torch

    net.load_state_dict(ckpt["network"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    for group in opt.param_groups:
        group["initial_lr"] = lr
    sched.base_lrs = [lr for _ in opt.param_groups]
    progress = Progress(**{f.name: ckpt[f.name] for f in dataclasses.fields(Progress)})
    torch.set_rng_state(ckpt["torch_rng"])
    gen.set_state(ckpt["aug_rng"])
    rng.bit_generator.state = ckpt["numpy_rng"]
    return progress
