"""The audit log: hash-chained, Merkle-committed, signed, append-only.

Why three mechanisms at once:

* the **hash chain** (``prev_hash``) lets anyone holding the file alone see a
  deleted, inserted or reordered line, with no keys and no tree;
* the **Merkle tree** (RFC 9162) gives O(log n) proofs: that an entry is in
  the log (inclusion), and that an old log is a prefix of the current one
  (consistency) -- so an auditor who saw yesterday's tree head can check
  today's log without rereading it;
* **signed tree heads** (Ed25519) bind a size and a root to the log's key, so
  a rewrite that recomputes the whole chain is still caught.

The leaf of entry ``i`` is its canonical JSON line (without the newline), and
``prev_hash`` of entry ``i`` is the RFC 9162 leaf hash of entry ``i-1``, so a
receipt's ``leaf_hash`` is also the next entry's chain link.

Usage::

    log = AuditLog.open(path, signing_key=key, clock=clock)
    receipt = log.append(actor=Actor(kind=ActorKind.DEVICE, id="dev-7"),
                         action=AuditAction.UPDATE_ACCEPTED, outcome=Outcome.SUCCESS,
                         study_id="sleep-01", details={"update_hash": h})
    log.close()          # signs a final tree head over the unsigned tail
    report = verify_log(path, public_key)

Opening a log replays and verifies it first (:mod:`fedward.compliance.verify`) and
refuses to append to a log that does not verify.  Appends are serialised by a
lock, so one ``AuditLog`` may be shared between threads.

A crash mid-write leaves a torn last line, and a log with one does not verify.
``AuditLog.open(..., repair_torn_tail=True)`` repairs exactly that case and no
other: if everything before the torn fragment verifies, the fragment is moved
aside (``<file>.torn-<n>``), the file cut to its last whole record, and a
LOG_REPAIRED entry (bytes removed, their SHA-256, where they were kept) is the
first thing appended, so the repair is itself on the record.  A fragment
under a signed tree head cannot be cut this way: the head then covers more
than the log holds, verification fails and the log is refused as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from fedward.compliance import merkle
from fedward.compliance.errors import AuditIntegrityError
from fedward.compliance.events import (
    Actor,
    ActorKind,
    AuditAction,
    AuditEntry,
    Clock,
    Outcome,
    canonical_json,
    to_utc,
)
from fedward.compliance.proofs import (
    AuditReceipt,
    ConsistencyProof,
    InclusionProof,
    SignedTreeHead,
    build_consistency_proof,
    build_inclusion_proof,
)
from fedward.compliance.store import AuditStore, JsonlAuditStore, MemoryAuditStore, TornTail
from fedward.compliance.verify import VerificationReport, replay_store

__all__ = ["DEFAULT_STH_INTERVAL", "AuditLog", "AuditLogState"]

DEFAULT_STH_INTERVAL = 256
"""Sign a tree head after every this many entries (and on demand, and on close)."""


class AuditLogState(BaseModel):
    """Where the log stands: the next ``seq`` to assign, the current tree, and
    the newest signed tree head."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    next_seq: int
    tree_size: int
    root_hash: str
    last_leaf_hash: str
    latest_tree_head: SignedTreeHead | None
    unsigned_entries: int


