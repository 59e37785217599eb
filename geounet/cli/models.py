"""``geounet models``: the bundled models, their variants, resolution, bands, classes and measured scores."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geounet.errors import GeounetError
from geounet.models.quantize import find_int8
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
        if c.decision_weights:
            weights = ", ".join(f"{k} x{v:g}" for k, v in c.decision_weights.items())
            typer.echo(f"  decision:   {weights} (--decision-weight overrides)")
        scores = b.path.with_name(f"{b.variant}.scores.json")
        if scores.is_file():
            for line in _score_lines(json.loads(scores.read_text())):
                typer.echo(f"  {line}")
        else:
            typer.echo("  scores:     none measured")
        typer.echo(f"  int8:       {_int8_line(b.path)}")
        typer.echo(f"  file:       {b.path}")


def _int8_line(path: Path) -> str:
    """Whether the model file has a current int8 version, and what its record measured."""
    found = find_int8(path)
    if found is None:
        return "none (geounet quantize makes one)"
    onnx_path, record = found
    changes, speedup = record.iou_changes(), record.speedup()
    parts = [onnx_path.name]
    if changes:
        parts.append(f"largest pixel IoU change {max(changes.values(), key=abs):+.4f}")
    if speedup:
        parts.append(f"{speedup:.2f}x CPU")
    parts.append("auto takes it on VNNI CPUs" if record.auto_ok() else "opt-in (--precision int8)")
    return ", ".join(parts)


def _score_lines(scores: dict) -> list[str]:
    """One line per evaluation in a ``<variant>.scores.json`` (written by ``geounet evaluate --json``)."""
    lines = []
    for ev in scores.get("evaluations", []):
        parts = [f"{k} {v:.3f}" for k, v in ev.get("scores", {}).items() if isinstance(v, (int, float))]
        lines.append(f"scores:     {ev.get('data', '?')}: {', '.join(parts)}")
    return lines
