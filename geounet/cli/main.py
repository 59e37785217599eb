"""The ``geounet`` command: registers one subcommand per module."""

from __future__ import annotations

import logging
import os
import sys
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub at run time

import typer

from geounet import __version__
from geounet.cli import damage, evaluate, info, models, predict, quantize, run, train, view
from geounet.cli.logs import DEBUG, enable_debug
from geounet.errors import scene_failure

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="geounet: GeoTIFF scenes -> U-Net -> seamless georeferenced rasters.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"geounet {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", help="Log at debug level, with the traceback of every error (before the subcommand)."
    ),
    version: bool = typer.Option(
        False, "--version", "-V", callback=_print_version, is_eager=True, help="Print geounet's version and exit."
    ),
) -> None:
    """geounet: GeoTIFF scenes -> U-Net -> seamless georeferenced rasters."""
    if debug:
        enable_debug()


app.command("predict")(predict.predict)
app.command("run")(run.run)
app.command("damage", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(damage.damage)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("quantize")(quantize.quantize)
app.command("info")(info.info)
app.command("models")(models.models)
app.command("view")(view.view)


def main() -> None:
    """Console entry point: run the command, then leave without the interpreter's teardown.

    Every output is closed (and renamed into place) before a command returns, so
    nothing is left to finalize; tearing down torch, smp and Dask module by module
    only costs time (benchmarks/README.md, "Design measurements"). Logging and
    the standard streams are flushed, and the exit code is the command's.
    """
    # a log file that cannot be written (a full disk) must not print logging's own tracebacks
    logging.raiseExceptions = "--debug" in sys.argv[1:2]
    try:
        app()  # click ends every command with sys.exit
        code = 0
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        code = 130
    except Exception as exc:  # noqa: BLE001 - one line unless --debug: the traceback then
        if DEBUG["on"]:
            traceback.print_exc()
        print(f"error: {scene_failure('geounet', exc)}", file=sys.stderr)
        code = 1
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
