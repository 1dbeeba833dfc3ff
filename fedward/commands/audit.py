"""``fedward audit``: verify a coordinator's tamper-evident audit log.

An auditor needs only the log files and the coordinator's public key (hex, as
``GET /v1/...`` or the operator publishes it); an operator may instead point at
the data directory, whose signing key yields the public key, and record the
verification in the log itself (HIPAA 164.312(b): activity is examined).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedward.commands.audit_remote import check as remote_check
from fedward.compliance import Actor, ActorKind, AuditLog
from fedward.compliance.keys import load_signing_key, public_key_hex
from fedward.compliance.verify import verify_log

app = typer.Typer(help="Audit log verification.", no_args_is_help=True)


@app.command("verify")
def verify(
    data_dir: Annotated[
        Path | None, typer.Option(help="Coordinator data dir (log + signing key).")
    ] = None,
    log: Annotated[
        Path | None,
        typer.Option(help="Audit log JSONL (default: <data-dir>/audit/coordinator.jsonl)."),
    ] = None,
    public_key: Annotated[
        str | None, typer.Option(help="Ed25519 public key, 64 hex chars.")
    ] = None,
    record: Annotated[
        bool, typer.Option(help="Append a LOG_VERIFIED entry (needs the signing key).")
    ] = False,
    operator: Annotated[
        str, typer.Option(help="Who verifies (recorded with --record).")
    ] = "auditor",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON.")
    ] = None,
) -> None:
    """Recompute the hash chain and Merkle tree, check every signed tree head."""
    console = Console()
    if log is None and data_dir is None:
        raise typer.BadParameter("give --data-dir or --log")
    log_path = log or data_dir / "audit" / "coordinator.jsonl"  # type: ignore[operator]
    key_path = data_dir / "keys" / "audit-signing-key.pem" if data_dir else None
    if public_key:
        try:
            raw = bytes.fromhex(public_key)
        except ValueError as exc:
            raise typer.BadParameter("--public-key must be hex") from exc
    elif key_path is not None and key_path.exists():
        raw = bytes.fromhex(public_key_hex(load_signing_key(key_path)))
    else:
        raise typer.BadParameter("give --public-key, or --data-dir with the signing key")
    report = verify_log(log_path, raw)
    table = Table(title=f"audit log {log_path}")
    table.add_column("check")
    table.add_column("result")
    table.add_row("entries", str(report.entries))
    table.add_row("Merkle root", report.root)
    table.add_row("signed tree heads verified", str(report.sth_checked))
    table.add_row("entries after the last signed head", str(report.unsigned_entries))
    table.add_row(
        "verdict", "[green]intact[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
    )
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]-[/] {problem.model_dump_json()}")
    if json_path:
        json_path.write_text(json.dumps(report.model_dump(mode="json"), indent=2))
    if record:
        if key_path is None:
            raise typer.BadParameter("--record needs --data-dir (the signing key)")
        key = load_signing_key(key_path)
        with AuditLog.open(log_path, signing_key=key, clock=time.time) as audit_log:
            audit_log.record_verification(report, actor=Actor(kind=ActorKind.OPERATOR, id=operator))
        console.print("recorded LOG_VERIFIED in the log")
    if not report.ok:
        raise typer.Exit(code=1)


app.command("check")(remote_check)
