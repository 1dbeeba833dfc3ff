"""``fedward audit check``: what it fetches from a coordinator's audit API (auditor token).

Kept apart from the checks: this module only downloads (a head, events, their
inclusion proofs, a consistency proof from the head the auditor holds);
:func:`fedward.compliance.query.check_fetched` then judges all of it offline with
the public key the auditor already has, so a lying server is caught, not trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from fedward.compliance import (
    ConsistencyProof,
    InclusionProof,
    SignedTreeHead,
    public_key_from_raw,
)
from fedward.compliance.query import check_fetched


@dataclass(frozen=True, kw_only=True)
class Evidence:
    head: SignedTreeHead
    events: list[dict[str, Any]]
    inclusion: dict[int, InclusionProof]
    consistency: ConsistencyProof | None
    served_public_key_hex: str


def _get(client: httpx.Client, path: str, **params: Any) -> Any:
    r = client.get(path, params={k: v for k, v in params.items() if v is not None})
    r.raise_for_status()
    return r.json()


def fetch_evidence(
    client: httpx.Client,
    *,
    held: SignedTreeHead | None,
    fresh: bool,
    study_id: str | None = None,
    limit: int = 1_000,
) -> Evidence:
    """Fetch the newest head (``fresh``: ask the coordinator to sign one now), up to
    ``limit`` events with an inclusion proof each, and a consistency proof from
    ``held``. Raises ``httpx.HTTPError`` on a refused or failed request."""
    if fresh:
        r = client.post("/v1/audit/tree-head")
        r.raise_for_status()
        head = SignedTreeHead.model_validate_json(r.text)
    else:
        head = SignedTreeHead.model_validate_json(client.get("/v1/audit/tree-head").text)
    events: list[dict[str, Any]] = []
    after = -1
    while len(events) < limit:
        page = _get(
            client,
            "/v1/audit/events",
            study_id=study_id,
            after_seq=after,
            limit=min(500, limit - len(events)),
        )
        events.extend(page["events"])
        if page["next_after_seq"] is None:
            break
        after = page["next_after_seq"]
    inclusion = {}
    for item in events:
        seq = item["entry"]["seq"]
        if seq < head.tree_size:
            proof = _get(client, "/v1/audit/proofs/inclusion", seq=seq, tree_size=head.tree_size)
            inclusion[seq] = InclusionProof.model_validate_json(_dumps(proof))
    consistency = None
    if held is not None and held.tree_size <= head.tree_size:
        proof = _get(
            client,
            "/v1/audit/proofs/consistency",
            old_size=held.tree_size,
            new_size=head.tree_size,
        )
        consistency = ConsistencyProof.model_validate_json(_dumps(proof))
    key = _get(client, "/v1/audit/public-key")["public_key_hex"]
    return Evidence(
        head=head,
        events=events,
        inclusion=inclusion,
        consistency=consistency,
        served_public_key_hex=str(key),
    )


def _dumps(obj: Any) -> str:
    return json.dumps(obj)


def check(
    url: Annotated[str, typer.Option(help="The coordinator's API, e.g. http://127.0.0.1:8080")],
    public_key: Annotated[
        str, typer.Option(help="The log's Ed25519 public key (hex), held from before.")
    ],
    token_file: Annotated[Path, typer.Option(exists=True, help="File holding an auditor token.")],
    held_head: Annotated[
        Path | None, typer.Option(exists=True, help="A signed tree head kept from before.")
    ] = None,
    save_head: Annotated[Path | None, typer.Option(help="Keep the new head here.")] = None,
    study: Annotated[str | None, typer.Option(help="Only this study's events.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Most events to check.")] = 1000,
    fresh: Annotated[bool, typer.Option(help="Ask for a head signed now.")] = True,
) -> None:
    """Fetch a head, events and proofs over the audit API; verify them offline with the
    public key only, and against a head held from before (consistency)."""
    try:
        raw = bytes.fromhex(public_key)
    except ValueError:
        raise typer.BadParameter("--public-key must be hex") from None
    if len(raw) != 32:
        raise typer.BadParameter("--public-key must be 64 hex characters")
    held = _read_head(held_head) if held_head is not None else None
    token = token_file.read_text(encoding="utf-8").strip()
    headers = {"Authorization": f"Bearer {token}"}
    console = Console()
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            got = fetch_evidence(client, held=held, fresh=fresh, study_id=study, limit=limit)
    except httpx.HTTPError as exc:
        Console(stderr=True).print(f"[red]the audit API refused or failed:[/] {exc}")
        raise typer.Exit(code=2) from None
    verdict = check_fetched(
        public_key=public_key_from_raw(raw),
        head=got.head,
        events=got.events,
        inclusion=got.inclusion,
        held=held,
        consistency=got.consistency,
    )
    table = Table(title=f"audit API {url}")
    table.add_column("check")
    table.add_column("result")
    table.add_row("signed tree head", f"{got.head.tree_size} entries, root {got.head.root_hash}")
    table.add_row("events with a verified inclusion proof", str(verdict.events_checked))
    table.add_row("consistent with the held head", str(verdict.consistent_with_held))
    table.add_row("served public key is the one held", str(got.served_public_key_hex == raw.hex()))
    table.add_row("verdict", "[green]intact[/]" if verdict.ok else "[red]problems[/]")
    console.print(table)
    for problem in verdict.problems:
        console.print(f"[red]-[/] {problem}")
    if save_head is not None and verdict.ok:
        save_head.write_text(got.head.model_dump_json() + "\n")
    if not verdict.ok:
        raise typer.Exit(code=1)


def _read_head(path: Path) -> SignedTreeHead:
    try:
        return SignedTreeHead.model_validate_json(path.read_text(encoding="utf-8").strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{path} is not a signed tree head: {exc}") from None
