"""The audit log's read side for auditors: events with filters and paging, the
latest signed tree head, inclusion and consistency proofs, exports.

Why a reader of its own rather than the writer's :class:`~fedward.compliance.log.AuditLog`:
it opens the files read-only and takes no lock, so it serves an auditor beside
the running coordinator (or any copy of the files) and can never change the
log. It follows the files as they grow: each :meth:`AuditReader.refresh` reads
only the complete lines appended since the last one (a line being written is
left for the next call), hashes them into its own RFC 9162 tree, and keeps a
signed tree head only if its signature verifies under the log's public key
*and* its root equals the root this reader computed at that size -- so what
it hands out is evidence, not the writer's say-so.

An auditor checks it all offline with the public key alone: a head's
signature (:meth:`SignedTreeHead.verify_signature`), an event's leaf
(``merkle.leaf_hash(canonical_json(entry))``) against an inclusion proof, and
a held head against a newer one with a consistency proof.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from fedward.compliance import merkle
from fedward.compliance.errors import ComplianceError
from fedward.compliance.events import canonical_json, format_ts
from fedward.compliance.proofs import (
    ConsistencyProof,
    InclusionProof,
    SignedTreeHead,
    build_consistency_proof,
    build_inclusion_proof,
)
from fedward.compliance.store import tree_head_path

__all__ = [
    "MAX_PAGE",
    "AuditReader",
    "EventFilter",
    "EventPage",
    "FetchedCheck",
    "ProofRangeError",
    "check_fetched",
]

MAX_PAGE = 500
"""Most events one page holds."""


class ProofRangeError(ComplianceError, ValueError):
    """A proof asked for sizes or a sequence number the log does not have."""


@dataclass(frozen=True, kw_only=True)
class EventFilter:
    """Which events: every given field must match (None: any)."""

    study_id: str | None = None
    action: str | None = None
    outcome: str | None = None
    actor_kind: str | None = None
    actor_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class EventPage:
    events: list[dict[str, Any]]
    """Each ``{"leaf_hash": hex, "entry": <the stored entry>}``."""
    tree_size: int
    next_after_seq: int | None
    """Pass as ``after_seq`` for the next page; None: no more events now."""


@dataclass(frozen=True)
class _Row:
    study_id: str | None
    action: str
    outcome: str
    actor_kind: str
    actor_id: str
    ts: str


def _complete_lines(path: Path, offset: int) -> tuple[list[bytes], int]:
    """Complete lines of ``path`` from ``offset`` on (without newlines), and the new offset."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    return data[:end].split(b"\n"), offset + end + 1


