"""``fedward report RUN_DIR``: a self-contained HTML page and its JSON for a study's runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedward.simulation.studyreport import ReportError, write_report


def command(
    run_dir: Annotated[
        Path, typer.Argument(help="A run folder (metrics.json), or a folder of run folders.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Where to write report.html and report.json.")
    ] = None,
) -> None:
    """Write report.html (inline plots, no external files) and report.json for RUN_DIR."""
    console = Console()
    try:
        page = write_report(run_dir, out=out)
    except ReportError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"wrote {page} and {page.with_suffix('.json')}", highlight=False)
