"""Models by name and path: the bundled default, and each model loaded once per process.

``cached_model`` is what every Dask task calls: the first call in a process loads the
network (torch or ONNX Runtime) and later calls reuse it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from geounet.models.card import ModelCard
from geounet.models.hardware import threads_per_task
from geounet.models.network import fuse_batchnorm, load_model

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "data" / "models" / "buildings.safetensors"


_CACHE: dict[tuple, tuple[object, ModelCard]] = {}


_CACHE_LOCK = threading.Lock()


def cached_model(path: str | Path, device: str, backend: str = "torch", threads: int | None = None):
    """Load the model once per (file, device, backend) in this process; later calls reuse it.

    ``backend="torch"``, for inference only: batch norms are folded into their
    convolutions (``fuse_batchnorm``) and weights are stored channels_last.
    ``backend="onnx"``: an :class:`~geounet.onnxrt.OnnxNetwork` (CPU, fp32) with
    ``threads`` intra-op threads (default :func:`threads_per_task`); torch is not
    imported unless the model must be exported first.
    """
    path = str(Path(path).resolve())
    threads = (threads or threads_per_task()) if backend == "onnx" else None  # torch: its own thread setting
    key = (path, os.stat(path).st_mtime_ns, device, backend, threads)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if backend == "onnx":
                from geounet.models.card import read_card
                from geounet.models.onnx import load_onnx

                _CACHE[key] = (load_onnx(path, threads or 1), read_card(path))
            else:
                import torch

                net, card = load_model(path, device)
                fuse_batchnorm(net)
                net = net.to(memory_format=torch.channels_last)
                _CACHE[key] = (net, card)
        return _CACHE[key]
