"""Static int8 quantization of a model's ONNX form, and the int8 file that ships next to the model.

A model ``<dir>/<stem>.safetensors`` may have an int8 version beside it:

- ``<stem>.int8.onnx``: the network (softmax appended, as :mod:`geounet.models.onnx`
  exports it) quantized statically in the QDQ format by ONNX Runtime: weights int8,
  symmetric, per output channel; activations uint8 with ranges calibrated on real
  normalised tiles of the model's training data;
- ``<stem>.int8.json``: its record: the sha256 of the ``.safetensors`` file it was made
  from (a retrained model never uses a stale int8 file), the int8 file's own sha256, how
  it was calibrated (data, tiles, method, onnxruntime version) and what was measured
  against fp32 (``geounet evaluate`` scores, speed); ``geounet quantize`` writes it.

``--precision int8`` runs it on ONNX Runtime (CPU only); ``auto`` chooses it only where
its record says it kept every pixel IoU within :data:`MAX_IOU_CHANGE` of fp32 and ran
faster, and the CPU has VNNI (:func:`geounet.models.hardware.resolve_precision`).
Building it (:func:`quantize_model`) imports onnxruntime's quantization tools; reading
a record does not import onnxruntime.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geounet.errors import ModelError
from geounet.models.card import file_sha256

ONNX_SUFFIX = ".int8.onnx"
RECORD_SUFFIX = ".int8.json"
MAX_IOU_CHANGE = 0.01  # pixel IoU (every scored class) within this of fp32, or auto does not choose int8
METHODS = ("minmax", "percentile", "entropy")
MAKE_ONE = "geounet quantize MODEL SCENE..."  # how a user makes one (geounet.cli.quantize)


def int8_paths(model_path: str | Path) -> tuple[Path, Path]:
    """``(<stem>.int8.onnx, <stem>.int8.json)`` beside the model file."""
    model_path = Path(model_path)
    return (
        model_path.with_name(model_path.stem + ONNX_SUFFIX),
        model_path.with_name(model_path.stem + RECORD_SUFFIX),
    )


@dataclass
class Int8Record:
    """What ``<stem>.int8.json`` says about the int8 file beside a model."""

    model: str  # the .safetensors file's name it was made from
    fp32_sha256: str  # that file's sha256: the int8 file serves no other
    int8_sha256: str  # the .int8.onnx file's own sha256
    onnxruntime: str  # version that quantized it
    calibration: dict[str, Any]  # data, tiles, tile size, method, format, types
    measured: dict[str, Any] = field(default_factory=dict)  # "evaluate" and "speed" (see geounet quantize)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> Int8Record:
        try:
            raw = json.loads(Path(path).read_text())
            return cls(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelError(path, f"not a valid int8 record ({str(exc).splitlines()[0][:120]})") from None

    def iou_changes(self) -> dict[str, float] | None:
        """Per class: int8 pixel IoU minus fp32's, as measured (None: not measured)."""
        ev = self.measured.get("evaluate") or {}
        fp32, int8 = ev.get("fp32_iou"), ev.get("int8_iou")
        if not isinstance(fp32, dict) or not isinstance(int8, dict) or not fp32:
            return None
        if set(fp32) != set(int8):
            return None
        return {k: float(int8[k]) - float(fp32[k]) for k in fp32}

    def speedup(self) -> float | None:
        """fp32 CPU seconds / int8 CPU seconds over the same tiles, as measured (None: not measured)."""
        speed = self.measured.get("speed") or {}
        try:
            return float(speed["cpu_fp32_s"]) / float(speed["cpu_int8_s"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None

    def auto_ok(self) -> bool:
        """Whether the measurement supports ``auto`` choosing int8: every IoU within the bound, and faster."""
        changes, speedup = self.iou_changes(), self.speedup()
        if changes is None or speedup is None:
            return False
        return max(abs(c) for c in changes.values()) <= MAX_IOU_CHANGE and speedup > 1.0


_SHA256: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: str | Path) -> str:
    """:func:`file_sha256`, remembered per (file, modification time, size) in this process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    if key not in _SHA256:
        _SHA256[key] = file_sha256(path)
    return _SHA256[key]


def find_int8(model_path: str | Path, sha256: str | None = None) -> tuple[Path, Int8Record] | None:
    """The int8 file and record that belong to this model file; None when there is none (or it is stale).

    ``sha256``: the model file's, when known. A record made from another version of the
    model (its ``fp32_sha256`` differs) counts as none.
    """
    onnx_path, record_path = int8_paths(model_path)
    if not record_path.is_file() or not onnx_path.is_file():
        return None
    record = Int8Record.read(record_path)
    if record.fp32_sha256 != (sha256 or cached_sha256(model_path)):
        return None
    return onnx_path, record


def require_int8(model_path: str | Path) -> tuple[Path, Int8Record]:
    """:func:`find_int8`, checked: a one-line :class:`ModelError` when it is missing, stale or damaged."""
    onnx_path, record_path = int8_paths(model_path)
    how = f"make one with {MAKE_ONE}"
    if not record_path.is_file() or not onnx_path.is_file():
        raise ModelError(model_path, f"no int8 version ({how})")
    record = Int8Record.read(record_path)
    if record.fp32_sha256 != cached_sha256(model_path):
        raise ModelError(
            model_path,
            f"no int8 version: {onnx_path.name} was made from another version of this model "
            f"(sha256 {record.fp32_sha256[:12]}...); {how}",
        )
    if cached_sha256(onnx_path) != record.int8_sha256:
        raise ModelError(onnx_path, f"int8 file does not match its record {record_path.name} (damaged?); {how}")
    return onnx_path, record


class TileReader:
    """onnxruntime ``CalibrationDataReader`` over normalised tiles ``(bands, h, w)``, one per call."""

    def __init__(self, tiles: Iterable[np.ndarray], input_name: str = "x") -> None:
        self._tiles: Iterator[np.ndarray] = iter(tiles)
        self.input_name = input_name
        self.count = 0
        self.shapes: set[tuple[int, ...]] = set()

    def get_next(self) -> dict[str, np.ndarray] | None:
        tile = next(self._tiles, None)
        if tile is None:
            return None
        self.count += 1
        self.shapes.add(tuple(tile.shape))
        return {self.input_name: np.ascontiguousarray(tile[None], dtype=np.float32)}


def quantize_model(
    fp32_onnx: str | Path,
    dst: str | Path,
    tiles: Iterable[np.ndarray],
    method: str = "minmax",
    per_channel: bool = True,
) -> dict[str, Any]:
    """Quantize ``fp32_onnx`` statically (QDQ) to ``dst``, its activation ranges calibrated on ``tiles``.

    ``tiles``: normalised float32 ``(bands, h, w)`` tiles as the predict path feeds the
    model (``geounet.engine.tiles.input_array``). Weights int8 symmetric (per output
    channel with ``per_channel``), activations uint8 asymmetric (U8S8, what ONNX Runtime
    runs fastest on x86 with VNNI); the final softmax stays float. Returns the
    calibration facts for the record (tile count, method, types).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    it = iter(tiles)
    first = next(it, None)
    if first is None:
        raise ValueError("no calibration tiles")
    reader = TileReader(itertools.chain([first], it))

    class _Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return reader.get_next()

    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="geounet-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        out = Path(tmp) / "int8.onnx"
        softmax = [n.name for n in _nodes(prepared) if n.op_type == "Softmax"]
        t0 = time.perf_counter()
        quantize_static(
            str(prepared),
            str(out),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=calibrate,
            nodes_to_exclude=softmax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        seconds = time.perf_counter() - t0
        tmp_dst = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        shutil.copyfile(out, tmp_dst)
        os.replace(tmp_dst, dst)
    return {
        "tiles": reader.count,
        "tile_shapes": sorted(list(s) for s in reader.shapes),
        "method": method,
        "format": "QDQ",
        "weights": "int8 symmetric" + (", per output channel" if per_channel else ", per tensor"),
        "activations": "uint8 asymmetric (per tensor)",
        "float_nodes": "the final Softmax",
        "seconds": round(seconds, 1),
    }


def _nodes(path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)


def write_int8(
    model_path: str | Path, int8_onnx: str | Path, calibration: dict[str, Any], measured: dict[str, Any] | None = None
) -> Int8Record:
    """Write the record ``<stem>.int8.json`` for an int8 file already at ``int8_paths(model_path)[0]``."""
    import onnxruntime

    _, record_path = int8_paths(model_path)
    record = Int8Record(
        model=Path(model_path).name,
        fp32_sha256=file_sha256(model_path),
        int8_sha256=file_sha256(int8_onnx),
        onnxruntime=onnxruntime.__version__,
        calibration=calibration,
        measured=measured or {},
    )
    tmp = record_path.with_name(f".{record_path.name}.tmp-{os.getpid()}")
    tmp.write_text(record.to_json())
    os.replace(tmp, record_path)
    return record


def compare_speed(
    fp32: Callable[[np.ndarray], np.ndarray],
    int8: Callable[[np.ndarray], np.ndarray],
    tiles: list[np.ndarray],
    rounds: int = 3,
) -> dict[str, Any]:
    """Wall and CPU seconds of fp32 and int8 over the same tiles, interleaved (one tile per call).

    Each round runs every tile through fp32 then int8, alternating which goes first, so
    a machine's load drifting during the run falls on both alike. One warm-up call each
    is not timed. CPU seconds are this process's (every thread). Returns the totals (s)
    and the ratios fp32 / int8 (above 1: int8 faster).
    """
    wall = {"fp32": 0.0, "int8": 0.0}
    cpu = {"fp32": 0.0, "int8": 0.0}
    nets = {"fp32": fp32, "int8": int8}
    for net in nets.values():
        net(tiles[0][None])
    for r in range(rounds):
        for tile in tiles:
            batch = tile[None]
            for name in ("fp32", "int8") if r % 2 == 0 else ("int8", "fp32"):
                w0, c0 = time.perf_counter(), time.process_time()
                nets[name](batch)
                wall[name] += time.perf_counter() - w0
                cpu[name] += time.process_time() - c0
    return {
        "tiles": len(tiles),
        "rounds": rounds,
        "wall_fp32_s": round(wall["fp32"], 3),
        "wall_int8_s": round(wall["int8"], 3),
        "cpu_fp32_s": round(cpu["fp32"], 3),
        "cpu_int8_s": round(cpu["int8"], 3),
        "speedup_wall": round(wall["fp32"] / wall["int8"], 3),
        "speedup_cpu": round(cpu["fp32"] / cpu["int8"], 3),
    }
