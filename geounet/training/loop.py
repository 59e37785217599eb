"""The training loop: a model from a checked :class:`~geounet.training.config.TrainConfig`.

Training draws random chips (biased towards chips with the rare, non-background
classes), augments them with plain torch ops, optimises Dice+CE (or another
``segmentation_models_pytorch`` loss) with AdamW and a cosine schedule, validates on
held-out scenes or regions each epoch (pixel IoU of the non-background classes), stops
early when that stops improving, and writes the best network with its ``ModelCard`` to
a safetensors file. Next to it go a CSV log of the epochs (the learning curve) and a
resume checkpoint (``<model stem>.ckpt.pt``).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import IterableDataset

from geounet.errors import GeounetError
from geounet.io.labels import IGNORE_INDEX
from geounet.models.card import ModelCard
from geounet.models.hardware import resolve_precision
from geounet.models.network import build_network
from geounet.training.augment import augment
from geounet.training.card import build_card, load_init_weights, save_model_file, training_facts
from geounet.training.checkpoint import Progress, checkpoint_state, load_checkpoint, restore, save_checkpoint
from geounet.training.config import TrainConfig, TrainOptions, erase_classes, foreground_classes
from geounet.training.data import ChipSampler, Scene, band_stats, load_scene
from geounet.training.losses import Loss, make_loss
from geounet.training.validation import evaluate

if TYPE_CHECKING:
    import torch
    from tqdm import tqdm


@dataclass
class TrainResult:
    """What a training run produced."""

    model: Path
    checkpoint: Path
    csv: Path
    epochs: int  # epochs done in total (including earlier runs resumed from)
    best_epoch: int
    best_val: dict[str, Any]
    seconds: float  # training time in total (including earlier runs resumed from)
    stopped_early: bool


@dataclass
class _Run:
    """What one training session works with: the config, card, network, optimiser, random streams, clock."""

    cfg: TrainConfig
    command: str | None
    card: ModelCard
    device: str
    precision: str
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    ema: torch.optim.swa_utils.AveragedModel | None
    loss_fn: Loss
    gen: torch.Generator  # augmentation
    rng: np.random.Generator  # chip sampling
    mean: torch.Tensor  # the card's normalisation (C, 1, 1), of DN / scale
    std: torch.Tensor
    seconds_before: float = 0.0  # training time of earlier runs resumed from
    started: float = 0.0  # time.perf_counter() when this session's epochs began

    @property
    def kept(self) -> torch.nn.Module:
        """The weights that are validated and saved: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def elapsed(self) -> float:
        """Training time so far in seconds, including earlier runs resumed from."""
        return self.seconds_before + time.perf_counter() - self.started


def train_model(cfg: TrainConfig, command: str | None = None, progress: bool = True) -> TrainResult:
    """Run the training that ``cfg`` describes and write model, CSV log and checkpoint.

    ``command`` is recorded on the model card; ``progress`` shows a progress bar.
    Scenes, labels, checkpoint and fine-tuning weights are all read (and checked)
    before the first step, so bad input fails fast.
    """
    import torch

    t = cfg.train
    t_start = time.perf_counter()
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    gen = torch.Generator().manual_seed(t.seed)
    if t.threads:
        torch.set_num_threads(t.threads)
    device = _device(t.device)
    precision = resolve_precision(device, t.precision, training=True)
    ckpt = load_checkpoint(t.resume, cfg) if t.resume else None
    train_scenes, val_scenes, scale = _load_scenes(cfg)
    card, init = _card(cfg, ckpt, train_scenes, val_scenes, scale)
    run = _start(cfg, command, card, init, device, precision, gen, rng)
    state = restore(ckpt, run.net, run.ema, run.opt, run.sched, t.lr, gen, rng) if ckpt is not None else Progress()
    sampler = ChipSampler(
        train_scenes, t.chip_size, foreground_classes(cfg.classes), t.rare_class_bias, t.min_labelled, rng
    )
    if ckpt is not None:  # the sampler used the generator while indexing; continue the saved stream
        rng.bit_generator.state = ckpt["numpy_rng"]

    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    if init is not None and ckpt is None:
        _score_start(run, state, val_scenes)
    stopped_early = _train_epochs(run, state, sampler, val_scenes, progress)
    state.seconds = run.elapsed()
    card.training = _facts(run, state)
    assert state.best_state is not None  # the starting weights or the first epoch: always a best so far
    save_model_file(cfg.output, card, state.best_state, t.save_dtype)
    return TrainResult(
        model=cfg.output,
        checkpoint=cfg.checkpoint_path,
        csv=cfg.csv_path,
        epochs=state.epoch,
        best_epoch=state.best_epoch,
        best_val=state.best_val,
        seconds=round(time.perf_counter() - t_start + run.seconds_before, 1),
        stopped_early=stopped_early,
    )


