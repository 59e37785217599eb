"""Errors that the CLI reports as one line: the file and the problem."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class GeounetError(Exception):
    """A user-facing error about one file (or setting): ``<path>: <problem>``."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):  # keep (path, problem) when pickled across Dask workers
        return (type(self), (self.path, self.problem))


class InputError(GeounetError):
    """The input scene cannot be used."""


class ModelError(GeounetError):
    """The model file is not a usable geounet model."""


class OutputError(GeounetError):
    """The output location cannot be written."""


class Interrupted(BaseException):
    """The run was asked to stop (SIGTERM, Ctrl-C): raised in the main thread so every clean-up runs.

    A ``BaseException``, like ``KeyboardInterrupt``, so that handlers of one scene's errors
    let it through. ``str()``: ``interrupted (SIGTERM)``; ``exit_code``: 128 + the signal number.
    """

    def __init__(self, signame: str = "SIGTERM", exit_code: int = 143) -> None:
        self.signame, self.exit_code = signame, exit_code
        super().__init__(f"interrupted ({signame})")

    @classmethod
    def of(cls, exc: BaseException) -> Interrupted:
        """``exc`` itself, or a ``KeyboardInterrupt`` as ``interrupted (Ctrl-C)`` (exit code 130)."""
        return exc if isinstance(exc, Interrupted) else cls("Ctrl-C", 130)


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded")


def scene_failure(path: str | Path, exc: BaseException, out_root: str | Path | None = None) -> GeounetError:
    """Any exception raised while processing one scene, as a one-line :class:`GeounetError` about it.

    A :class:`GeounetError` is returned as it is. A full disk (``ENOSPC``/``EDQUOT``, GDAL's
    write errors when ``out_root``'s file system has no space left, or the error text) becomes
    an :class:`OutputError` naming ``out_root``; ``MemoryError`` says so; anything else is an
    unexpected error with its type and first line, and a pointer to ``--debug``.
    """
    if isinstance(exc, GeounetError):
        return exc
    if is_disk_full(exc, out_root):
        where = out_root if out_root is not None else path
        return OutputError(where, f"no space left on device while writing the outputs of {path}: previous outputs kept")
    if isinstance(exc, MemoryError):
        return GeounetError(path, "out of memory: try a smaller --tile-size, --batch-size or fewer --workers")
    text = str(exc).strip().splitlines()
    first = text[0][:300] if text else ""
    return GeounetError(
        path,
        f"unexpected error: {type(exc).__name__}{': ' + first if first else ''} (rerun with --debug for the traceback)",
    )


def is_disk_full(exc: BaseException, out_root: str | Path | None) -> bool:
    """Whether ``exc`` (or what it was raised from) comes from a full disk, or ``out_root``'s file system is full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # the exception and its causes
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return True
        if any(t in str(e).lower() for t in _NO_SPACE_TEXT):
            return True
        e = e.__cause__ or e.__context__
    if out_root is None:  # GDAL often says only "Write failed" / "Read failed": look at the file system
        return False
    try:
        st = os.statvfs(out_root)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_BYTES


_FULL_BYTES = 1 << 20  # less than this free on the output's file system after a failure: it was full
