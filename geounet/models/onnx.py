"""CPU inference with ONNX Runtime: the model exported once, cached on disk, run without torch.

Why (measured in benchmarks/README.md): ONNX Runtime runs the network faster than torch
eager on the CPU (batch norms folded, channels_last), and a process that predicts through
it never imports torch, torchvision or smp, a large part of every command's start-up.

The ``.safetensors`` file stays the model. Its ONNX form (the same network and
weights, with the softmax appended, so it returns class probabilities) is derived
from it on first use with ``torch.onnx.export`` and cached under :func:`cache_dir`,
named by the model file's sha256: a changed model file is exported again, never
served stale. Export needs torch and smp once; it writes a temporary name, then
renames, under a lock, so concurrent workers of a cluster neither clash nor
export twice. Where the cache cannot be written the export goes to a temporary
file that is removed as soon as the session has read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from geounet.errors import ModelError
from geounet.models.card import file_sha256
from geounet.models.hardware import onnxruntime_available

log = logging.getLogger("geounet")

EXPORT_VERSION = 1  # bump when the exported graph changes (name of the cached file)
OPSET = 18


def cache_dir() -> Path:
    """Where exported models are kept: ``$GEOUNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/geounet``, else ``~/.cache/geounet``."""
    if os.environ.get("GEOUNET_CACHE_DIR"):
        return Path(os.environ["GEOUNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geounet"


def exported_path(model_path: str | Path, sha256: str | None = None) -> Path:
    """The cache file of a model's ONNX form: ``<cache>/onnx/<stem>-<sha256[:16]>-v<EXPORT_VERSION>.onnx``."""
    sha256 = sha256 or file_sha256(model_path)
    return cache_dir() / "onnx" / f"{Path(model_path).stem}-{sha256[:16]}-v{EXPORT_VERSION}.onnx"


def export_onnx(model_path: str | Path, dst: str | Path) -> None:
    """Write the model's network, softmax appended, as ONNX to ``dst`` (atomically).

    Input ``x``: normalised float32 ``(n, bands, h, w)``, h and w multiples of 32;
    output ``probabilities``: float32 ``(n, classes, h, w)``. Batch, height and width
    are dynamic. Imports torch and smp.
    """
    import torch

    from geounet.models.network import load_model

    net, card = load_model(model_path, "cpu")

    class _WithSoftmax(torch.nn.Module):
        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.network(x), dim=1)

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    size = max(64, card.tile_size // 2 // 32 * 32)
    example = torch.zeros(2, card.in_channels, size, size)
    dims = {0: torch.export.Dim("batch", min=1, max=4096), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
            torch.onnx.export(
                _WithSoftmax(net).eval(),
                (example,),
                str(tmp),
                dynamo=True,
                opset_version=OPSET,
                input_names=["x"],
                output_names=["probabilities"],
                dynamic_shapes=(dims,),
                optimize=True,
                verbose=False,
                external_data=False,
            )
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class OnnxNetwork:
    """An ONNX Runtime session over a geounet model: normalised batch -> class probabilities (numpy, fp32)."""

    def __init__(self, session, source: str) -> None:
        self.session = session
        self.source = source  # the .onnx file it was read from (may be gone: a temporary export)
        self._input = session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(n, bands, h, w)`` float32 (C order) -> ``(n, classes, h, w)`` float32 probabilities."""
        return self.session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no per-session warnings on stderr
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _lock(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_onnx(model_path: str | Path, threads: int, precision: str = "fp32") -> OnnxNetwork:
    """The model's ONNX Runtime session with ``threads`` intra-op threads, exporting it first if not cached.

    ``precision="int8"``: the int8 file shipped beside the model (``geounet.models.quantize``),
    checked against the model file's sha256; a one-line :class:`ModelError` when there is none.
    """
    if not onnxruntime_available():
        raise ModelError(
            model_path, "the ONNX backend needs onnxruntime (pip install onnxruntime), or use --backend torch"
        )
    model_path = Path(model_path)
    if precision == "int8":
        from geounet.models.quantize import require_int8

        int8_path, _ = require_int8(model_path)
        try:
            return OnnxNetwork(_session(int8_path, threads), str(int8_path))
        except Exception as exc:  # noqa: BLE001 - a damaged file: one line
            raise ModelError(int8_path, f"int8 model unreadable ({str(exc).splitlines()[0][:160]})") from None
    if precision != "fp32":
        raise ModelError(model_path, f"ONNX Runtime runs fp32 or int8, not {precision}")
    path = exported_path(model_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _lock(path.with_name(path.name + ".lock")):
            if path.is_file():
                try:
                    return OnnxNetwork(_session(path, threads), str(path))
                except Exception as exc:  # noqa: BLE001 - a damaged cache file: export it again
                    log.warning(
                        "%s: cached ONNX model unreadable (%s); exporting again", path, str(exc).splitlines()[0]
                    )
            log.info("%s: exporting the model to ONNX once (cached as %s)", model_path, path)
            export_onnx(model_path, path)
            return OnnxNetwork(_session(path, threads), str(path))
    except OSError as exc:  # the cache cannot be written: a private temporary export
        log.warning(
            "%s: cannot write the ONNX cache %s (%s); exporting to a temporary file",
            model_path,
            path.parent,
            exc.strerror or exc,
        )
    with tempfile.TemporaryDirectory(prefix="geounet-onnx-") as tmp:
        tmp_path = Path(tmp) / path.name
        export_onnx(model_path, tmp_path)
        return OnnxNetwork(_session(tmp_path, threads), str(tmp_path))