class AuditLog:
    """Append-only, tamper-evident audit log over an :class:`AuditStore`.

    ``signing_key`` signs tree heads; its public key verifies the existing
    records when the log is opened.  ``clock`` is called once per entry and
    tree head.  ``sth_interval`` entries between automatic tree heads;
    ``sign_on_close`` signs one more over any unsigned tail in :meth:`close`.
    """

    def __init__(
        self,
        store: AuditStore,
        *,
        signing_key: Ed25519PrivateKey,
        clock: Clock,
        sth_interval: int = DEFAULT_STH_INTERVAL,
        sign_on_close: bool = True,
    ) -> None:
        if sth_interval < 1:
            raise ValueError(f"sth_interval must be >= 1, got {sth_interval}")
        self._store = store
        self._key = signing_key
        self._clock = clock
        self._sth_interval = sth_interval
        self._sign_on_close = sign_on_close
        self._lock = threading.RLock()
        self._broken: str | None = None
        self._closed = False
        replay, report = replay_store(store, signing_key.public_key())
        if not report.ok:
            first = report.problems[0]
            raise AuditIntegrityError(
                f"refusing to append to a log that does not verify: {first.message}",
                index=report.first_bad_entry,
            )
        self._tree: merkle.MerkleTree = replay.tree
        self._last_leaf = replay.last_leaf
        self._latest_sth = report.latest_tree_head

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        signing_key: Ed25519PrivateKey,
        clock: Clock,
        fsync: bool = False,
        sth_interval: int = DEFAULT_STH_INTERVAL,
        sign_on_close: bool = True,
        repair_torn_tail: bool = False,
        repaired_by: Actor | None = None,
    ) -> AuditLog:
        """Open (or create) a JSONL log at ``path``, verify it, and continue it.

        ``repair_torn_tail``: cut a torn last record off first (see module doc),
        audited as LOG_REPAIRED by ``repaired_by`` (default: the coordinator).
        """
        store = JsonlAuditStore(path, fsync=fsync)
        try:
            cuts = cls._repair(store, signing_key) if repair_torn_tail else []
            log = cls(
                store,
                signing_key=signing_key,
                clock=clock,
                sth_interval=sth_interval,
                sign_on_close=sign_on_close,
            )
        except BaseException:
            store.close()
            raise
        for cut in cuts:
            log._record_repair(cut, actor=repaired_by)
        return log

    @staticmethod
    def _repair(store: JsonlAuditStore, signing_key: Ed25519PrivateKey) -> list[TornTail]:
        """Cut torn tails off ``store`` if, and only if, everything else verifies."""
        if not store.torn_tails():
            return []
        whole = MemoryAuditStore()
        whole.entry_records = [r for r in store.read_entry_records() if r.endswith(b"\n")]
        whole.tree_head_records = [r for r in store.read_tree_head_records() if r.endswith(b"\n")]
        _, report = replay_store(whole, signing_key.public_key())
        if not report.ok:
            first = report.problems[0]
            raise AuditIntegrityError(
                "the log has a torn last record, and it does not verify without it either "
                f"(not repaired): {first.message}",
                index=report.first_bad_entry,
            )
        return store.cut_torn_tails()

    def _record_repair(self, cut: TornTail, *, actor: Actor | None) -> AuditReceipt:
        return self.append(
            actor=actor or Actor(kind=ActorKind.COORDINATOR, id="coordinator"),
            action=AuditAction.LOG_REPAIRED,
            outcome=Outcome.SUCCESS,
            details={
                "repaired_file": cut.file.name,
                "removed_bytes": cut.removed_bytes,
                "removed_sha256": cut.removed_sha256,
                "kept_at": cut.kept_at.name,
                "entries_kept": self._tree.size,
                "reason": "torn last record (a crash during a write)",
            },
        )

    # -- writing -------------------------------------------------------------
    def append(
        self,
        *,
        actor: Actor,
        action: AuditAction,
        outcome: Outcome,
        study_id: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> AuditReceipt:
        """Append one event; return its receipt.

        Raises :class:`~fedward.compliance.errors.ForbiddenAuditContent` (nothing is
        written, no ``seq`` consumed) if ``details`` breaks the health-data
        guard, and :class:`AuditIntegrityError` if an earlier write failed.
        """
        with self._lock:
            self._check_writable()
            seq = self._tree.size
            entry = AuditEntry(
                seq=seq,
                ts=to_utc(self._clock()),
                actor=actor,
                action=action,
                outcome=outcome,
                study_id=study_id,
                details=details,  # type: ignore[arg-type]  # checked by the guard
                prev_hash=self._last_leaf,
            )
            body = canonical_json(entry.model_dump(mode="json"))
            try:
                self._store.append_entry_record(body + b"\n")
            except BaseException as exc:
                # The record may be half on disk: stop until a reopen re-verifies.
                self._broken = f"write of entry {seq} failed: {exc!r}"
                raise
            leaf = merkle.leaf_hash(body)
            self._tree.append(leaf)
            self._last_leaf = leaf.hex()
            receipt = AuditReceipt(
                seq=seq,
                leaf_hash=self._last_leaf,
                tree_size=self._tree.size,
                root_hash=self._tree.root().hex(),
            )
            if self._tree.size % self._sth_interval == 0:
                self._sign_locked()
            return receipt

    def sign_tree_head(self) -> SignedTreeHead:
        """Sign and store a tree head over the current log, now."""
        with self._lock:
            self._check_writable()
            return self._sign_locked()

    def _sign_locked(self) -> SignedTreeHead:
        now = to_utc(self._clock())
        if self._latest_sth is not None and now < self._latest_sth.timestamp:
            # Tree heads must not go back in time (the verifier checks it); a
            # clock that stepped back must not make a valid log fail.
            now = self._latest_sth.timestamp
        sth = SignedTreeHead.sign(
            self._key,
            tree_size=self._tree.size,
            root_hash=self._tree.root().hex(),
            timestamp=now,
        )
        try:
            self._store.append_tree_head_record(sth.to_line() + b"\n")
        except BaseException as exc:
            self._broken = f"write of a tree head failed: {exc!r}"
            raise
        self._latest_sth = sth
        return sth

    def record_verification(
        self, report: VerificationReport, *, actor: Actor, study_id: str | None = None
    ) -> AuditReceipt:
        """Append a LOG_VERIFIED event summarising ``report`` -- the evidence,
        kept in the log itself, that the log was examined (HIPAA 164.312(b))."""
        details: dict[str, object] = {
            "verified_entries": report.entries,
            "verified_root": report.root,
            "tree_heads_checked": report.sth_checked,
            "unsigned_entries": report.unsigned_entries,
            "problem_count": len(report.problems),
            "first_bad_entry": report.first_bad_entry,
        }
        return self.append(
            actor=actor,
            action=AuditAction.LOG_VERIFIED,
            outcome=Outcome.SUCCESS if report.ok else Outcome.FAILURE,
            study_id=study_id,
            details=details,
        )

    def sync(self) -> None:
        """Make every entry and tree head written so far durable (fsync)."""
        with self._lock:
            self._check_writable()
            self._store.sync()

    def entries_newest_first(self) -> Iterator[AuditEntry]:
        """The log's entries, newest first, read back from the store.

        The coordinator reads the tail once at start, to learn which of its
        committed records reached the log before a crash.
        """
        with self._lock:
            records = self._store.read_entry_records()
        for record in reversed(records):
            yield AuditEntry.model_validate_json(record.rstrip(b"\n"))

    def _check_writable(self) -> None:
        if self._closed:
            raise AuditIntegrityError("the audit log is closed")
        if self._broken is not None:
            raise AuditIntegrityError(f"{self._broken}; reopen the log to re-verify it")

    # -- reading and proofs --------------------------------------------------
    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key that verifies this log's tree heads."""
        return self._key.public_key()

    @property
    def latest_tree_head(self) -> SignedTreeHead | None:
        """The newest signed tree head (what an auditor fetches and keeps)."""
        with self._lock:
            return self._latest_sth

    @property
    def state(self) -> AuditLogState:
        """A consistent snapshot of where the log stands."""
        with self._lock:
            latest = self._latest_sth
            return AuditLogState(
                next_seq=self._tree.size,
                tree_size=self._tree.size,
                root_hash=self._tree.root().hex(),
                last_leaf_hash=self._last_leaf,
                latest_tree_head=latest,
                unsigned_entries=self._tree.size - (latest.tree_size if latest else 0),
            )

    def prove_inclusion(self, *, seq: int, tree_size: int | None = None) -> InclusionProof:
        """Inclusion proof of entry ``seq`` in the tree of ``tree_size`` entries
        (default: the current tree; pass a signed tree head's size to prove
        against that head)."""
        with self._lock:
            n = self._tree.size if tree_size is None else tree_size
            return build_inclusion_proof(self._tree, seq=seq, tree_size=n)

    def prove_consistency(self, *, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """Proof that the log at ``old_size`` is a prefix of the log at
        ``new_size`` (default: now)."""
        with self._lock:
            n = self._tree.size if new_size is None else new_size
            return build_consistency_proof(self._tree, old_size=old_size, new_size=n)

    # -- lifecycle -----------------------------------------------------------
    def close(self) -> None:
        """Sign a final tree head over any unsigned entries (if enabled and the
        log is healthy) and release the store.  Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            try:
                latest = self._latest_sth
                unsigned = self._tree.size - (latest.tree_size if latest else 0)
                if self._sign_on_close and self._broken is None and unsigned > 0:
                    self._sign_locked()
            finally:
                self._closed = True
                self._store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
