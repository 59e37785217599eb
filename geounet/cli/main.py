"""The ``geounet`` command: registers one subcommand per module."""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub at run time

import typer

from geounet.cli import info, predict

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="geounet: GeoTIFF scenes -> U-Net -> seamless georeferenced rasters.",
)
app.command("predict")(predict.predict)
app.command("info")(info.info)
app.command("evaluate")(__import__("geounet.cli.evaluate", fromlist=["evaluate"]).evaluate)
app.command("run")(__import__("geounet.cli.run", fromlist=["run"]).run)  # pipeline configs (runner)
app.command("damage", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(__import__("geounet.cli.damage", fromlist=["damage"]).damage)  # damage runs
try:  # training lives in its own module; registered when present
    from geounet.cli import train

    app.command("train")(train.train)
except ImportError:  # pragma: no cover
    pass


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(quiet: bool) -> None:
    """geounet's own messages on stderr; Dask's cluster chatter only when it is an error."""
    log = logging.getLogger("geounet")
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("geounet: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    # dask.distributed sets its loggers' levels from Dask's config when it is imported,
    # which a local run does late or never (geounet.local): the config says them first.
    # distributed.client: a lost scheduler is reported once, as one line (pipeline.ClusterError),
    # not as its reconnect traceback.
    os.environ.setdefault("DASK_LOGGING", repr({"distributed": "error", "distributed.client": "critical"}))
    for noisy in ("distributed", "tornado", "bokeh"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main() -> None:
    """Console entry point: run the command, then leave without the interpreter's teardown.

    Every output is closed (and renamed into place) before a command returns, so
    nothing is left to finalize; tearing down torch, smp and Dask module by module
    only costs time (measured 0.9-1.1 s per run, benchmarks/README.md). Logging and
    the standard streams are flushed, and the exit code is the command's.
    """
    try:
        app()  # click ends every command with sys.exit
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:  # sys.exit("message"): as the interpreter would, print it and exit 1
            print(exc.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``geounet info ... | head``)
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
