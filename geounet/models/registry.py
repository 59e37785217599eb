"""Models by name and path: the bundled models and their variants, and each model loaded once per process.

Bundled models install with the package (package data ``geounet.bundled``, the repo's
``data/models/``), one file per variant: ``<name>.safetensors`` and
``<name>_<variant>.safetensors`` (``buildings`` at 0.15 m, ``buildings_satellite`` at
0.5 m). A user names a model by its name and :func:`pick_variant` takes the variant
trained closest to the scene's ground resolution (ratio on a log scale), or gives a path.
``cached_model`` is what every Dask task calls: the first call in a process loads the
network (torch or ONNX Runtime) and later calls reuse it; :func:`release_models` drops
them when a run needs the memory more than the model (its last scene's vector stage).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geounet.errors import ModelError
from geounet.models.card import ModelCard, read_card
from geounet.models.hardware import threads_per_task
from geounet.models.network import fuse_batchnorm, load_model


def bundled_dir() -> Path:
    """Where the bundled model files are: the installed package data, else the source checkout's data/models."""
    try:
        import importlib.resources

        path = Path(str(importlib.resources.files("geounet.bundled")))
        if path.is_dir():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "data" / "models"


DEFAULT_NAME = "buildings"
DEFAULT_MODEL = bundled_dir() / f"{DEFAULT_NAME}.safetensors"


@dataclass(frozen=True)
class Bundled:
    """One bundled model file: its name (shared by its variants), file and card."""

    name: str
    path: Path
    card: ModelCard

    @property
    def variant(self) -> str:
        return self.path.stem


def bundled_models() -> list[Bundled]:
    """Every bundled model file, by name then resolution."""
    out = [Bundled(p.stem.split("_")[0], p, read_card(p)) for p in sorted(bundled_dir().glob("*.safetensors"))]
    return sorted(out, key=lambda b: (b.name, b.card.resolution_m))


def pick_variant(name: str, ground_resolution_m: float | None) -> Bundled:
    """The variant of bundled model ``name`` trained closest to ``ground_resolution_m`` (m/px; None: the first)."""
    variants = [b for b in bundled_models() if b.name == name]
    if not variants:
        names = sorted({b.name for b in bundled_models()})
        raise ModelError(name, f"not a model file, nor a bundled model ({', '.join(names)})")
    if ground_resolution_m is None or ground_resolution_m <= 0:
        return variants[0]
    return min(variants, key=lambda b: abs(math.log(b.card.resolution_m / ground_resolution_m)))


def is_model_name(model: str | Path) -> bool:
    """Whether ``model`` names a bundled model rather than a file (a bare word that is not an existing path)."""
    text = str(model)
    return not Path(text).exists() and "/" not in text and not text.endswith(".safetensors")


_CACHE: dict[tuple, tuple[object, ModelCard]] = {}


_CACHE_LOCK = threading.Lock()


def cached_model(
    path: str | Path, device: str, backend: str = "torch", threads: int | None = None, precision: str = "fp32"
):
    """Load the model once per (file, device, backend, precision) in this process; later calls reuse it.

    ``backend="torch"``, for inference only: batch norms are folded into their
    convolutions (``fuse_batchnorm``) and weights are stored channels_last.
    ``backend="onnx"``: an :class:`~geounet.onnxrt.OnnxNetwork` (CPU, fp32) with
    ``threads`` intra-op threads (default :func:`threads_per_task`); torch is not
    imported unless the model must be exported first. ``precision="int8"`` (ONNX only):
    the model's shipped int8 file (``geounet.models.quantize``); torch autocasts per call,
    so its precision is not part of what is loaded.
    """
    path = str(Path(path).resolve())
    threads = (threads or threads_per_task()) if backend == "onnx" else None  # torch: its own thread setting
    precision = precision if backend == "onnx" else "fp32"
    key = (path, os.stat(path).st_mtime_ns, device, backend, threads, precision)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if backend == "onnx":
                from geounet.models.card import read_card
                from geounet.models.onnx import load_onnx

                _CACHE[key] = (load_onnx(path, threads or 1, precision), read_card(path))
            else:
                import torch

                net, card = load_model(path, device)
                fuse_batchnorm(net)
                net = net.to(memory_format=torch.channels_last)
                _CACHE[key] = (net, card)
        return _CACHE[key]


def release_models() -> int:
    """Drop every model this process has loaded (a later :func:`cached_model` loads it again).

    Returns how many were dropped. ONNX Runtime's memory arenas go with their sessions;
    glibc is then asked to hand freed heap pages back to the system (``malloc_trim``), so
    that the process's resident memory falls, not only its heap's free lists.
    """
    with _CACHE_LOCK:
        n = len(_CACHE)
        _CACHE.clear()
    gc.collect()
    trim_heap()
    return n


def trim_heap() -> None:
    """Hand freed heap pages back to the system: ``malloc_trim(0)`` where the C library is glibc; elsewhere nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None; looked up once (``find_library`` runs ``ldconfig`` in a subprocess)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)
