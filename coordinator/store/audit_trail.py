"""The audit log as the coordinator writes it.

Two rules live here so every caller gets them: an actor id the audit alphabet
refuses (protocol ids may start with ``-``, ``_`` or ``.``) is replaced by a
stable hash instead of failing the decision, and free text that trips the
health-data guard (a device-provoked rejection detail full of numbers) is
dropped while the decision itself is still recorded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedward.compliance import (
    Actor,
    ActorKind,
    AuditAction,
    AuditLog,
    ForbiddenAuditContent,
    Outcome,
    SignedTreeHead,
)
from fedward.coordinator.audit import AuditRecord

OPERATOR = "operator"
COORDINATOR = "coordinator"
_IDENTIFIER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


def actor(kind: ActorKind, raw_id: str) -> Actor:
    """An audit actor; ids that the audit alphabet refuses are hashed (``h:<sha256>``)."""
    if _IDENTIFIER_RE.fullmatch(raw_id):
        return Actor(kind=kind, id=raw_id)
    digest = hashlib.sha256(raw_id.encode("utf-8", "replace")).hexdigest()
    return Actor(kind=kind, id="h:" + digest[:40])


COORDINATOR_ACTOR = Actor(kind=ActorKind.COORDINATOR, id=COORDINATOR)


class AuditTrail:
    def __init__(self, log: AuditLog) -> None:
        self._log = log

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._log.public_key

    def close(self) -> None:
        self._log.close()

    def sign_tree_head(self) -> SignedTreeHead:
        return self._log.sign_tree_head()

    def write(self, entry: AuditRecord, *, study_id: str | None) -> None:
        """Append an entry built by ``fedward.coordinator.audit``."""
        if entry.actor is ActorKind.COORDINATOR or not entry.actor_id:
            who = COORDINATOR_ACTOR
        else:
            who = actor(entry.actor, entry.actor_id)
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
        try:
            self._log.append(
                actor=who, action=action, outcome=outcome, study_id=study_id, details=details
            )
        except ForbiddenAuditContent:
            kept = {k: v for k, v in details.items() if k != "detail"}
            kept["detail_withheld"] = True
            self._log.append(
                actor=who, action=action, outcome=outcome, study_id=study_id, details=kept
            )
