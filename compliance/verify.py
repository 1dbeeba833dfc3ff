"""Examine an audit log: recompute everything, trust nothing stored.

HIPAA 164.312(b) asks to *record and examine* activity; this is the examine
half.  :func:`verify_log` rereads every record and checks, independently:

1. each entry record is one complete line (a torn last line means a crash or
   truncation), parses as an :class:`~fedward.compliance.events.AuditEntry` (which
   re-applies the health-data guard) and is byte-for-byte canonical;
2. ``seq`` counts 0, 1, 2, ... (catches deleted, inserted and swapped lines);
3. each ``prev_hash`` equals the leaf hash of the record before it (the hash
   chain: a changed or missing line breaks the link after it);
4. every signed tree head carries a valid Ed25519 signature, tree heads never
   shrink or go back in time, no tree head covers more entries than exist
   (catches truncation of whole lines), and every tree head is consistent
   with the tree rebuilt from the records, checked with an RFC 9162
   consistency proof (catches a rewrite that recomputed the chain, which only
   the holder of the signing key could hide).

What no local check can catch: dropping the newest lines *and* their tree
heads, or rewriting entries after the last tree head.  Receipts held by
actors and tree heads copied elsewhere (an auditor, a witness) cover that:
:func:`latest_tree_head` fetches the newest signed head (the coordinator also
signs one on a timer and when it stops), and ``verify_log(...,
trusted_head=head)`` checks a log against a head the auditor kept, so a log
cut below that head, or rewritten under it, fails
(``ProblemKind.TRUSTED_HEAD_BEYOND_LOG`` / ``TRUSTED_HEAD_INCONSISTENT``).
``VerificationReport.unsigned_entries`` says how many entries are exposed.

Verifying beside a running coordinator is read-only and takes no lock: the
tree heads are read before the entries, so a head signed meanwhile is never
"beyond the log" (see :mod:`fedward.compliance.store`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from fedward.compliance import merkle
from fedward.compliance.errors import ComplianceError
from fedward.compliance.events import AuditEntry, canonical_json
from fedward.compliance.proofs import SignedTreeHead
from fedward.compliance.store import AuditStore, JsonlAuditStore

__all__ = [
    "GENESIS_PREV_HASH",
    "AuditProblem",
    "ProblemKind",
    "VerificationReport",
    "latest_tree_head",
    "verify_log",
]

GENESIS_PREV_HASH = "0" * 64
"""``prev_hash`` of the first entry."""

MAX_PROBLEMS = 100
"""Stop listing problems after this many; one is enough to fail."""


class ProblemKind(Enum):
    """Which check failed."""

    TRUNCATED_ENTRY = "truncated_entry"
    MALFORMED_ENTRY = "malformed_entry"
    NON_CANONICAL_ENTRY = "non_canonical_entry"
    SEQ_MISMATCH = "seq_mismatch"
    CHAIN_BROKEN = "chain_broken"
    MALFORMED_TREE_HEAD = "malformed_tree_head"
    BAD_SIGNATURE = "bad_signature"
    TREE_HEAD_OUT_OF_ORDER = "tree_head_out_of_order"
    TREE_HEAD_BEYOND_LOG = "tree_head_beyond_log"
    TREE_HEAD_INCONSISTENT = "tree_head_inconsistent"
    TRUSTED_HEAD_INVALID = "trusted_head_invalid"
    TRUSTED_HEAD_BEYOND_LOG = "trusted_head_beyond_log"
    TRUSTED_HEAD_INCONSISTENT = "trusted_head_inconsistent"


class AuditProblem(BaseModel):
    """One failed check.  ``entry`` is the 0-based position of the entry record
    at fault, ``tree_head`` the position of the tree-head record, if any."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    kind: ProblemKind
    message: str
    entry: int | None = None
    tree_head: int | None = None


