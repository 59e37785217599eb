"""``geounet view OUTDIR [--port N] [--open]``: serve an output folder's web map on loopback and print its URL."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from geounet.cli.logs import setup_logging
from geounet.errors import GeounetError
from geounet.web.folder import WEB
from geounet.web.page import INDEX
from geounet.web.server import LOOPBACK, map_page, serve


def view(
    folder: Path = typer.Argument(..., help="An output folder with a web/ map (a scene's folder, or a damage run's)."),
    port: int = typer.Option(0, "--port", "-p", help="Port on 127.0.0.1 (default: a free one)."),
    open_browser: bool = typer.Option(False, "--open", help="Also open the map in the default web browser."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the URL."),
) -> None:
    """Serve FOLDER on 127.0.0.1 (static files with byte ranges) and print the map's URL; Ctrl-C stops.

    Exit codes: 0 stopped with Ctrl-C; 2 not a geounet output folder, no web/ map, or the port is taken.
    """
    setup_logging(quiet)
    try:
        map_page(folder)
        server = serve(folder, port)
    except GeounetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    url = f"http://{LOOPBACK}:{server.server_port}/{WEB}/{INDEX}"
    print(url, flush=True)
    if not quiet:
        print(f"serving {folder.resolve()} on {LOOPBACK} only; Ctrl-C stops", file=sys.stderr, flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