class AuditReader:
    """Read-only view of a JSONL audit log (``path``; tree heads in ``path.sth``)."""

    def __init__(self, path: str | os.PathLike[str], *, public_key: Ed25519PublicKey) -> None:
        self.path = Path(path)
        self.public_key = public_key
        self._lock = threading.Lock()
        self._offset = 0
        self._sth_offset = 0
        self._lines: list[bytes] = []
        self._rows: list[_Row] = []
        self._tree = merkle.MerkleTree()
        self._heads: list[SignedTreeHead] = []
        self._pending_heads: list[SignedTreeHead] = []
        self.rejected_heads = 0
        """Tree heads whose signature or root did not verify (never served)."""
        self.unreadable_lines = 0

    # -- following the files ---------------------------------------------------------
    def refresh(self) -> int:
        """Read what was appended; return the tree size."""
        with self._lock:
            lines, self._offset = _complete_lines(self.path, self._offset)
            for line in lines:
                self._add_entry(line)
            heads, self._sth_offset = _complete_lines(tree_head_path(self.path), self._sth_offset)
            for line in heads:
                try:
                    self._pending_heads.append(SignedTreeHead.model_validate_json(line))
                except ValidationError:
                    self.rejected_heads += 1
            self._settle_heads()
            return self._tree.size

    def _add_entry(self, line: bytes) -> None:
        self._tree.append(merkle.leaf_hash(line))
        self._lines.append(line)
        try:
            entry = json.loads(line)
            actor = entry["actor"]
            row = _Row(
                study_id=entry.get("study_id"),
                action=str(entry["action"]),
                outcome=str(entry["outcome"]),
                actor_kind=str(actor["kind"]),
                actor_id=str(actor["id"]),
                ts=str(entry["ts"]),
            )
        except (ValueError, KeyError, TypeError):
            # Still a leaf (the tree must match the writer's); never matches a filter.
            self.unreadable_lines += 1
            row = _Row(None, "", "", "", "", "")
        self._rows.append(row)

    def _settle_heads(self) -> None:
        waiting: list[SignedTreeHead] = []
        for head in self._pending_heads:
            if head.tree_size > self._tree.size:
                waiting.append(head)  # its entries are not all written yet
            elif (
                head.verify_signature(self.public_key)
                and self._tree.root(tree_size=head.tree_size).hex() == head.root_hash
            ):
                self._heads.append(head)
            else:
                self.rejected_heads += 1
        self._pending_heads = waiting

    # -- what an auditor asks for ----------------------------------------------------
    @property
    def tree_size(self) -> int:
        return self._tree.size

    def latest_head(self) -> SignedTreeHead | None:
        """The newest signed tree head that verified (largest size, then latest time)."""
        self.refresh()
        with self._lock:
            if not self._heads:
                return None
            return max(self._heads, key=lambda h: (h.tree_size, h.timestamp))

    def heads(self) -> list[SignedTreeHead]:
        self.refresh()
        with self._lock:
            return list(self._heads)

    def events(
        self, where: EventFilter = EventFilter(), *, after_seq: int = -1, limit: int = 100
    ) -> EventPage:
        """Events with ``seq > after_seq`` matching ``where``, oldest first, at most ``limit``."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be within 1..{MAX_PAGE}")
        self.refresh()
        since = format_ts(where.since) if where.since is not None else None
        until = format_ts(where.until) if where.until is not None else None
        out: list[dict[str, Any]] = []
        with self._lock:
            size = self._tree.size
            seq = max(after_seq + 1, 0)
            while seq < size and len(out) < limit:
                row = self._rows[seq]
                if _matches(row, where, since, until):
                    out.append(
                        {
                            "leaf_hash": self._tree.leaf(index=seq).hex(),
                            "entry": json.loads(self._lines[seq]),
                        }
                    )
                seq += 1
            more = seq < size
        return EventPage(events=out, tree_size=size, next_after_seq=seq - 1 if more else None)

    def inclusion(self, *, seq: int, tree_size: int | None = None) -> InclusionProof:
        self.refresh()
        with self._lock:
            n = self._tree.size if tree_size is None else tree_size
            if not 0 <= seq < n <= self._tree.size:
                raise ProofRangeError(
                    f"need 0 <= seq < tree_size <= {self._tree.size}; got seq {seq}, size {n}"
                )
            return build_inclusion_proof(self._tree, seq=seq, tree_size=n)

    def consistency(self, *, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        self.refresh()
        with self._lock:
            n = self._tree.size if new_size is None else new_size
            if not 0 <= old_size <= n <= self._tree.size:
                raise ProofRangeError(
                    f"need 0 <= old_size <= new_size <= {self._tree.size}; got {old_size} and {n}"
                )
            return build_consistency_proof(self._tree, old_size=old_size, new_size=n)

    def export_entries(self, *, tree_size: int | None = None) -> Iterator[bytes]:
        """The stored entry lines (each with its newline), up to ``tree_size``: the
        file ``fedward audit verify --log`` reads."""
        self.refresh()
        with self._lock:
            n = self._tree.size if tree_size is None else tree_size
            if not 0 <= n <= self._tree.size:
                raise ProofRangeError(f"tree_size must be within 0..{self._tree.size}")
            lines = self._lines[:n]
        for line in lines:
            yield line + b"\n"

    def export_tree_heads(self) -> Iterator[bytes]:
        """The verified tree heads as lines (the ``.sth`` file beside an export)."""
        for head in self.heads():
            yield head.to_line() + b"\n"


def _matches(row: _Row, where: EventFilter, since: str | None, until: str | None) -> bool:
    if not row.action:
        return False
    checks = (
        (where.study_id, row.study_id),
        (where.action, row.action),
        (where.outcome, row.outcome),
        (where.actor_kind, row.actor_kind),
        (where.actor_id, row.actor_id),
    )
    if any(want is not None and want != have for want, have in checks):
        return False
    if since is not None and row.ts < since:
        return False
    return until is None or row.ts <= until


# -- what an auditor checks offline, with the public key only --------------------------


@dataclass(frozen=True, kw_only=True)
class FetchedCheck:
    """The verdict on what an audit API handed out (:func:`check_fetched`)."""

    head_size: int
    events_checked: int
    consistent_with_held: bool | None
    """None: no held head was given."""
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_fetched(
    *,
    public_key: Ed25519PublicKey,
    head: SignedTreeHead,
    events: list[dict[str, Any]],
    inclusion: dict[int, InclusionProof],
    held: SignedTreeHead | None = None,
    consistency: ConsistencyProof | None = None,
) -> FetchedCheck:
    """Check fetched evidence against the key, and against a head the auditor kept.

    * ``head`` must carry a valid signature under ``public_key``;
    * every event (``{"leaf_hash", "entry"}``) below the head's size must hash
      to its leaf (``leaf_hash(canonical_json(entry))``), and its inclusion
      proof must lead from that leaf to the head's root;
    * consecutive events must chain (``prev_hash`` is the previous leaf);
    * with ``held`` (a head kept from before, itself signed), ``consistency``
      must prove the held tree a prefix of the new one: nothing signed then
      was changed or dropped since. A held head larger than the new one means
      the log was cut.

    Nothing here trusts the server: a forged event, a proof for another tree,
    a rewritten past or a head signed by another key is a problem.
    """
    problems: list[str] = []
    if not head.verify_signature(public_key):
        problems.append("the tree head's signature does not verify under the public key")
    consistent: bool | None = None
    if held is not None:
        consistent = False
        if not held.verify_signature(public_key):
            problems.append("the held tree head's signature does not verify")
        elif held.tree_size > head.tree_size:
            problems.append(
                f"the log shrank: held head has {held.tree_size} entries, the new {head.tree_size}"
            )
        elif consistency is None:
            problems.append("no consistency proof from the held head")
        elif (
            consistency.old_size,
            consistency.new_size,
            consistency.old_root,
            consistency.new_root,
        ) != (held.tree_size, head.tree_size, held.root_hash, head.root_hash):
            problems.append("the consistency proof is not between the held head and the new one")
        elif not consistency.verify():
            problems.append("the consistency proof does not verify: the signed past was changed")
        else:
            consistent = True
    checked = 0
    previous: tuple[int, str] | None = None
    for item in events:
        entry = item.get("entry")
        if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int):
            problems.append("an event without an entry or a seq")
            continue
        seq = entry["seq"]
        leaf = merkle.leaf_hash(canonical_json(entry)).hex()
        if leaf != item.get("leaf_hash"):
            problems.append(f"event {seq}: its content does not hash to its leaf")
        if (
            previous is not None
            and previous[0] == seq - 1
            and entry.get("prev_hash") != previous[1]
        ):
            problems.append(f"event {seq}: prev_hash does not link to event {seq - 1}")
        previous = (seq, leaf)
        if seq >= head.tree_size:
            continue  # newer than the head: nothing signed covers it yet
        proof = inclusion.get(seq)
        if proof is None:
            problems.append(f"event {seq}: no inclusion proof")
        elif (proof.seq, proof.tree_size, proof.root_hash, proof.leaf_hash) != (
            seq,
            head.tree_size,
            head.root_hash,
            leaf,
        ):
            problems.append(f"event {seq}: the inclusion proof is for another leaf or tree")
        elif not proof.verify():
            problems.append(f"event {seq}: the inclusion proof does not verify")
        else:
            checked += 1
    return FetchedCheck(
        head_size=head.tree_size,
        events_checked=checked,
        consistent_with_held=consistent,
        problems=problems,
    )
