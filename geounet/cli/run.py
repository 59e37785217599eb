"""``geounet run CONFIG``: run a pipeline config over its inputs (for cron: idempotent, locked, logged)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from geounet.cli.interrupts import interrupted_exit, stop_on_sigterm
from geounet.cli.logs import setup_logging
from geounet.errors import GeounetError, Interrupted

if TYPE_CHECKING:
    from geounet.batch.run import RunSummary


def run(
    config: Path = typer.Argument(..., help="Pipeline config (YAML), e.g. pipelines/buildings.yaml."),
    inputs: list[str] | None = typer.Option(
        None, "--inputs", "-i", help="Scene path or glob (quote it); repeatable. Replaces the config's inputs."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder; replaces the config's out."),
    force: bool = typer.Option(False, "--force", help="Recompute scenes even when their outputs are up to date."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress, warnings and the summary only (cron)."),
) -> None:
    """Run CONFIG: scenes whose outputs are up to date are skipped, failures do not stop the batch.

    Exit codes: 0 every scene done or skipped; 1 some scene failed; 2 bad config (nothing ran);
    143 stopped by SIGTERM, 130 by Ctrl-C (the scene running is recorded as interrupted, its
    partial outputs removed, the rest as not run). A summary and a log file are written to OUT/_runs/.
    """
    setup_logging(quiet)
    try:
        with stop_on_sigterm():
            summary = _run(config, inputs, out, force, quiet)
    except (Interrupted, KeyboardInterrupt) as exc:
        raise interrupted_exit(exc) from None
    for line in summary.lines(details=not quiet):
        typer.echo(line, err=True)
    if not summary.ok:
        raise typer.Exit(1)


def _run(config: Path, inputs: list[str] | None, out: Path | None, force: bool, quiet: bool) -> RunSummary:
    from geounet.batch.config import load_config
    from geounet.batch.run import run_pipeline
    from geounet.schema import ConfigError

    try:
        cfg = load_config(config, inputs=inputs, out=out)
    except ConfigError as exc:
        for line in exc.lines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    try:
        return run_pipeline(cfg, force=force, quiet=quiet)
    except (GeounetError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
