"""``geounet evaluate MODEL SCENE [SCENE ...] LABELS``: pixel IoU/F1, object F1 and centre-line scores, per scene
and pooled over several."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from geounet.cli import options
from geounet.cli.logs import setup_logging
from geounet.errors import GeounetError

UNLABELLED = ("background", "ignore")  # what pixels no label covers count as (training.evaluate.LabelOptions)


def evaluate(
    model: Path = typer.Argument(..., help="geounet .safetensors model file."),
    scenes: list[Path] = typer.Argument(
        ..., help="Scene(s) to predict (GeoTIFF, VRT, ...); with several, each is scored and then all are pooled."
    ),
    labels: Path = typer.Argument(..., help="Labels: vector file (GeoJSON, GeoPackage) or class raster."),
    window: str | None = typer.Option(
        None,
        help="Evaluate only this part: x0,y0,x1,y1 as fractions of the "
        "scene's width and height from its top-left corner.",
    ),
    class_field: str | None = typer.Option(None, help="Label attribute holding the class."),
    default_class: str | None = typer.Option(
        None, help="Class of features without a class field (default: the model's only non-background class)."
    ),
    value_map: list[str] = typer.Option([], "--value-map", help="VALUE=CLASS (or VALUE=ignore); repeatable."),
    unlabelled: str = typer.Option("background", help="Pixels no label covers: background or ignore."),
    unlabelled_ignore_in: Path | None = typer.Option(
        None,
        help="Vector file of areas where the labels may miss buildings (e.g. footprints newer than the image): "
        "a predicted building there that overlaps no labelled one is not scored (its pixels, its polygon).",
    ),
    line_width_m: float = typer.Option(3.0, help="Width (metres) line labels are buffered to."),
    centerlines: Path | None = typer.Option(None, help="True road centre lines (vector) for the road metric."),
    tolerance_m: float = typer.Option(3.0, help="Centre-line match distance, metres."),
    iou_threshold: float = typer.Option(0.5, help="Object match IoU threshold."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the scores to this JSON file."),
    tile_size: int | None = options.tile_size(),
    overlap: int | None = options.overlap(),
    batch_size: int | None = options.batch_size(),
    device: str = options.device(),
    precision: str = options.precision(),
    tta: str = options.tta(),
    rescale: str = options.rescale(),
    decision_weight: list[str] | None = options.decision_weight(),
    rule: list[str] | None = options.rule(),
) -> None:
    """Score a model on labelled scenes through the same path as ``geounet predict``.

    Several scenes share the labels and the options; their pixels and objects are also
    pooled, scored as if they were one scene.
    """
    from geounet.engine.settings import CLI_NAMES, PredictSettings
    from geounet.schema import choice_problem
    from geounet.training.evaluate import (
        LabelOptions,
        evaluate_model,
        evaluate_scenes,
        format_report,
        parse_window,
        write_json,
    )

    setup_logging(True)
    try:
        pairs = {}
        for item in value_map:
            key, sep, val = item.partition("=")
            if not sep:
                raise GeounetError(None, f"--value-map expects VALUE=CLASS, got {item!r}")
            pairs[key] = val
        opts = LabelOptions(
            class_field=class_field,
            default_class=default_class,
            value_map=pairs,
            unlabelled=unlabelled,
            unlabelled_ignore_in=unlabelled_ignore_in,
            line_width_m=line_width_m,
        )
        settings = PredictSettings(
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            precision=precision,
            tta=tta,
            rescale=rescale,
            decision_weights=options.parse_decision_weights(decision_weight),
            postprocess=options.parse_rules(rule),
            quiet=True,
        )
        unknown = settings.choice_problems(CLI_NAMES) + [
            p for p in [choice_problem("--unlabelled", unlabelled, UNLABELLED)] if p
        ]
        if unknown:  # before minutes of prediction, not after
            raise GeounetError(None, "; ".join(unknown))
        scoring: dict[str, Any] = {
            "label_options": opts,
            "window": parse_window(window),
            "centerlines_path": centerlines,
            "settings": settings,
            "tolerance_m": tolerance_m,
            "iou_threshold": iou_threshold,
        }
        if len(scenes) == 1:
            result = evaluate_model(model, scenes[0], labels, **scoring)
        else:
            result = evaluate_scenes(model, scenes, labels, **scoring)
    except GeounetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_report(result))
    if json_out is not None:
        write_json(result, json_out)
