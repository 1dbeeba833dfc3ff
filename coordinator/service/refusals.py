"""What the transport reports besides updates: the messages it dropped.

Why here and not in the bridge: a dropped message is a security-relevant
decision (malformed input, a device publishing as another), so it is audited
and counted like every other decision, under the service lock.
"""

from __future__ import annotations

from compliance import ActorKind, AuditAction, Outcome
from coordinator.errors import RejectReason
from coordinator.store.audit_trail import COORDINATOR_ACTOR, actor

from .core import ServiceCore

# The bridge's reasons for dropping a message (coordinator.bridge.RejectKind values).
_AUTH_REJECTIONS = frozenset({"route"})
_MALFORMED_REJECTIONS = frozenset({"malformed", "unsupported_version", "too_large", "wrong_topic"})


class RefusalCalls(ServiceCore):
    def transport_rejected(
        self, study_id: str, device_id: str | None, reason: str, detail: str
    ) -> None:
        """A message the transport dropped before the service saw it (the bridge's
        ``on_reject`` hook): audited, and counted as MALFORMED when it was malformed
        input rather than a routing or authorisation failure."""
        with self._lock:
            study = self._studies.get(study_id)
            auth = reason in _AUTH_REJECTIONS
            action = AuditAction.DEVICE_AUTH_FAILED if auth else AuditAction.UPDATE_REJECTED
            who = actor(ActorKind.DEVICE, device_id) if device_id else COORDINATOR_ACTOR
            details: dict[str, object] = {"transport_reason": reason[:64], "detail": detail[:200]}
            if device_id:
                details["device_id"] = device_id[:64]
            if study is None:
                self._audit(action, Outcome.DENIED, actor=who, study_id=None, details=details)
                return
            with self._change(study) as changes:
                if reason in _MALFORMED_REJECTIONS:
                    changes.rejections[RejectReason.MALFORMED] += 1
                    study.rejections[RejectReason.MALFORMED] += 1
                self._audit(action, Outcome.DENIED, actor=who, study_id=study.id, details=details)
