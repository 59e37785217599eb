"""``geounet damage --pre PRE.tif [...] --post POST.tif [...] [--footprints F] --out OUTDIR``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from geounet.cli.interrupts import interrupted_exit, stop_on_sigterm
from geounet.cli.logs import setup_logging
from geounet.damage.settings import DamageSettings
from geounet.errors import GeounetError, Interrupted
from geounet.io.folders import recover_interrupted
from geounet.io.locks import SceneLock, locked_reason
from geounet.io.remote import as_scene
from geounet.models.registry import DEFAULT_NAME
from geounet.schema import ConfigError, read_yaml

# --pre and --post take several files each (``--pre a.tif b.tif``), which click options
# cannot: they are parsed from the extra arguments, in order.
CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def split_epochs(args: list[str]) -> tuple[list[str | Path], list[str | Path]]:
    """``--pre A B --post C D`` (or ``--pre=A``, repeated flags) -> ([A, B], [C, D]); URLs stay strings."""
    epochs: dict[str, list[str | Path]] = {"--pre": [], "--post": []}
    current = None
    for a in args:
        flag, _, value = a.partition("=")
        if flag in epochs:
            current = flag
            if value:
                epochs[flag].append(as_scene(value))
        elif a.startswith("-"):
            raise GeounetError(None, f"unknown option {a!r} (see geounet damage --help)")
        elif current is None:
            raise GeounetError(None, f"{a}: give scenes after --pre or --post")
        else:
            epochs[current].append(as_scene(a))
    for flag, paths in epochs.items():
        if not paths:
            raise GeounetError(None, f"{flag}: give at least one scene")
    return epochs["--pre"], epochs["--post"]


def damage(
    ctx: typer.Context,
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder: damage.gpkg, change.tif, quicklook.png, run.json, web/."
    ),
    footprints: Path | None = typer.Option(
        None,
        "--footprints",
        "-f",
        help="Building footprints (GeoPackage, GeoJSON, any CRS); default: detect them "
        "with the model on the pre scene.",
    ),
    model: str = typer.Option(
        DEFAULT_NAME,
        "--model",
        "-m",
        help="A bundled buildings model's name (its variant closest to the pre scene's resolution) "
        "or a .safetensors file.",
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML with a damage: section (thresholds, tiling), e.g. pipelines/damage.yaml."
    ),
    device: str | None = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: config, else auto)."),
    web: bool | None = typer.Option(
        None,
        "--web/--no-web",
        help="Write web/, a map of the run that needs no internet (geounet view OUTDIR serves it); "
        "default: the config's web:, else on.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
) -> None:
    """Grade every building for damage from pre- and post-event scenes.

    Usage: geounet damage --pre PRE.tif [PRE2.tif ...] --post POST.tif [POST2.tif ...]
    [--footprints FOOTPRINTS.gpkg] --out OUTDIR. Several tiles per epoch are mosaicked
    (VRT); post is warped onto the pre grid; only the overlap is assessed.
    Exit codes: 0 done; 2 bad input (one line, nothing written).
    """
    from geounet.damage.run import run_damage
    from geounet.engine.predict import resolve_model

    setup_logging(quiet)
    try:
        pre, post = split_epochs(list(ctx.args))
        settings = damage_settings(config, device, quiet)
        if web is not None:
            settings.web = web
        model_path, requested = resolve_model(model, pre[0]) if pre else (Path(model), None)
        if requested is not None:  # a name: the variant for the pre scene's resolution
            logging.getLogger("geounet").info("model %s: variant %s for the pre scene", requested, model_path.stem)
        with stop_on_sigterm(), _damage_lock(out):  # SIGTERM, like Ctrl-C: partial outputs removed
            run_damage(pre, post, out, footprints, model_path, settings)  # logs the counts per grade
    except (Interrupted, KeyboardInterrupt) as exc:
        raise interrupted_exit(exc) from None
    except (GeounetError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def _damage_lock(out: Path) -> Iterator[None]:
    """``OUT/.damage.lock`` held for the run (as ``geounet run``'s damage task), and a killed run's leftovers cleaned."""
    if not out.is_dir():  # nothing to lock or clean yet: the run creates the folder
        yield
        return
    lock = SceneLock(out / ".damage.lock")
    if not lock.acquire():
        raise GeounetError(out, locked_reason(lock))
    with lock:
        for what in recover_interrupted(out, "damage"):
            logging.getLogger("geounet").warning("damage: after an interrupted run: %s", what)
        yield


def damage_settings(config: Path | None, device: str | None, quiet: bool) -> DamageSettings:
    """The ``damage:`` section of ``config`` (or the whole file when it has none), with the command line's
    ``--device`` and ``--quiet`` over it; every problem of the section in one :class:`ConfigError`."""
    section: Any = {}
    if config is not None:
        raw = read_yaml(config)
        section = raw.get("damage", raw)
    if isinstance(section, dict):
        section = section | {k: v for k, v in (("device", device), ("quiet", quiet or None)) if v is not None}
    settings, problems = DamageSettings.check(section, "damage")
    if device is not None:  # the command line's value: named as the user gave it
        problems = [p.replace("damage.device:", "--device:", 1) for p in problems]
    if problems:
        raise ConfigError(config, problems)
    assert settings is not None
    return settings
