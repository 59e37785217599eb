"""Errors that the CLI reports as one line: the file and the problem."""

from __future__ import annotations

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