def _device(choice: str) -> str:
    """``cuda`` or ``cpu`` for the config's ``auto`` (cuda when available), else the choice itself."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def _load_scenes(cfg: TrainConfig) -> tuple[list[Scene], list[Scene], float]:
    """``(train scenes, val scenes, scale)``: DN per model unit from the config, else 255 for uint8 scenes."""
    train_scenes = [load_scene(s, cfg) for s in cfg.data.train]
    val_scenes = [load_scene(s, cfg) for s in cfg.data.val]
    from tqdm import tqdm

    background = {i for i, c in enumerate(cfg.classes) if c.kind == "background"} | {IGNORE_INDEX}
    for scene in train_scenes + val_scenes:
        if not (~np.isin(scene.label, list(background))).any():
            tqdm.write(f"{scene.name}: no labels of any foreground class: a negative example (all background)")
    scale = cfg.data.scale
    if scale is None:
        dtypes = {s.dtype for s in train_scenes + val_scenes}
        if dtypes != {"uint8"}:
            raise GeounetError(cfg.source, f"scenes are {sorted(dtypes)}: set data.scale (DN per model unit)")
        scale = 255.0
    return train_scenes, val_scenes, scale


def _card(
    cfg: TrainConfig, ckpt: dict[str, Any] | None, train_scenes: list[Scene], val_scenes: list[Scene], scale: float
) -> tuple[ModelCard, torch.nn.Module | None]:
    """The run's card (a resumed run's own), and the network to fine-tune from (``train.init_weights``), if any.

    The normalisation is, in this order: the fine-tuned model's, the config's, the
    pretrained encoder weights' (3 bands), or the train scenes' band statistics.
    """
    if ckpt is not None:
        return ModelCard.from_json(ckpt["card"], cfg.train.resume), None
    init = load_init_weights(cfg.train.init_weights, cfg) if cfg.train.init_weights else None
    if init is not None:  # keep the normalisation the weights were trained with
        mean, std = list(init[1].mean), list(init[1].std)
    elif cfg.data.mean is not None and cfg.data.std is not None:
        mean, std = list(cfg.data.mean), list(cfg.data.std)
    elif cfg.model.encoder_weights and len(cfg.data.bands) == 3:  # RGB: the weights' own normalisation
        from geounet.models.pretrained import weight_source

        source = weight_source(cfg.model.encoder_weights)
        mean, std = list(source.mean), list(source.std)
    else:
        mean, std = band_stats(train_scenes, scale)
    card = build_card(cfg, train_scenes + val_scenes, mean, std, scale)
    return card, (init[0] if init is not None else None)


def _start(
    cfg: TrainConfig,
    command: str | None,
    card: ModelCard,
    init: torch.nn.Module | None,
    device: str,
    precision: str,
    gen: torch.Generator,
    rng: np.random.Generator,
) -> _Run:
    """The network (from ``init``'s weights, if given) on ``device``, its optimiser, schedule, loss and EMA."""
    import torch

    t = cfg.train
    net = build_network(card)
    if init is not None:
        net.load_state_dict(init.state_dict())
    elif cfg.model.encoder_weights and "encoder_weights" not in card.training:  # a new run, not a resumed one
        from geounet.models.pretrained import load_encoder_weights

        card.training["encoder_weights"] = load_encoder_weights(net, cfg.model.encoder_weights)
    net = net.to(device)
    if t.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt, sched = _optimiser(net, t)
    loss_fn = make_loss(t.loss, class_weights=t.class_weights, device=device)
    ema = None
    if t.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
    return _Run(
        cfg=cfg,
        command=command,
        card=card,
        device=device,
        precision=precision,
        net=net,
        opt=opt,
        sched=sched,
        ema=ema,
        loss_fn=loss_fn,
        gen=gen,
        rng=rng,
        mean=torch.tensor(card.mean, dtype=torch.float32)[:, None, None],
        std=torch.tensor(card.std, dtype=torch.float32)[:, None, None],
    )


def _optimiser(
    net: torch.nn.Module, t: TrainOptions
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW, and its schedule per optimiser step: linear warm-up, then cosine decay over all the steps."""
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    factor = cosine_with_warmup(t.warmup_steps, t.epochs * t.steps_per_epoch)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor per step: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# --------------------------------------------------------------------------- epochs


def _train_epochs(run: _Run, state: Progress, sampler: ChipSampler, val_scenes: list[Scene], progress: bool) -> bool:
    """Train, validate and save epoch by epoch until ``train.epochs`` or early stopping; whether it stopped early."""
    from tqdm import tqdm

    t = run.cfg.train
    total_steps = t.epochs * t.steps_per_epoch
    bar = tqdm(
        total=total_steps,
        initial=min(state.step, total_steps),
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
        mininterval=2.0,
    )
    last_iou = state.best_val.get("mean_iou") if state.best_val else None
    run.seconds_before, run.started = state.seconds, time.perf_counter()
    batches = _batches(run, sampler, state.step)
    try:
        while state.epoch < t.epochs:
            losses = _train_epoch(run, state, batches, bar, last_iou)
            state.epoch += 1
            last_iou = _end_epoch(run, state, losses, val_scenes, bar)
            if state.bad_epochs >= t.patience and state.epoch < t.epochs:
                bar.write(f"no better val IoU for {state.bad_epochs} epochs: stopping early")
                return True
    finally:
        bar.close()
        del batches  # ends the loader's worker processes
    return False


def _train_epoch(
    run: _Run, state: Progress, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], bar: tqdm, last_iou: float | None
) -> list[float]:
    """One epoch's optimiser steps; the loss of each."""
    import torch

    run.net.train()
    losses: list[float] = []
    mean, std = run.mean.to(run.device), run.std.to(run.device)
    for _ in range(run.cfg.train.steps_per_epoch):
        x, y = next(batches)  # pinned host memory from loader workers on a GPU: copied while the GPU works
        x = (x.to(run.device, non_blocking=True) - mean) / std
        y = y.to(run.device, non_blocking=True)
        if run.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses.append(_step(run, x, y))
        state.step += 1
        bar.update(1)
        bar.set_postfix(epoch=state.epoch + 1, loss=f"{np.mean(losses[-20:]):.3f}", val_iou=_fmt(last_iou))
    return losses


def host_batch(
    cfg: TrainConfig, scale: float, sampler: ChipSampler, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of augmented chips on the host: ``(x (B, C, H, W) float32 in DN / scale, y (B, H, W) int64)``."""
    import torch

    chips = [sampler.sample() for _ in range(cfg.train.batch_size)]
    x = torch.from_numpy(np.stack([c[0] for c in chips]).astype(np.float32)) / float(scale)
    y = torch.from_numpy(np.stack([c[1] for c in chips]).astype(np.int64))
    removal = erase_classes(cfg.classes, cfg.labels) if cfg.augment.erase else None
    objects, ground = removal or ([], 0)
    return augment(x, y, cfg.augment, gen, objects, ground)


def _batches(run: _Run, sampler: ChipSampler, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless host batches: drawn here from the run's own random streams, or by ``train.loader_workers`` processes."""
    workers = run.cfg.train.loader_workers
    if not workers:
        return iter(lambda: host_batch(run.cfg, run.card.scale, sampler, run.gen), None)
    from torch.utils.data import DataLoader

    stream = ChipBatches(run.cfg, run.card.scale, sampler, run.cfg.train.seed, step)
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=run.device.startswith("cuda"),
        prefetch_factor=4,
    )
    return iter(loader)


class ChipBatches(IterableDataset):
    """Endless augmented batches for a DataLoader's workers, each worker with its own random streams.

    Worker ``w`` of a run at optimiser step ``step`` draws chips and augmentations from
    streams seeded by ``(seed, step, w)``: independent streams for each worker, and the
    same batches again for a run with the same worker count.
    """

    def __init__(self, cfg: TrainConfig, scale: float, sampler: ChipSampler, seed: int, step: int) -> None:
        self.cfg, self.scale, self.sampler, self.seed, self.step = cfg, scale, sampler, seed, step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = info.id if info is not None else 0
        streams = np.random.SeedSequence([self.seed, self.step, worker])
        self.sampler.rng = np.random.default_rng(streams.spawn(1)[0])  # the worker's own copy of the sampler
        gen = torch.Generator().manual_seed(int(streams.generate_state(1, np.uint64)[0] >> 1))
        if info is not None:
            torch.set_num_threads(1)  # one core per worker process
        while True:
            yield host_batch(self.cfg, self.scale, self.sampler, gen)


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimiser step (and EMA update) on a batch; its loss."""
    with _autocast(run.precision, run.device):
        logits = run.net(x)
    loss = run.loss_fn(logits.float(), y)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.sched.step()
    if run.ema is not None:
        run.ema.update_parameters(run.net)
    return float(loss.detach())


def _autocast(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on the device's type for ``bf16``; nothing for ``fp32``."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _score_start(run: _Run, state: Progress, val_scenes: list[Scene]) -> None:
    """Fine-tuning: the starting weights validated as epoch 0, the best until an epoch beats them.

    So a fine-tune never writes a model worse on the validation scenes than the one it began with.
    """
    from tqdm import tqdm

    val = evaluate(run.kept, val_scenes, run.card, precision=run.precision)
    _keep_if_best(run, state, val)
    state.history.append(_history_row(run, state, val, train_loss=""))
    write_csv(run.cfg.csv_path, state.history)
    tqdm.write(f"starting weights (epoch 0): val IoU {val['mean_iou']:.4f}, kept unless an epoch does better")


def _end_epoch(run: _Run, state: Progress, losses: list[float], val_scenes: list[Scene], bar: tqdm) -> float:
    """Validate, keep the best weights, log the epoch (CSV, bar), save model and checkpoint; the val mean IoU."""
    val = evaluate(run.kept, val_scenes, run.card, precision=run.precision)
    best_state = _keep_if_best(run, state, val)
    state.seconds = run.elapsed()
    state.history.append(_history_row(run, state, val, train_loss=round(float(np.mean(losses)), 5)))
    write_csv(run.cfg.csv_path, state.history)
    bar.write(
        f"epoch {state.epoch}/{run.cfg.train.epochs}: loss {state.history[-1]['train_loss']:.4f}, "
        f"val IoU {val['mean_iou']:.4f} ({', '.join(f'{k} {_fmt(v)}' for k, v in val['iou'].items())}), "
        f"{state.seconds:.0f} s" + (" *best*" if best_state is not None else "")
    )
    run.card.training = _facts(run, state)
    if best_state is not None:
        save_model_file(run.cfg.output, run.card, best_state, run.cfg.train.save_dtype)
    save_checkpoint(
        run.cfg.checkpoint_path,
        checkpoint_state(run.card, run.net, run.opt, run.sched, run.ema, state, run.gen, run.rng),
    )
    return val["mean_iou"]


def _keep_if_best(run: _Run, state: Progress, val: dict[str, Any]) -> dict[str, Any] | None:
    """The kept weights (a CPU copy) when ``val`` beats the best so far, recorded in ``state``; else None."""
    if val["mean_iou"] <= state.best_score:
        state.bad_epochs += 1
        return None
    state.best_score, state.best_epoch, state.best_val, state.bad_epochs = val["mean_iou"], state.epoch, val, 0
    state.best_state = {k: v.detach().cpu().clone() for k, v in run.kept.state_dict().items()}
    return state.best_state


def _history_row(run: _Run, state: Progress, val: dict[str, Any], train_loss: float | str) -> dict[str, Any]:
    """The CSV log's row for the epoch ``state`` is at (0: the starting weights of a fine-tune)."""
    return {
        "epoch": state.epoch,
        "step": state.step,
        "lr": run.opt.param_groups[0]["lr"] if state.step else 0.0,
        "train_loss": train_loss,
        "val_mean_iou": val["mean_iou"],
        **{f"val_iou_{k}": v for k, v in val["iou"].items()},
        "val_accuracy": val["accuracy"],
        "seconds": round(state.seconds, 1),
    }


def _facts(run: _Run, state: Progress) -> dict[str, Any]:
    """The card's ``training`` section for the run as far as it is."""
    facts = training_facts(
        run.cfg,
        run.command,
        state.history,
        state.best_epoch,
        state.best_val,
        state.seconds,
        run.device,
        run.precision,
        state.step,
    )
    if "encoder_weights" in run.card.training:  # where the encoder started: package, version, licence, sha256
        facts["encoder_weights"] = run.card.training["encoder_weights"]
    return facts


def _fmt(v: float | None) -> str:
    """A metric for the progress line: three decimals, ``-`` when there is none."""
    return "-" if v is None else f"{v:.3f}"


def write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """The epochs' rows as a CSV file (the learning curve), written atomically (temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)
