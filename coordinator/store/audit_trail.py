"""The audit log as the coordinator writes it, and why it agrees with the database.

Two rules live here so every caller gets them: an actor id the audit alphabet
refuses (protocol ids may start with ``-``, ``_`` or ``.``) is replaced by a
stable hash instead of failing the decision, and free text that trips the
health-data guard (a device-provoked rejection detail full of numbers) is
dropped while the decision itself is still recorded.

**An entry exists only for what committed (the outbox).** A decision's audit
records used to be appended before its database commit, so a ``kill -9`` in
between left entries for decisions that never happened: a re-delivered update
was then accepted (and logged) twice, and a merge logged with a model the
database never held. Now a service call *stages* its records
(:meth:`AuditTrail.stage`) and they are written, as ``audit_outbox`` rows, in
the same transaction as the decision. Only after that commit are they appended
to the log (:meth:`AuditTrail.publish`), each carrying ``outbox_ref = "ob-<id>"``.
A crash can therefore leave a committed decision whose entries are not yet in
the log, never the reverse; at start :meth:`AuditTrail.recover` appends the
rows whose ``outbox_ref`` the log's tail does not hold (marked
``recovered``), so the log catches up with the database exactly once.

Rows are deleted only once their entries are durable: :meth:`checkpoint` (on a
timer and at close) fsyncs the log and signs a tree head, and the next commit
deletes the rows up to what that fsync covered. A call that changed nothing in
the database (a refused message) has nothing to commit: its record is appended
directly, as before.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedward.compliance import (
    Actor,
    ActorKind,
    AuditAction,
    AuditIntegrityError,
    AuditLog,
    ForbiddenAuditContent,
    Outcome,
    SignedTreeHead,
    check_details,
)
from fedward.coordinator.audit import AuditRecord

from .repository import Repository

log = logging.getLogger(__name__)

OPERATOR = "operator"
COORDINATOR = "coordinator"
_IDENTIFIER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
OUTBOX_REF = "outbox_ref"
"""Detail key of an entry that came through the outbox: ``"ob-<outbox row id>"``."""
_REF_PREFIX = "ob-"

StagedRecord = tuple[str | None, dict[str, Any]]
"""(study id, record) as stored in an ``audit_outbox`` row."""


def actor(kind: ActorKind, raw_id: str) -> Actor:
    """An audit actor; ids that the audit alphabet refuses are hashed (``h:<sha256>``)."""
    if _IDENTIFIER_RE.fullmatch(raw_id):
        return Actor(kind=kind, id=raw_id)
    digest = hashlib.sha256(raw_id.encode("utf-8", "replace")).hexdigest()
    return Actor(kind=kind, id="h:" + digest[:40])


COORDINATOR_ACTOR = Actor(kind=ActorKind.COORDINATOR, id=COORDINATOR)


def _ref_id(value: object) -> int | None:
    if isinstance(value, str) and value.startswith(_REF_PREFIX) and value[3:].isdigit():
        return int(value[3:])
    return None


class AuditTrail:
    def __init__(self, log: AuditLog) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._published = 0  # highest outbox id appended to the log
        self._durable = 0  # highest outbox id appended before the last fsync
        self._deleted = 0  # outbox rows up to here are gone from the database

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._log.public_key

    @property
    def log(self) -> AuditLog:
        """The log itself, for readers that build proofs (``EnrolmentEvidence``)."""
        return self._log

    @property
    def latest_tree_head(self) -> SignedTreeHead | None:
        return self._log.latest_tree_head

    def close(self) -> None:
        self._log.close()

    def sign_tree_head(self) -> SignedTreeHead:
        """Make the log durable, then sign a head over it now (even with no unsigned tail).

        Why durable first: a head handed to an auditor must never cover entries a
        crash could still lose; the restart would re-append them differently and
        the auditor's head would look like tampering.
        """
        with self._lock:
            self._sync_locked()
            return self._log.sign_tree_head()

    # -- direct appends (nothing to commit) -------------------------------------
    def write(self, entry: AuditRecord, *, study_id: str | None) -> None:
        """Append an entry built by ``fedward.coordinator.audit``."""
        who = self._who(entry)
        self.record(entry.action, entry.outcome, who=who, study_id=study_id, details=entry.details)

    def record(
        self,
        action: AuditAction,
        outcome: Outcome,
        *,
        who: Actor,
        study_id: str | None,
        details: Mapping[str, object],
    ) -> None:
        self._log.append(
            actor=who,
            action=action,
            outcome=outcome,
            study_id=study_id,
            details=_guarded(details),
        )

    @staticmethod
    def _who(entry: AuditRecord) -> Actor:
        if entry.actor is ActorKind.COORDINATOR or not entry.actor_id:
            return COORDINATOR_ACTOR
        return actor(entry.actor, entry.actor_id)

    # -- the outbox --------------------------------------------------------------
    def stage(self, entry: AuditRecord, *, study_id: str | None) -> StagedRecord:
        """The outbox record of ``entry``, checked now so that it will append after
        the commit (the guard runs with the ``outbox_ref`` it will carry)."""
        who = self._who(entry)
        details = _guarded(entry.details, extra={OUTBOX_REF: _REF_PREFIX + "0"})
        details.pop(OUTBOX_REF)
        record = {
            "actor_kind": who.kind.value,
            "actor_id": who.id,
            "action": entry.action.value,
            "outcome": entry.outcome.value,
            "details": {k: list(v) if isinstance(v, tuple) else v for k, v in details.items()},
        }
        return study_id, record

    def deletable(self) -> int:
        """Outbox rows up to this id may be deleted by the next commit (0: none new)."""
        with self._lock:
            return self._durable if self._durable > self._deleted else 0

    def publish(
        self, staged: Sequence[StagedRecord], ids: Sequence[int] | None, *, deleted_upto: int
    ) -> None:
        """After a commit: append its staged records (``ids``: their outbox rows;
        None when nothing was committed, then they are appended as they are)."""
        with self._lock:
            self._deleted = max(self._deleted, deleted_upto)
            if ids is None:
                for study_id, record in staged:
                    self._append(study_id, record)
                return
            for outbox_id, (study_id, record) in zip(ids, staged, strict=True):
                self._append(study_id, record, outbox_id=outbox_id)
                self._published = max(self._published, outbox_id)

    def _append(
        self,
        study_id: str | None,
        record: Mapping[str, Any],
        *,
        outbox_id: int | None = None,
        recovered: bool = False,
    ) -> None:
        details = dict(record["details"])
        if outbox_id is not None:
            details[OUTBOX_REF] = f"{_REF_PREFIX}{outbox_id}"
        if recovered:
            details["recovered"] = True
        self._log.append(
            actor=Actor(kind=ActorKind(record["actor_kind"]), id=record["actor_id"]),
            action=AuditAction(record["action"]),
            outcome=Outcome(record["outcome"]),
            study_id=study_id,
            details=details,
        )

    def recover(self, repository: Repository) -> int:
        """At start: append the committed records a crash kept from the log; return how many.

        The log's newest entries are read back to the first ``outbox_ref`` older
        than every row left: what they name is already in the log.
        """
        rows = repository.audit_outbox()
        if not rows:
            return 0
        oldest = rows[0].id
        logged: set[int] = set()
        for entry in self._log.entries_newest_first():
            ref = _ref_id(entry.details.get(OUTBOX_REF))
            if ref is None:
                continue
            if ref < oldest:
                break
            logged.add(ref)
        missing = [r for r in rows if r.id not in logged]
        with self._lock:
            for row in missing:
                self._append(row.study_id, row.record, outbox_id=row.id, recovered=True)
            self._log.sync()
            newest = rows[-1].id
            self._published = self._durable = max(self._published, newest)
        repository.delete_audit_outbox(upto=newest)
        with self._lock:
            self._deleted = max(self._deleted, newest)
        if missing:
            log.warning(
                "appended %d committed audit records a crash kept from the log", len(missing)
            )
        return len(missing)

    def checkpoint(self) -> SignedTreeHead | None:
        """Make the log durable (fsync) and sign a head over any unsigned tail.

        Returns the new head, or None when every entry was already signed.
        """
        with self._lock:
            self._sync_locked()
            if self._log.state.unsigned_entries == 0:
                return None
            return self._log.sign_tree_head()

    def _sync_locked(self) -> None:
        upto = self._published
        self._log.sync()
        self._durable = upto

    def finish(self, repository: Repository) -> None:
        """At close: make the log durable, sign its tail, drop the outbox rows it covers.

        A log broken by a failed write is left as it is (its rows stay in the
        outbox for the next start to append), so closing never fails on it.
        """
        try:
            self.checkpoint()
        except AuditIntegrityError:
            log.warning("the audit log is broken; its outbox rows wait for the next start")
            return
        upto = self.deletable()
        if upto:
            repository.delete_audit_outbox(upto=upto)


def _guarded(
    details: Mapping[str, object], *, extra: Mapping[str, object] | None = None
) -> dict[str, Any]:
    """``details`` as the log will accept them: a free-text ``detail`` the guard
    refuses is withheld (``detail_withheld``) so the decision is still recorded."""
    candidate = {**details, **(extra or {})}
    try:
        return dict(check_details(candidate))
    except ForbiddenAuditContent:
        kept = {k: v for k, v in candidate.items() if k != "detail"}
        kept["detail_withheld"] = True
        return dict(check_details(kept))
