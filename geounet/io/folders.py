"""Output folders that appear complete or not at all: written under a hidden temporary name, then renamed.

``OUTDIR/.<name>.partial-<pid>`` is where a scene's outputs are written; :func:`replace_dir`
moves it to ``OUTDIR/<name>`` in one rename (an older folder is moved aside first and
removed after). A killed run leaves only hidden folders, which ``geounet.batch.locks``
cleans up.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from geounet.errors import OutputError


def output_dir_for(scene: str | Path, out_root: str | Path) -> Path:
    """``OUTDIR/<scene stem>``: the stem is a bare file name, so it cannot leave OUTDIR."""
    stem = Path(scene).name.split(".")[0] or "scene"
    return Path(out_root) / stem


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a complete output folder into place; an older one is removed only after."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_root(out_root: str | Path) -> Path:
    """Create ``out_root`` if needed and prove it writable; one-line :class:`OutputError` otherwise."""
    out = Path(out_root)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".geounet-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(out, f"cannot write output folder ({exc.strerror or exc})") from None
    return out


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A new hidden ``.<name>.partial-<pid>`` folder beside ``final``, removed if the block fails.

    The caller moves the finished contents into place (:func:`replace_dir`, :func:`publish_files`).
    """
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    try:
        tmp.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise OutputError(final.parent, f"cannot write output folder ({exc.strerror or exc})") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_files(tmp: Path, dest: Path, names: Sequence[str], last: str) -> None:
    """Move finished files from ``tmp`` into the existing folder ``dest``; ``last`` (the completeness mark) last.

    ``dest/last`` is removed first, so a folder whose mark is present is complete; ``tmp`` is removed after.
    """
    (dest / last).unlink(missing_ok=True)
    for name in names:
        os.replace(tmp / name, dest / name)
    os.replace(tmp / last, dest / last)
    shutil.rmtree(tmp, ignore_errors=True)
