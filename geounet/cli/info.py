"""``geounet info MODEL``: print a model file's card."""

from __future__ import annotations

from pathlib import Path

import typer

from geounet.errors import GeounetError
from geounet.models.card import read_card


def info(model: Path = typer.Argument(..., help="A geounet .safetensors model file.")) -> None:
    """Print the model card: architecture, bands, normalisation, classes, resolution, training."""
    try:
        card = read_card(model)
    except GeounetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"model file:   {model}")
    typer.echo(card.describe())
