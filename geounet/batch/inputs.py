"""A batch's scenes: globs and list files expanded when the config is loaded, a watch folder read at run time."""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from geounet.io.remote import as_scene, is_remote

log = logging.getLogger("geounet")

SCENE_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")  # a watch folder's scenes (default)


@dataclass
class WatchSpec:
    """A folder whose scene files are taken when they have not changed for a while (``inputs.watch``)."""

    folder: Path
    pattern: str | None = None  # fnmatch pattern; None: any of SCENE_SUFFIXES
    settle_seconds: float = 60.0  # files modified more recently may still be being copied: left for next run


def absolute(base: Path, path: str | Path) -> Path:
    """``path`` (``~`` expanded) made absolute against ``base``, ``..`` folded (symlinks kept)."""
    return Path(os.path.normpath(base / os.path.expanduser(str(path))))


def expand(patterns: Iterable[str], base: Path, where: str, problems: list[str]) -> list[str | Path]:
    """Files matching the globs (relative to ``base``); a literal path that does not exist is a problem.

    A wildcard that matches nothing is not an error (a cron run may find no new scenes).
    ``where`` names the setting in problems and warnings. A remote scene (URL, ``/vsi...``:
    :mod:`geounet.io.remote`) is kept as it is, unchecked: it fails alone when read.
    """
    found: list[str | Path] = []
    for pattern in patterns:
        if is_remote(pattern):
            found.append(str(pattern))
            continue
        full = str(absolute(base, pattern))
        if glob.has_magic(pattern):
            hits = sorted(Path(p) for p in glob.glob(full, recursive=True) if Path(p).is_file())
            if not hits:
                log.warning("%s: %s matches no file", where, pattern)
            found += hits
        elif Path(full).is_file():
            found.append(Path(full))
        else:
            problems.append(f"{where}: {full}: {'is a folder, not a file' if Path(full).is_dir() else 'not found'}")
    return found


def read_list_file(path: Path, problems: list[str]) -> list[str | Path]:
    """The scenes a list file names (one path or glob per line, relative to the file; ``#`` comments)."""
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    except OSError as exc:
        problems.append(f"inputs.list_file: {path}: {exc.strerror or exc}")
        return []
    entries = [ln for ln in lines if ln and not ln.startswith("#")]
    return expand(entries, path.parent, f"inputs.list_file {path.name}", problems)


def settled_scenes(watch: WatchSpec, now: float | None = None) -> list[Path]:
    """The watch folder's scene files (by name) not modified in the last ``settle_seconds``.

    ``now``: the time to compare modification times with (seconds since the epoch; default: now).
    """
    if not watch.folder.is_dir():
        return []
    now = time.time() if now is None else now
    scenes = []
    for entry in sorted(os.scandir(watch.folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if watch.pattern:
            if not Path(entry.name).match(watch.pattern):
                continue
        elif not entry.name.lower().endswith(SCENE_SUFFIXES):
            continue
        if now - entry.stat().st_mtime < watch.settle_seconds:
            log.info(
                "%s: modified less than %g s ago, may still be being copied: left for the next run",
                entry.path,
                watch.settle_seconds,
            )
            continue
        scenes.append(Path(entry.path))
    return scenes


def discover_inputs(globs: Iterable[str | Path], watch: WatchSpec | None, now: float | None = None) -> list[str | Path]:
    """The scenes of a run: the expanded ``globs`` plus the watch folder's settled scenes; absolute, unique.

    A remote scene stays its string (watch folders are local only).
    """
    scenes = [as_scene(p) for p in globs]
    if watch is not None:
        scenes += settled_scenes(watch, now)
    unique: dict[str | Path, str | Path] = {}
    for p in scenes:
        if isinstance(p, Path):
            unique.setdefault(p.resolve(), p.absolute())
        else:
            unique.setdefault(p, p)
    return list(unique.values())
