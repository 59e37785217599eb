"""SIGTERM and Ctrl-C for the commands that write outputs: clean up, say it in one line, exit 143 / 130.

While :func:`stop_on_sigterm` is active, SIGTERM raises :class:`~geounet.errors.Interrupted`
in the main thread, as Ctrl-C raises ``KeyboardInterrupt``: the staging folders'
context managers remove the partial outputs (and put previous outputs back), scene locks
are released, and ``geounet run`` records the scene as interrupted. (A process that is
PID 1, in a container, would otherwise ignore SIGTERM altogether.)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import typer

from geounet.errors import Interrupted


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """For the block: the first SIGTERM raises :class:`Interrupted`, later ones are ignored (clean-up runs).

    Outside the main thread (where Python cannot handle signals) it does nothing. The
    previous handler is restored after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not fired:
            fired.append(signum)
            raise Interrupted("SIGTERM", 128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_exit(exc: BaseException) -> typer.Exit:
    """Say that the command was interrupted (one line on stderr); the exit to raise: 143 (SIGTERM) or 130 (Ctrl-C)."""
    stop = Interrupted.of(exc)
    typer.echo(f"error: {stop}", err=True)
    return typer.Exit(stop.exit_code)
