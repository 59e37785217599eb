"""The machine a model runs on: device, precision and backend from ``auto``, cores, per-backend defaults.

Nothing here imports torch unless a GPU may exist (or one is asked for), so a CPU run
through ONNX Runtime settles every ``auto`` without it.
"""

from __future__ import annotations

import importlib.util
import os


def may_have_cuda() -> bool:
    """False when this machine certainly has no CUDA GPU (Linux without NVIDIA or WSL GPU device nodes).

    Lets ``auto`` settle on the CPU without importing torch (seconds of start-up), so that a CPU
    run through ONNX Runtime never imports it.
    """
    if not os.path.isdir("/dev"):
        return True  # not Linux: ask torch
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"))


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device == "auto" and not may_have_cuda():
        return "cpu"
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU")
    return device


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (lower case); empty where there is none."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # int8 dot products in one instruction (ONNX Runtime's U8S8 kernels)


def has_vnni(flags: set[str] | None = None) -> bool:
    """Whether the CPU (``flags``: its feature flags; default :func:`cpu_flags`) has AVX-512 or AVX VNNI."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in VNNI_FLAGS)


def resolve_precision(device: str, precision: str = "auto", int8_ok: bool = False, training: bool = False) -> str:
    """'auto' -> fp16 on GPUs (bf16 for ``training``); on CPUs int8 or fp32 (ONNX Runtime), never bf16.

    Predicting on a GPU, fp16 autocast keeps fp32's class on more pixels than bf16 (its
    mantissa is 3 bits longer) and ran as fast (``benchmarks/gpu.py``, benchmarks/README.md);
    a batch that overflows fp16's range is computed again in fp32
    (:func:`geounet.models.torch_backend.iter_probabilities`). Training keeps bf16: fp16
    gradients would need loss scaling. GPUs without bf16 train in fp16.

    Without native bf16 (AVX2) torch emulates it, several times slower than fp32. With
    AVX-512 BF16 (an AMD EPYC) and with AMX tiles (an Intel Xeon), bf16 on torch was slower
    end to end than fp32 on ONNX Runtime, and int8 faster than both (docs/cli.md holds the
    measurements). ``int8_ok``: the model has an int8 version whose record says it kept
    pixel IoU within 0.01 of fp32 and ran faster (``geounet.models.quantize.Int8Record.auto_ok``);
    auto takes it on a CPU with VNNI (without it, ONNX Runtime's int8 kernels lose their edge).
    """
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if training and torch.cuda.is_bf16_supported() else "fp16"
    return "int8" if int8_ok and has_vnni() else "fp32"


BACKENDS = ("auto", "torch", "onnx")


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported here (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_backend(device: str, precision: str, backend: str = "auto") -> str:
    """'auto' -> 'onnx' (ONNX Runtime) for fp32 or int8 on the CPU when onnxruntime is installed, else 'torch'.

    ``device`` and ``precision`` are resolved ones. ONNX Runtime runs here in fp32 and
    int8 on the CPU only; GPUs and autocast (bf16, fp16) use torch. int8 (the model's
    quantized ONNX file) runs on ONNX Runtime only.
    """
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision == "int8":
        if device != "cpu":
            raise ValueError(f"--precision int8 runs on the CPU only (asked: device {device})")
        if backend == "torch":
            raise ValueError("--precision int8 runs on ONNX Runtime only (--backend onnx or auto, not torch)")
        if not onnxruntime_available():
            raise ValueError("--precision int8 needs onnxruntime (pip install onnxruntime)")
        return "onnx"
    if backend == "torch":
        return backend
    fits = device == "cpu" and precision == "fp32"
    if backend == "onnx":
        if not fits:
            raise ValueError(
                f"--backend onnx runs fp32 on the CPU only (asked: device {device}, precision {precision})"
            )
        if not onnxruntime_available():
            raise ValueError("--backend onnx needs onnxruntime (pip install onnxruntime)")
        return backend
    return "onnx" if fits and onnxruntime_available() else "torch"


MAX_AUTO_WORKERS = 4  # chunk tasks at once on one CPU machine: each holds a batch's activations


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or a batch job's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str, backend: str) -> int:
    """Chunk tasks run at once in a local run when ``--workers`` is not given.

    ONNX Runtime on the CPU: one task per core (at most ``MAX_AUTO_WORKERS``), each
    session with the remaining cores (``threads_per_task``). On 2 cores, 2 tasks x 1
    thread beat 1 task x 2 threads end to end: one task's reading, normalising and
    blending overlap with the other's model calls (benchmarks/README.md). A GPU: as many
    tasks (threads sharing the model), since the model is nearly free there and one task
    leaves the CPU stages on one core (on an H200 with 16 cores, one task kept 1.4 cores
    busy: ``benchmarks/gpu_e2e.py``). torch on the CPU: one task; torch's own threads use
    the cores.
    """
    if (device == "cpu" and backend == "onnx") or device.startswith("cuda"):
        return min(cpu_cores(), MAX_AUTO_WORKERS)
    return 1


def default_batch_size(device: str, backend: str) -> int:
    """Tiles per model call when ``--batch-size`` is not given.

    ONNX Runtime on the CPU: 1. Tiles per second do not depend on the batch there, and
    one tile per call needs a fraction of the memory of four and was no slower
    (benchmarks/README.md). torch (GPUs, autocast): 4.
    """
    return 1 if device == "cpu" and backend == "onnx" else 4


def default_chunk_pixels(device: str, backend: str, stride: int) -> int:
    """Target chunk side (pixels) when not given; a chunk, the unit of one task, is whole tiles.

    ONNX Runtime on the CPU: one tile (``stride`` = tile size - overlap). Calls are one
    tile each there, so larger chunks only make the last tasks of a scene run on fewer
    cores than there are (benchmarks/README.md). torch: 2048 px, whole batches.
    """
    return stride if device == "cpu" and backend == "onnx" else 2048


def threads_per_task(worker=None) -> int:
    """CPU threads for one task's model calls: the cores divided by the Dask worker's task threads.

    ``worker``: the Dask worker (default: the one running this task; none: all cores).
    """
    if worker is None:
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):  # not inside a Dask task
            pass
    nthreads = getattr(getattr(worker, "state", None), "nthreads", 1) or 1
    return max(1, cpu_cores() // nthreads)
