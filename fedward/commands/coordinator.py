"""``fedward coordinator``: run the coordinator's REST API, or migrate its database.

Settings come from ``FEDWARD_*`` environment variables (see
:class:`coordinator.settings.CoordinatorSettings`); the options below override
them. The operator token is required and is best passed as a file
(``--operator-token-file``) or ``FEDWARD_OPERATOR_TOKEN``, not on the command
line, where it would land in the shell history and the process list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from coordinator.settings import DEFAULT_DATABASE_URL, CoordinatorSettings

app = typer.Typer(help="Run or maintain the live coordinator.", no_args_is_help=True)
console = Console(stderr=True)


def _settings(**overrides: Any) -> CoordinatorSettings:
    token_file: Path | None = overrides.pop("operator_token_file", None)
    values = {k: v for k, v in overrides.items() if v is not None}
    if token_file is not None:
        values["operator_token"] = token_file.read_text(encoding="utf-8").strip()
    try:
        return CoordinatorSettings(**values)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            console.print(f"[red]{where}[/red]: {err['msg']}")
        raise typer.Exit(code=2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="TCP port.")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="sqlite:///path.db or postgresql+psycopg://user@host/db")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Model blobs, audit log and its signing key.")
    ] = None,
    operator_token_file: Annotated[
        Path | None, typer.Option(help="File holding the operator API token.", exists=True)
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Migrate the database to head and serve the operator API (uvicorn)."""
    import uvicorn

    from coordinator.api import create_app

    settings = _settings(
        api_host=host,
        api_port=port,
        database_url=database_url,
        data_dir=data_dir,
        operator_token_file=operator_token_file,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=log_level,
    )


@app.command()
def migrate(
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="FEDWARD_DATABASE_URL",
            help=f"Database to upgrade (default: {DEFAULT_DATABASE_URL}).",
        ),
    ] = None,
) -> None:
    """Upgrade the coordinator's database schema to the newest revision."""
    from coordinator.migrations import current_revision, head_revision, upgrade_to_head
    from coordinator.store import create_db_engine

    engine = create_db_engine(database_url or DEFAULT_DATABASE_URL)
    try:
        before = current_revision(engine)
        upgrade_to_head(engine)
        console.print(f"database at revision {head_revision()} (was {before or 'empty'})")
    finally:
        engine.dispose()
