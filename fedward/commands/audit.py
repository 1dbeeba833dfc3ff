"""``fedward audit``: verify a coordinator's tamper-evident audit log.

An auditor needs only the log files and the coordinator's public key (hex, as
``GET /v1/...`` or the operator publishes it); an operator may instead point at
the data directory, whose signing key yields the public key, and record the
verification in the log itself (HIPAA 164.312(b): activity is examined).

Verification is read-only and takes no lock, so it runs beside a live
coordinator. ``--record`` needs the log's single writer: while the coordinator
runs (and holds the log) the verification is still reported, but not recorded
(exit code 3, with a message saying so). ``fedward audit head`` prints the
newest signed tree head; kept and passed back with ``verify --trusted-head``,
it shows whether the log was later cut below it.
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
from fedward.compliance import Actor, ActorKind, AuditLog, AuditStoreBusy, SignedTreeHead
from fedward.compliance.keys import load_signing_key, public_key_hex
from fedward.compliance.verify import latest_tree_head, verify_log

app = typer.Typer(help="Audit log verification.", no_args_is_help=True)

# Where the log and its key come from: the same three options on every command
# that reads a local log (resolved by ``_log_and_key``).
_DataDirOption = Annotated[
    Path | None, typer.Option(help="Coordinator data dir (log + signing key).")
]
_LogOption = Annotated[
    Path | None,
    typer.Option(help="Audit log JSONL (default: <data-dir>/audit/coordinator.jsonl)."),
]
_PublicKeyOption = Annotated[str | None, typer.Option(help="Ed25519 public key, 64 hex chars.")]


@app.command("verify")
def verify(
    data_dir: _DataDirOption = None,
    log: _LogOption = None,
    public_key: _PublicKeyOption = None,
    record: Annotated[
        bool, typer.Option(help="Append a LOG_VERIFIED entry (needs the signing key).")
    ] = False,
    operator: Annotated[
        str, typer.Option(help="Who verifies (recorded with --record).")
    ] = "auditor",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON.")
    ] = None,
    trusted_head: Annotated[
        Path | None,
        typer.Option(
            exists=True, help="A signed tree head kept earlier (`fedward audit head` JSON)."
        ),
    ] = None,
) -> None:
    """Recompute the hash chain and Merkle tree, check every signed tree head."""
    console = Console()
    log_path, key_path, raw = _log_and_key(data_dir, log, public_key)
    held = _read_head(trusted_head) if trusted_head is not None else None
    report = verify_log(log_path, raw, trusted_head=held)
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
        try:
            audit_log = AuditLog.open(log_path, signing_key=key, clock=time.time)
        except AuditStoreBusy:
            console.print(
                "[yellow]not recorded:[/] the coordinator is running and is the log's only "
                "writer; the verification above ran read-only. Record it while the "
                "coordinator is stopped (or through its API)."
            )
            raise typer.Exit(code=1 if not report.ok else 3) from None
        with audit_log:
            audit_log.record_verification(report, actor=Actor(kind=ActorKind.OPERATOR, id=operator))
        console.print("recorded LOG_VERIFIED in the log")
    if not report.ok:
        raise typer.Exit(code=1)


@app.command("head")
def head(
    data_dir: _DataDirOption = None,
    log: _LogOption = None,
    public_key: _PublicKeyOption = None,
    out: Annotated[Path | None, typer.Option(help="Also write the head to this file.")] = None,
) -> None:
    """Print the newest signed tree head as JSON: keep it, and later pass it to
    ``verify --trusted-head`` to detect a log cut below it."""
    log_path, _, raw = _log_and_key(data_dir, log, public_key)
    if not log_path.is_file():
        raise typer.BadParameter(f"no audit log at {log_path}")
    newest = latest_tree_head(log_path, raw)
    if newest is None:
        Console(stderr=True).print("[red]no signed tree head in the log yet[/]")
        raise typer.Exit(code=1)
    text = newest.model_dump_json()
    typer.echo(text)
    if out is not None:
        out.write_text(text + "\n")


@app.command("public-key")
def public_key_command(data_dir: _DataDirOption = None) -> None:
    """Print the audit log's public key (64 hex): give it to auditors and to every
    device (``fedward edge run --audit-public-key``), out of band, never over the wire
    the coordinator controls."""
    if data_dir is None:
        raise typer.BadParameter("give --data-dir (the coordinator's data folder)")
    key_path = data_dir / "keys" / "audit-signing-key.pem"
    if not key_path.is_file():
        raise typer.BadParameter(f"no audit signing key at {key_path}")
    typer.echo(public_key_hex(load_signing_key(key_path)))


def _log_and_key(
    data_dir: Path | None, log: Path | None, public_key: str | None
) -> tuple[Path, Path | None, bytes]:
    """The log file, the signing key file (with --data-dir) and the raw public key."""
    if log is None and data_dir is None:
        raise typer.BadParameter("give --data-dir or --log")
    log_path = log or data_dir / "audit" / "coordinator.jsonl"  # type: ignore[operator]
    key_path = data_dir / "keys" / "audit-signing-key.pem" if data_dir else None
    if public_key:
        try:
            raw = bytes.fromhex(public_key)
        except ValueError as exc:
            raise typer.BadParameter("--public-key must be hex") from exc
        if len(raw) != 32:
            raise typer.BadParameter("--public-key must be 64 hex characters")
    elif key_path is not None and key_path.exists():
        raw = bytes.fromhex(public_key_hex(load_signing_key(key_path)))
    else:
        raise typer.BadParameter("give --public-key, or --data-dir with the signing key")
    return log_path, key_path, raw


def _read_head(path: Path) -> SignedTreeHead:
    try:
        return SignedTreeHead.model_validate_json(path.read_text(encoding="utf-8").strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{path} is not a signed tree head: {exc}") from None


app.command("check")(remote_check)
