"""``geounet models``: the bundled models, their variants, resolution, bands, classes and measured scores."""

from __future__ import annotations

import json

import typer

from geounet.errors import GeounetError
from geounet.models.registry import bundled_models


def models() -> None:
    """List the bundled models: name, variant file, ground resolution, bands, classes, measured scores."""
    try:
        found = bundled_models()
    except GeounetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for b in found:
        c = b.card
        typer.echo(f"{b.name}  ({b.variant}.safetensors)")
        typer.echo(f"  resolution: {c.resolution_m:g} m/px   bands: {', '.join(c.band_names)}")
        typer.echo(f"  classes:    {', '.join(c.class_names)}")
        scores = b.path.with_name(f"{b.variant}.scores.json")
        if scores.is_file():
            for line in _score_lines(json.loads(scores.read_text())):
                typer.echo(f"  {line}")
        else:
            typer.echo("  scores:     none measured")
        typer.echo(f"  file:       {b.path}")


def _score_lines(scores: dict) -> list[str]:
    """One line per evaluation in a ``<variant>.scores.json`` (written by ``geounet evaluate --json``)."""
    lines = []
    for ev in scores.get("evaluations", []):
        parts = [f"{k} {v:.3f}" for k, v in ev.get("scores", {}).items() if isinstance(v, (int, float))]
        lines.append(f"scores:     {ev.get('data', '?')}: {', '.join(parts)}")
    return lines