class VerificationReport(BaseModel):
    """Outcome of :func:`verify_log`.

    ``ok`` is true iff ``problems`` is empty.  ``first_bad_entry`` is the
    earliest entry that may have been altered: for a broken chain link between
    entries ``i-1`` and ``i`` that is ``i-1`` (the record whose hash no longer
    matches what its successor committed to).  ``sth_checked`` counts tree
    heads whose signature *and* consistency both verified; ``unsigned_entries``
    counts entries after the newest such tree head.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    entries: int
    tree_size: int
    root: str
    sth_checked: int
    unsigned_entries: int
    ok: bool
    problems: tuple[AuditProblem, ...]
    first_bad_entry: int | None
    latest_tree_head: SignedTreeHead | None


@dataclass
class _Replay:
    """Everything the log needs to continue after a successful verification."""

    tree: merkle.MerkleTree = field(default_factory=merkle.MerkleTree)
    last_leaf: str = GENESIS_PREV_HASH
    tree_heads: list[SignedTreeHead] = field(default_factory=list)
    problems: list[AuditProblem] = field(default_factory=list)
    first_bad_entry: int | None = None

    def suspect(self, index: int) -> None:
        if self.first_bad_entry is None or index < self.first_bad_entry:
            self.first_bad_entry = index

    def problem(self, kind: ProblemKind, message: str, **where: int) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(AuditProblem(kind=kind, message=message, **where))


def _check_entries(records: list[bytes], replay: _Replay) -> None:
    for i, record in enumerate(records):
        body = record[:-1] if record.endswith(b"\n") else record
        leaf = merkle.leaf_hash(body)
        if not record.endswith(b"\n"):
            replay.suspect(i)
            replay.problem(
                ProblemKind.TRUNCATED_ENTRY,
                "last record has no newline: the file was truncated or a write was torn",
                entry=i,
            )
        try:
            entry = AuditEntry.model_validate_json(body)
        except (ValidationError, ComplianceError, ValueError) as exc:
            replay.suspect(i)
            replay.problem(
                ProblemKind.MALFORMED_ENTRY,
                f"not a valid audit entry: {str(exc).splitlines()[0]}",
                entry=i,
            )
        else:
            if canonical_json(entry.model_dump(mode="json")) != body:
                replay.suspect(i)
                replay.problem(
                    ProblemKind.NON_CANONICAL_ENTRY, "record is not in canonical form", entry=i
                )
            if entry.seq != i:
                replay.suspect(i)
                replay.problem(
                    ProblemKind.SEQ_MISMATCH,
                    f"record {i} carries seq {entry.seq}: lines were deleted, inserted or moved",
                    entry=i,
                )
            if entry.prev_hash != replay.last_leaf:
                # With a correct seq the link broke because record i-1 changed
                # (or this prev_hash did); with a wrong seq, lines moved here.
                replay.suspect(i - 1 if i > 0 and entry.seq == i else i)
                replay.problem(
                    ProblemKind.CHAIN_BROKEN,
                    f"prev_hash does not match record {i - 1}: record {i - 1} was altered, or "
                    "records were removed, inserted or moved here"
                    if i > 0
                    else "first record does not start the chain",
                    entry=i,
                )
        replay.tree.append(leaf)
        replay.last_leaf = leaf.hex()


def _check_tree_heads(records: list[bytes], public_key: Ed25519PublicKey, replay: _Replay) -> int:
    """Check every tree head; return how many passed every check."""
    tree = replay.tree
    n = tree.size
    new_root = tree.root()
    checked = 0
    previous: SignedTreeHead | None = None
    for j, record in enumerate(records):
        try:
            if not record.endswith(b"\n"):
                raise ValueError("record has no newline (truncated)")
            sth = SignedTreeHead.model_validate_json(record[:-1])
        except (ValidationError, ValueError) as exc:
            replay.problem(
                ProblemKind.MALFORMED_TREE_HEAD,
                f"not a valid tree head: {str(exc).splitlines()[0]}",
                tree_head=j,
            )
            continue
        if not sth.verify_signature(public_key):
            replay.problem(
                ProblemKind.BAD_SIGNATURE, "tree-head signature does not verify", tree_head=j
            )
            continue
        replay.tree_heads.append(sth)
        ordered = previous is None or (
            sth.tree_size >= previous.tree_size and sth.timestamp >= previous.timestamp
        )
        previous = sth
        if not ordered:
            replay.problem(
                ProblemKind.TREE_HEAD_OUT_OF_ORDER,
                "tree head is smaller or older than the one before it",
                tree_head=j,
            )
            continue
        if sth.tree_size > n:
            replay.problem(
                ProblemKind.TREE_HEAD_BEYOND_LOG,
                f"tree head signs {sth.tree_size} entries but the log holds {n}: "
                "entries were removed from the end",
                tree_head=j,
            )
            continue
        proof = tree.consistency_proof(old_size=sth.tree_size, new_size=n)
        if not merkle.verify_consistency(
            old_size=sth.tree_size,
            new_size=n,
            old_root=bytes.fromhex(sth.root_hash),
            new_root=new_root,
            proof=proof,
        ):
            replay.problem(
                ProblemKind.TREE_HEAD_INCONSISTENT,
                f"the first {sth.tree_size} entries differ from what this tree head signed",
                tree_head=j,
            )
            continue
        checked += 1
    return checked


def _check_trusted_head(
    head: SignedTreeHead, public_key: Ed25519PublicKey, replay: _Replay
) -> None:
    """Check the log against a tree head the auditor kept from earlier."""
    tree = replay.tree
    if not head.verify_signature(public_key):
        replay.problem(
            ProblemKind.TRUSTED_HEAD_INVALID, "the trusted tree head's signature does not verify"
        )
        return
    if head.tree_size > tree.size:
        replay.problem(
            ProblemKind.TRUSTED_HEAD_BEYOND_LOG,
            f"a tree head you hold signs {head.tree_size} entries but the log holds "
            f"{tree.size}: the log was truncated",
        )
        return
    proof = tree.consistency_proof(old_size=head.tree_size, new_size=tree.size)
    if not merkle.verify_consistency(
        old_size=head.tree_size,
        new_size=tree.size,
        old_root=bytes.fromhex(head.root_hash),
        new_root=tree.root(),
        proof=proof,
    ):
        replay.problem(
            ProblemKind.TRUSTED_HEAD_INCONSISTENT,
            f"the first {head.tree_size} entries differ from the tree head you hold",
        )


def replay_store(
    store: AuditStore,
    public_key: Ed25519PublicKey,
    *,
    trusted_head: SignedTreeHead | None = None,
) -> tuple[_Replay, VerificationReport]:
    """Verify ``store`` and also return the rebuilt tree, for ``AuditLog`` to
    continue from.  Internal to the package (not in ``__all__``)."""
    replay = _Replay()
    # Heads first: a live writer appends a head only after the entries it covers.
    head_records = store.read_tree_head_records()
    entry_records = store.read_entry_records()
    _check_entries(entry_records, replay)
    checked = _check_tree_heads(head_records, public_key, replay)
    if trusted_head is not None:
        _check_trusted_head(trusted_head, public_key, replay)
    good_heads = [h for h in replay.tree_heads if h.tree_size <= replay.tree.size]
    latest = max(good_heads, key=lambda h: h.tree_size, default=None)
    report = VerificationReport(
        entries=len(entry_records),
        tree_size=replay.tree.size,
        root=replay.tree.root().hex(),
        sth_checked=checked,
        unsigned_entries=replay.tree.size - (latest.tree_size if latest else 0),
        ok=not replay.problems,
        problems=tuple(replay.problems),
        first_bad_entry=replay.first_bad_entry,
        latest_tree_head=latest,
    )
    return replay, report


def _public_key(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, bytes | bytearray) and len(key) == 32:
        return Ed25519PublicKey.from_public_bytes(bytes(key))
    raise TypeError("public_key must be an Ed25519PublicKey or its 32 raw bytes")


def _open_store(store_or_path: AuditStore | str | os.PathLike[str]) -> AuditStore:
    if isinstance(store_or_path, str | os.PathLike):
        path = Path(store_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"no audit log at {path}")
        return JsonlAuditStore(path, read_only=True)
    return store_or_path


def verify_log(
    store_or_path: AuditStore | str | os.PathLike[str],
    public_key: Ed25519PublicKey | bytes,
    *,
    trusted_head: SignedTreeHead | None = None,
) -> VerificationReport:
    """Verify a whole log (see module doc) and report; never raises on a bad
    log, only on a missing file or an unusable key.

    ``store_or_path`` is an :class:`AuditStore` or the path of a JSONL entry
    file (its tree heads are read from ``<path>.sth``, read-only, no lock), so
    it may run beside the coordinator that writes the log.  ``trusted_head``
    is a signed tree head the auditor kept (e.g. from :func:`latest_tree_head`
    yesterday): the log must still contain exactly what it signed.
    """
    key = _public_key(public_key)
    return replay_store(_open_store(store_or_path), key, trusted_head=trusted_head)[1]


def latest_tree_head(
    store_or_path: AuditStore | str | os.PathLike[str],
    public_key: Ed25519PublicKey | bytes,
) -> SignedTreeHead | None:
    """The newest tree head whose signature verifies (``None`` if none does).

    What an auditor fetches and keeps, to detect later that the log was cut
    below it (``verify_log(..., trusted_head=...)``).  Only the signature is
    checked here; whether the entries match it is what ``verify_log`` does.
    """
    key = _public_key(public_key)
    newest: SignedTreeHead | None = None
    for record in _open_store(store_or_path).read_tree_head_records():
        if not record.endswith(b"\n"):
            continue
        try:
            head = SignedTreeHead.model_validate_json(record[:-1])
        except (ValidationError, ValueError):
            continue
        if head.verify_signature(key) and (newest is None or head.tree_size >= newest.tree_size):
            newest = head
    return newest
