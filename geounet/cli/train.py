"""``geounet train CONFIG``: train a model from a YAML training config."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from geounet.errors import GeounetError


def train(
    config: Path = typer.Argument(..., help="Training config (YAML); its relative paths are relative to its folder."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override train.epochs (also when resuming)."),
    out: Path | None = typer.Option(None, "--out", help="Override output: the .safetensors model file to write."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue from a checkpoint (<model stem>.ckpt.pt)."),
    steps_per_epoch: int | None = typer.Option(
        None, "--steps-per-epoch", min=1, help="Override train.steps_per_epoch."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Override train.seed."),
    precision: str | None = typer.Option(None, "--precision", help="Override train.precision: auto, fp32 or bf16."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Any config key as KEY=VALUE (VALUE in YAML), e.g. --set train.lr=0.001; repeatable.",
    ),
) -> None:
    """Train a segmentation model; write the model file, a CSV log of the epochs and a resume checkpoint."""
    from geounet.damage.head_training import is_head_config, load_head_config, train_damage_head
    from geounet.training.config import load_config
    from geounet.training.loop import train_model

    if is_head_config(config):  # a damage head from damage-labelled pre/post pairs
        try:
            facts = train_damage_head(
                load_head_config(config, out), command=shlex.join(["geounet", "train", str(config)])
            )
        except GeounetError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        v = facts["val"]
        typer.echo(
            f"wrote {facts['output']} ({facts['train']['buildings']} training buildings; validation "
            f"accuracy {v['accuracy']:.3f}, macro F1 {v['macro_f1'] or 0:.3f} on {v['buildings']} buildings)"
        )
        return
    overrides = {
        "train.epochs": epochs,
        "output": str(out) if out else None,
        "train.resume": str(resume) if resume else None,
        "train.steps_per_epoch": steps_per_epoch,
        "train.seed": seed,
        "train.precision": precision,
    }
    words = ["geounet", "train", str(config)]
    for flag, value in (
        ("--epochs", epochs),
        ("--out", out),
        ("--resume", resume),
        ("--steps-per-epoch", steps_per_epoch),
        ("--seed", seed),
        ("--precision", precision),
    ):
        if value is not None:
            words += [flag, str(value)]
    for item in set_:
        words += ["--set", item]
    try:
        cfg = load_config(config, overrides, set_)
    except GeounetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        result = train_model(cfg, command=shlex.join(words), progress=progress)
    except GeounetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        hint = f"; continue with --resume {cfg.checkpoint_path}" if cfg.checkpoint_path.is_file() else ""
        typer.echo(f"interrupted{hint}", err=True)
        raise typer.Exit(130) from None
    val = result.best_val
    typer.echo(
        f"wrote {result.model} (best epoch {result.best_epoch} of {result.epochs}, val IoU {val.get('mean_iou', 0):.4f}, "
        f"{result.seconds:.0f} s); log {result.csv}; checkpoint {result.checkpoint}"
    )


if __name__ == "__main__":
    typer.run(train)
