"""Shared by the benchmarks: run a command and measure it; scenes and a tiny model to run."""

from __future__ import annotations

import os
import resource
import subprocess
import time

import psutil


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run ``cmd``; return (seconds, peak RSS in MiB summed over the process and its descendants)."""
    seconds, _, peak = run_measured_cpu(cmd, env)
    # the kernel's high-water mark of the largest single child catches spikes between samples
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return seconds, max(peak, maxrss / 2**20)


def run_measured_cpu(cmd: list[str], env: dict | None = None) -> tuple[float, float, float]:
    """Run ``cmd``; return (seconds, CPU seconds, peak RSS in MiB), both over the process and all its descendants.

    CPU is each process's last sampled ``cpu_times`` (every 0.1 s, so a process that lives
    less than that may be missed), which counts worker processes that the command's own
    process never waits for (a forkserver's children) and that ``RUSAGE_CHILDREN`` misses.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=os.environ | {"HF_HUB_OFFLINE": "1"} | (env or {}))
    root = psutil.Process(proc.pid)
    peak, cpu_by_pid = 0, {}
    while proc.poll() is None:
        try:
            total = 0
            for p in [root] + root.children(recursive=True):
                try:
                    with p.oneshot():
                        total += p.memory_info().rss
                        t = p.cpu_times()
                    cpu_by_pid[p.pid] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, total)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with exit code {proc.returncode}")
    return seconds, sum(cpu_by_pid.values()), peak / 2**20


def write_repeated(path, block, size: int, profile: dict, step: int = 2048):
    """Write a size x size scene by repeating ``block`` (bands, >= step, >= step), one step x step window at a time."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path, "w", **(profile | {"width": size, "height": size})) as dst:
        for r in range(0, size, step):
            for c in range(0, size, step):
                h, w = min(step, size - r), min(step, size - c)
                dst.write(block[:, :h, :w], window=Window(c, r, w, h))
    return path


def tiny_model(path, resolution_m: float):
    """A tiny random-weight RGB buildings U-Net (resnet18 depth 3, decoder 16/8/4) at ``resolution_m``.

    Cheap enough that the pipeline around it is what a benchmark measures; weights seeded.
    """
    import torch

    from geounet.models.card import ClassInfo, ModelCard
    from geounet.models.network import build_network, save_model

    card = ModelCard(
        name="bench-tiny",
        classes=[ClassInfo("background", (0, 0, 0), "background"), ClassInfo("building", (230, 60, 60), "building")],
        bands=[1, 2, 3],
        band_names=["red", "green", "blue"],
        mean=[0.45] * 3,
        std=[0.25] * 3,
        scale=255.0,
        input_dtypes=["uint8"],
        resolution_m=resolution_m,
        tile_size=512,
        overlap=64,
        encoder="resnet18",
        encoder_depth=3,
        decoder_channels=[16, 8, 4],
    )
    torch.manual_seed(0)
    save_model(path, build_network(card), card)
    return path
