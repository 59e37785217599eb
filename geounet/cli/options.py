"""Options that ``geounet predict`` and ``geounet evaluate`` share: one definition (name, default, help) each.

Each function returns a fresh ``typer.Option`` for a subcommand's signature, e.g.
``tile_size: int | None = options.tile_size()``.
"""

from __future__ import annotations

from typing import Any

import typer

from geounet.errors import GeounetError


def tile_size() -> Any:
    return typer.Option(None, help="Tile side in pixels (on the model's working grid); default: the model's.")


def overlap() -> Any:
    return typer.Option(None, help="Overlap between tiles in pixels; default: the model's.")


def batch_size() -> Any:
    return typer.Option(
        None, help="Tiles per model call. Default: 1 with ONNX Runtime on the CPU (same speed, less memory), else 4."
    )


def device() -> Any:
    return typer.Option("auto", help="auto, cpu, cuda or cuda:N.")


def precision() -> Any:
    return typer.Option(
        "auto",
        help="auto, fp32, bf16, fp16 (autocast) or int8 (the model's quantized ONNX file beside it, CPU, "
        "ONNX Runtime; made by geounet quantize). auto on a CPU: int8 where the model's int8 record measured "
        "pixel IoU within 0.01 of fp32 and a speed-up, and the CPU has VNNI; else fp32 (never bf16 on a CPU).",
    )


def tta() -> Any:
    return typer.Option(
        "none",
        help="Test-time augmentation: each tile also seen mirrored and turned, probabilities averaged before "
        "blending. none, flip (2 views), flips (4) or d4 (all 8); costs that many model calls.",
    )


def rescale() -> Any:
    return typer.Option(
        "auto",
        help="auto: a scene that is not 8-bit (11-bit satellite products in uint16, floats), for a model that takes "
        "uint8, is scaled to 8 bits: each band's 2nd and 98th percentiles to 50 and 200, where 8-bit imagery has them "
        "(logged, in run.json); "
        "none: such a scene is refused.",
    )


def decision_weight() -> Any:
    return typer.Option(
        None,
        "--decision-weight",
        help="CLASS=FACTOR: multiply that class's probability by FACTOR before the winning class is picked "
        "(classes.tif and the polygons; scores.tif keeps the probabilities). With two classes, building=3 "
        "marks a building where its probability exceeds 1/(1+3) = 0.25. Repeatable; default: the model "
        "card's decision weights (geounet info shows them), else 1.",
        show_default=False,
    )


def parse_decision_weights(items: list[str] | None) -> dict[str, float] | None:
    """``["building=3", ...]`` -> ``{"building": 3.0}``; None when none are given. Checked against the card later."""
    if not items:
        return None
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = None
        if not sep or not name.strip() or factor is None:
            raise GeounetError(None, f"--decision-weight expects CLASS=FACTOR (a number), got {item!r}")
        weights[name.strip()] = factor
    return weights


def rule() -> Any:
    return typer.Option(
        None,
        "--rule",
        help="KIND.FIELD=VALUE: a post-processing rule of features.gpkg for this run, in metres or square metres, "
        "e.g. building.simplify_m=0.35, building.seed_m=1.5, building.regularize=false (kinds, fields and "
        "defaults: docs/architecture.md). Repeatable; the same overrides as a pipeline config's postprocess:, "
        "recorded in run.json.",
        show_default=False,
    )


def parse_rules(items: list[str] | None) -> dict[str, dict[str, float | bool]] | None:
    """``["building.seed_m=1.5", ...]`` -> ``{"building": {"seed_m": 1.5}}`` (PredictSettings.postprocess); None when none.

    Read and checked as a pipeline config's ``postprocess:`` section is (values in YAML,
    :class:`~geounet.batch.config.PostprocessSpec`); every problem in one line.
    """
    if not items:
        return None
    from geounet.batch.config import PostprocessSpec
    from geounet.schema import apply_setting, check

    example = "building.simplify_m=0.35"
    raw: dict[str, Any] = {}
    setting_problems: list[str | None] = [
        f"--rule expects KIND.FIELD=VALUE with a dotted KEY such as {example}, got {item!r}"
        if not item.partition("=")[2].strip()  # YAML's null (a config's default): no rule at all
        else apply_setting(raw, item, "--rule", example)
        for item in items
    ]
    problems = [p for p in setting_problems if p]
    spec, found = check(PostprocessSpec, raw)
    problems += [f"--rule: {p}" for p in found + (spec.problems("") if spec is not None else [])]
    if problems or spec is None:
        raise GeounetError(None, "; ".join(problems))
    return spec.overrides()
