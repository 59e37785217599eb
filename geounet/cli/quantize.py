"""``geounet quantize MODEL SCENE...``: the model's int8 version, calibrated on real tiles, measured against fp32.

Writes ``<stem>.int8.onnx`` and its record ``<stem>.int8.json`` beside the model
(``geounet.models.quantize``). The scenes are the model's training data: their tiles,
read and normalised exactly as ``geounet predict`` does, calibrate the activation ranges.
With ``--eval-scene`` and ``--eval-labels`` (held-out data) the command also runs
``geounet evaluate``'s scoring with fp32 and int8 and records both; the speed of the two
over the calibration tiles is always measured (interleaved, in this process) and
recorded. ``auto`` precision takes int8 only when that record allows it.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import typer

from geounet.cli.logs import setup_logging
from geounet.errors import GeounetError

log = logging.getLogger("geounet")


def training_tiles(
    scene: str | Path, model_path: str | Path, tile_size: int | None = None, overlap: int | None = None
) -> Iterator[np.ndarray]:
    """Every tile of ``scene`` with data, normalised as ``geounet predict`` feeds the model ``(bands, h, w)``.

    The scene's working grid at the model's resolution, its tiles (the card's size and
    overlap unless given), read and normalised by the predict path's own functions
    (``read_box``, ``input_array``: nodata pixels become 0).
    """
    from geounet.engine.predict import plan_scene
    from geounet.engine.settings import PredictSettings
    from geounet.engine.tiles import input_array
    from geounet.io.scene import open_working, read_box

    settings = PredictSettings(tile_size=tile_size, overlap=overlap, device="cpu", precision="fp32", quiet=True)
    plan = plan_scene(scene, Path(model_path), settings, None)
    card, working = plan.card, plan.working
    with open_working(plan.scene, working) as ds:
        for chunk in plan.tiles.chunks():
            pixels, valid = read_box(ds, card.bands, chunk.box, (working.height, working.width))
            for tile in chunk.tiles:
                rows, cols = tile.box.relative_to(chunk.box)
                if valid[rows, cols].any():
                    yield input_array(pixels, valid, [(rows, cols)], card)[0]


def evenly(tiles: list[np.ndarray], n: int) -> list[np.ndarray]:
    """At most ``n`` of ``tiles``, spread evenly over the list (all of them when there are fewer)."""
    if len(tiles) <= n:
        return tiles
    return [tiles[i] for i in np.linspace(0, len(tiles) - 1, n).round().astype(int)]


RECORDED_SETTINGS = ("tile_size", "overlap", "tta", "precision", "backend", "workers", "batch_size")


def measure_evaluation(model: Path, scene: Path, labels: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``geounet evaluate``'s scores of ``scene`` with fp32 and with int8 (same settings otherwise)."""
    from geounet.engine.settings import PredictSettings
    from geounet.training.evaluate import evaluate_model

    out: dict[str, Any] = {"scene": str(scene), "labels": str(labels)}
    for precision in ("fp32", "int8"):
        result = evaluate_model(
            model, scene, labels, settings=PredictSettings(precision=precision, device="cpu", quiet=True, **settings)
        )
        pixel = result["pixel"]["classes"]
        out[f"{precision}_iou"] = {k: round(v["iou"], 4) for k, v in pixel.items() if v["iou"] is not None}
        objects = result.get("objects")
        if objects:
            out[f"{precision}_objects"] = {
                k: None if objects.get(k) is None else round(float(objects[k]), 4) for k in ("f1", "polygon_iou")
            }
        out[f"{precision}_settings"] = {k: result["settings"].get(k) for k in RECORDED_SETTINGS}
        log.info("%s: %s pixel IoU %s", scene.name, precision, out[f"{precision}_iou"])
    out["iou_change"] = {k: round(out["int8_iou"][k] - v, 4) for k, v in out["fp32_iou"].items()}
    return out


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def quantize(
    model: Path = typer.Argument(..., help="geounet .safetensors model file; the int8 files are written beside it."),
    scenes: list[Path] = typer.Argument(
        ..., help="Calibration scenes: the model's TRAINING data (never the held-out evaluation scenes)."
    ),
    max_tiles: int = typer.Option(32, help="Calibration tiles at most, spread evenly over the scenes' tiles."),
    method: str = typer.Option("minmax", help="Calibration: minmax, percentile or entropy (onnxruntime's)."),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor", help="Weight scales per output channel."),
    eval_scene: Path | None = typer.Option(None, help="Held-out scene to score fp32 and int8 on (geounet evaluate)."),
    eval_labels: Path | None = typer.Option(None, help="Its labels (vector file)."),
    speed_rounds: int = typer.Option(3, help="Interleaved fp32/int8 passes over the calibration tiles timed."),
    data: str | None = typer.Option(None, help="How the record names the calibration data (default: file names)."),
) -> None:
    """Make the model's int8 version (static QDQ quantization) and record calibration and measurements."""
    setup_logging(False)
    from geounet.models.onnx import exported_path, load_onnx
    from geounet.models.quantize import compare_speed, int8_paths, quantize_model, require_int8, write_int8

    try:
        if (eval_scene is None) != (eval_labels is None):
            raise GeounetError(None, "--eval-scene and --eval-labels go together")
        if eval_scene is not None and any(Path(s).resolve() == eval_scene.resolve() for s in scenes):
            raise GeounetError(
                eval_scene, "the evaluation scene is also a calibration scene; calibrate on training data"
            )
        if max_tiles < 1:
            raise GeounetError(None, f"--max-tiles: must be at least 1, got {max_tiles}")
        tiles = [t for scene in scenes for t in training_tiles(scene, model)]
        chosen = evenly(tiles, max_tiles)
        log.info("%s: calibrating on %d of %d tiles", model, len(chosen), len(tiles))
        fp32 = load_onnx(model, 1)  # exports the fp32 ONNX form once (cached)
        int8_onnx, _ = int8_paths(model)
        calibration = quantize_model(exported_path(model), int8_onnx, chosen, method, per_channel)
        calibration["data"] = data or ", ".join(Path(s).name for s in scenes)
        calibration["tiles_available"] = len(tiles)
        write_int8(model, int8_onnx, calibration)
        int8 = load_onnx(model, 1, "int8")
        measured: dict[str, Any] = {
            "speed": {
                **compare_speed(fp32, int8, chosen, speed_rounds),
                "cpu": cpu_name(),
                "threads": 1,
            }
        }
        if eval_scene is not None and eval_labels is not None:
            measured["evaluate"] = measure_evaluation(model, eval_scene, eval_labels, {})
        record = write_int8(model, int8_onnx, calibration, measured)
        require_int8(model)
    except GeounetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    speed = measured["speed"]
    typer.echo(
        f"{int8_onnx} ({int8_onnx.stat().st_size / 1e6:.2f} MB): calibrated on {calibration['tiles']} tiles "
        f"({calibration['method']}); int8 vs fp32 over them: wall {speed['speedup_wall']:.2f}x, "
        f"CPU {speed['speedup_cpu']:.2f}x"
    )
    if "evaluate" in measured:
        typer.echo(f"pixel IoU change (int8 - fp32): {measured['evaluate']['iou_change']}")
    typer.echo(f"auto precision takes int8 on VNNI CPUs: {'yes' if record.auto_ok() else 'no'}")
