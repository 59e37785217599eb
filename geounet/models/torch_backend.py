"""Class probabilities from a torch network: autocast, channels_last, pipelined copies on CUDA."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def forward_probabilities(net, batch: np.ndarray, device: str, precision: str) -> np.ndarray:
    """Normalised input ``(n, bands, h, w)`` float32 -> class probabilities ``(n, classes, h, w)`` float32."""
    return next(iter_probabilities(net, iter([batch]), device, precision))


def _forward_tensor(net, x, device: str, precision: str):
    """Softmax probabilities of a device tensor (asynchronous on CUDA)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        logits = net(x)
    with torch.inference_mode():
        return torch.softmax(logits.float(), dim=1)


def iter_probabilities(net, batches: Iterator, device: str, precision: str) -> Iterator[np.ndarray]:
    """Class probabilities for each batch ``(n, bands, h, w)`` of ``batches``, in order.

    A batch is a normalised float32 array or CPU tensor (any memory format).

    On the CPU each batch is computed when asked for. On a CUDA device the work is
    pipelined (GPU-only part, untested on this project's CPU-only machine): batches
    are copied from pinned host memory on a side stream, and each result is handed
    back one batch late, so that while the GPU computes batch i the caller blends
    batch i-1 and this generator reads and stacks batch i+1 and starts its copy.
    """
    import torch

    if not device.startswith("cuda"):
        for batch in batches:
            yield _forward_tensor(net, torch.as_tensor(batch).to(device), device, precision).cpu().numpy()
        return
    # --- GPU path (not run here: no GPU on this project's machine) ---------------------
    dev = torch.device(device)
    copy_stream = torch.cuda.Stream(dev)
    compute = torch.cuda.current_stream(dev)
    pending = None  # (pinned host result, CUDA event) of the previous batch
    for batch in batches:
        host = torch.as_tensor(batch).pin_memory()
        with torch.cuda.stream(copy_stream):
            x = host.to(dev, non_blocking=True)
        compute.wait_stream(copy_stream)  # the forward waits for its own copy only
        x.record_stream(compute)
        probs = _forward_tensor(net, x, device, precision)
        out = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
        out.copy_(probs, non_blocking=True)
        done = torch.cuda.Event()
        done.record(compute)
        if pending is not None:
            pending[1].synchronize()
            yield pending[0].numpy()
        pending = (out, done)
    if pending is not None:
        pending[1].synchronize()
        yield pending[0].numpy()
