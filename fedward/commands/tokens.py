"""``fedward tokens``: issue, list and revoke REST API tokens from the coordinator's host.

Why a host command besides ``POST /v1/tokens``: the first admin, researcher and
auditor tokens of a deployment, and a way back in when every admin token is
lost or expired, without putting the bootstrap ``operator_token`` to daily use.
It writes the coordinator's database directly (migrating it first) and records
each issue and revocation in the audit log under ``admin:cli@<user>``. The log
has one writer: while the coordinator runs it holds the log, so this command
refuses (exit 3) and says to use the API, rather than act unaudited.

A token is printed once; only its SHA-256 is stored.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedward.compliance import AuditLog, AuditStoreBusy, load_or_create_signing_key
from fedward.coordinator import audit
from fedward.coordinator.access import Role, TokenError, TokenStore
from fedward.coordinator.access.tokens import DEFAULT_LIFETIME_S
from fedward.coordinator.migrations import upgrade_to_head
from fedward.coordinator.settings import DEFAULT_DATABASE_URL
from fedward.coordinator.store import create_db_engine
from fedward.coordinator.store.audit_trail import AuditTrail
from fedward.coordinator.store.tokens import TokenRepository

app = typer.Typer(help="REST API tokens (roles admin, researcher, auditor).", no_args_is_help=True)
err = Console(stderr=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(help="The coordinator's database (default: FEDWARD_DATABASE_URL or its default)."),
]
DataDir = Annotated[
    Path | None,
    typer.Option(help="The coordinator's data dir: audit log and key (default: FEDWARD_DATA_DIR)."),
]


def _actor() -> str:
    user = "".join(c for c in getpass.getuser() if c.isalnum() or c in "_.-")[:32] or "unknown"
    return f"admin:cli@{user}"


@contextmanager
def _opened(
    database_url: str | None, data_dir: Path | None
) -> Iterator[tuple[TokenStore, AuditTrail]]:
    url = database_url or os.environ.get("FEDWARD_DATABASE_URL", DEFAULT_DATABASE_URL)
    folder = data_dir or Path(os.environ.get("FEDWARD_DATA_DIR", "./fedward-data"))
    key_path = folder / "keys" / "audit-signing-key.pem"
    log_path = folder / "audit" / "coordinator.jsonl"
    password = os.environ.get("FEDWARD_AUDIT_KEY_PASSWORD")
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        log = AuditLog.open(
            log_path,
            signing_key=load_or_create_signing_key(
                key_path, password=password.encode() if password else None
            ),
            clock=time.time,
        )
    except AuditStoreBusy:
        err.print(
            "[yellow]the coordinator is running[/] and is the audit log's only writer: "
            "issue or revoke through its API (POST /v1/tokens, POST /v1/tokens/{id}/revoke) "
            "with an admin token, so the act is audited"
        )
        raise typer.Exit(code=3) from None
    engine = create_db_engine(url)
    try:
        upgrade_to_head(engine)
        yield TokenStore(TokenRepository(engine), clock=time.time), AuditTrail(log)
    finally:
        log.close()
        engine.dispose()


@app.command("issue")
def issue(
    role: Annotated[Role, typer.Option(help="admin, researcher or auditor.")],
    name: Annotated[str, typer.Option(help="Who or what holds it (kept with the token).")],
    lifetime_days: Annotated[
        float, typer.Option(min=0.001, max=366, help="Days until it expires.")
    ] = DEFAULT_LIFETIME_S / 86_400,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Issue a token and print it (once: only its hash is kept)."""
    with _opened(database_url, data_dir) as (tokens, trail):
        try:
            issued = tokens.issue(
                role=role, name=name, lifetime_s=lifetime_days * 86_400, by=_actor()
            )
        except TokenError as exc:
            err.print(f"[red]refused:[/] {exc}")
            raise typer.Exit(code=2) from None
        info = issued.info
        trail.write(
            audit.token_issued(
                by=_actor(),
                token_id=info.id,
                role=info.role.value,
                name=info.name,
                expires_at=info.expires_at,
            ),
            study_id=None,
        )
    err.print(f"token {info.id} ({info.role.value}, {info.name}); shown once, store it now:")
    typer.echo(issued.token)


@app.command("list")
def list_tokens(database_url: DatabaseUrl = None, data_dir: DataDir = None) -> None:
    """Every token: id, role, name, state, expiry (never a secret)."""
    with _opened(database_url, data_dir) as (tokens, _):
        infos = tokens.list()
        now = tokens.now()
    table = Table(title="API tokens")
    for column in ("id", "role", "name", "state", "expires (UTC)", "created by"):
        table.add_column(column)
    for info in infos:
        expires = time.strftime("%Y-%m-%d %H:%M", time.gmtime(info.expires_at))
        table.add_row(
            info.id, info.role.value, info.name, info.state(now), expires, info.created_by
        )
    Console().print(table)


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (tk-...).")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Revoke a token for good (its next request is 401)."""
    with _opened(database_url, data_dir) as (tokens, trail):
        try:
            info = tokens.revoke(token_id, by=_actor())
        except TokenError as exc:
            err.print(f"[red]{exc}[/]")
            raise typer.Exit(code=2) from None
        trail.write(
            audit.token_revoked(by=_actor(), token_id=info.id, role=info.role.value),
            study_id=None,
        )
    err.print(f"token {info.id} revoked")
