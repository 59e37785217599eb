"""Options that ``geounet predict`` and ``geounet evaluate`` share: one definition (name, default, help) each.

Each function returns a fresh ``typer.Option`` for a subcommand's signature, e.g.
``tile_size: int | None = options.tile_size()``.
"""

from __future__ import annotations

from typing import Any

import typer


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
