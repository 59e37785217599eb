"""Class probabilities from a torch network: autocast, channels_last, pipelined copies on CUDA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


def forward_probabilities(net, batch: np.ndarray, device: str, precision: str) -> np.ndarray:
    """Normalised input ``(n, bands, h, w)`` float32 -> class probabilities ``(n, classes, h, w)`` float32."""
    return next(iter_probabilities(net, iter([batch]), device, precision))


def normaliser(gain: np.ndarray, offset: np.ndarray, device: str) -> Callable[[Any, Any], Any]:
    """``f(raw, ok)``: raw DN tensor ``(n, bands, h, w)`` + valid mask ``(n, h, w)`` on ``device`` ->
    normalised float32 batch there, channels_last.

    ``gain``, ``offset``: per-band float32 (:func:`~geounet.models.card.normalisation`): DN * gain
    - offset, then 0 (the band mean) where a pixel is invalid, so nodata does not disturb its
    neighbours. As ``iter_probabilities``' ``prepare``, the DNs travel and this runs on the device.
    """
    import torch

    g, o = (torch.from_numpy(a).to(device).view(1, -1, 1, 1) for a in (gain, offset))

    def normalised(raw, ok):
        x = torch.empty(raw.shape, dtype=torch.float32, device=raw.device).contiguous(memory_format=torch.channels_last)
        x.copy_(raw)
        x.mul_(g).sub_(o)
        if raw.device.type != "cpu" or not bool(ok.all()):  # on a GPU always: asking would wait for it
            x.masked_fill_(~ok[:, None], 0.0)
        return x

    return normalised


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


def iter_probabilities(
    net, batches: Iterator, device: str, precision: str, prepare: Callable[..., Any] | None = None
) -> Iterator[np.ndarray]:
    """Class probabilities for each batch ``(n, bands, h, w)`` of ``batches``, in order.

    A batch is a normalised float32 array or CPU tensor (any memory format); or, with
    ``prepare``, a tuple of host arrays that are copied to the device as they are (raw DNs
    and masks: a quarter of float32's bytes for uint8 scenes), where ``prepare(*tensors)``
    makes the network's input. A batch whose bf16/fp16 probabilities are not all finite is
    computed again in fp32.

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
            if prepare is None:
                x = torch.as_tensor(batch).to(device)
            else:
                x = prepare(*(torch.as_tensor(a).to(device) for a in batch))
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
        hosts = [torch.as_tensor(a).pin_memory() for a in (batch if prepare is not None else (batch,))]
        with torch.cuda.stream(copy_in):
            copied = [h.to(dev, non_blocking=True) for h in hosts]
        compute.wait_stream(copy_in)  # the forward waits for its own copy only
        for t in copied:
            t.record_stream(compute)
        x = prepare(*copied) if prepare is not None else copied[0]  # queued on the compute stream
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
