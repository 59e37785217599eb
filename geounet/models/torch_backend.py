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


AUTOCAST = ("bf16", "fp16")


def _or_fp32(net, x, probs: np.ndarray, finite: bool, device: str, precision: str) -> np.ndarray:
    """``probs``, or the batch ``x`` again in fp32 where autocast overflowed (fp16's range ends at 65504)."""
    if precision in AUTOCAST and not finite:
        return _forward_tensor(net, x, device, "fp32").cpu().numpy()
    return probs


def iter_probabilities(net, batches: Iterator, device: str, precision: str) -> Iterator[np.ndarray]:
    """Class probabilities for each batch ``(n, bands, h, w)`` of ``batches``, in order.

    A batch is a normalised float32 array or CPU tensor (any memory format). A batch whose
    bf16/fp16 probabilities are not all finite is computed again in fp32.

    On the CPU each batch is computed when asked for. On a CUDA device the work is
    pipelined: batches are copied from pinned host memory on a side stream and results
    back on another, and each result is handed back one batch late, so that while the
    GPU computes batch i the caller blends batch i-1 and this generator reads and stacks
    batch i+1 and starts its copy. Under autocast the finiteness check runs on the GPU
    and travels back with the result, so it adds no wait (``benchmarks/gpu.py`` measures
    this branch on a GPU).
    """
    import torch

    autocast = precision in AUTOCAST
    if not device.startswith("cuda"):
        for batch in batches:
            x = torch.as_tensor(batch).to(device)
            probs = _forward_tensor(net, x, device, precision)
            finite = not autocast or bool(torch.isfinite(probs).all())
            yield _or_fp32(net, x, probs.cpu().numpy(), finite, device, precision)
        return
    # --- GPU path (benchmarks/gpu.py) -----------------------------------------------------
    dev = torch.device(device)
    copy_in, copy_out = torch.cuda.Stream(dev), torch.cuda.Stream(dev)  # one per direction: two copy engines
    compute = torch.cuda.current_stream(dev)
    pending = None  # (pinned host result, its finiteness or None, CUDA event, device input) of the previous batch
    for batch in batches:
        host = torch.as_tensor(batch).pin_memory()
        with torch.cuda.stream(copy_in):
            x = host.to(dev, non_blocking=True)
        compute.wait_stream(copy_in)  # the forward waits for its own copy only
        x.record_stream(compute)
        probs = _forward_tensor(net, x, device, precision)
        copy_out.wait_stream(compute)  # the result goes back while the next batch computes
        out = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
        flag = torch.empty(1, dtype=torch.bool, pin_memory=True) if autocast else None
        with torch.cuda.stream(copy_out):
            out.copy_(probs, non_blocking=True)
            if flag is not None:
                flag.copy_(torch.isfinite(probs).all().reshape(1), non_blocking=True)
        probs.record_stream(copy_out)
        done = torch.cuda.Event()
        done.record(copy_out)
        if pending is not None:
            yield _settled(net, pending, device, precision)
        pending = (out, flag, done, x)
    if pending is not None:
        yield _settled(net, pending, device, precision)


def _settled(net, pending: tuple, device: str, precision: str) -> np.ndarray:
    """A pipelined batch's probabilities once its event has passed (fp32 again if autocast overflowed)."""
    out, flag, done, x = pending
    done.synchronize()
    return _or_fp32(net, x, out.numpy(), flag is None or bool(flag[0]), device, precision)
