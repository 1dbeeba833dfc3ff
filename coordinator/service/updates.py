"""Updates: decode, dedupe, judge and persist one frame; never raise for bad input.

Why dedupe by receipt: MQTT QoS 1 and the agents' outboxes re-deliver, so the
same frame may arrive many times. A re-delivery is answered with the status
its first delivery earned and is never merged twice; a *different* frame for
an answered task is a DUPLICATE rejection.
"""

from __future__ import annotations

import logging

from compliance import ActorKind, AuditAction, Outcome
from coordinator.errors import RejectReason, UpdateRejected
from coordinator.ingest import IncomingUpdate, decode_update
from coordinator.store import TaskStatus
from coordinator.store.audit_trail import COORDINATOR_ACTOR, actor
from coordinator.store.models import UpdateReceiptRow
from coordinator.store.runtime import StudyRuntime
from protocol.messages import Ack, AckStatus

from .core import UNKNOWN_TASK_ID, ServiceCore, digest

log = logging.getLogger(__name__)


class UpdateCalls(ServiceCore):
    def submit_update(self, study_id: str, frame: bytes) -> Ack:
        """Decode, dedupe, judge and persist one update frame; never raises for bad input.

        A re-delivered frame (same task, device and bytes) is acknowledged with
        the status its first delivery earned and is never merged twice; a
        different frame for an answered task is rejected as DUPLICATE.
        """
        raw = bytes(frame) if isinstance(frame, bytes | bytearray | memoryview) else b""
        frame_sha = digest(raw)
        with self._lock:
            study = self._studies.get(study_id)
            if study is None:
                self._audit(
                    AuditAction.UPDATE_REJECTED,
                    Outcome.DENIED,
                    actor=COORDINATOR_ACTOR,
                    study_id=None,
                    details={"reason": "unknown_study", "update_sha256": frame_sha},
                )
                return Ack(
                    task_id=UNKNOWN_TASK_ID, status=AckStatus.REJECTED, reason="unknown study"
                )
            try:
                incoming = decode_update(raw, max_bytes=self._max_bytes)
            except UpdateRejected as exc:
                return self._reject_early(
                    study, exc, task_id=UNKNOWN_TASK_ID, device_id=None, frame_sha=frame_sha
                )
            header = incoming.header
            receipt = self._repo.receipt(study.id, header.task_id)
            if receipt is not None and receipt.device_id == header.device_id:
                if receipt.frame_sha256 == frame_sha:
                    study.duplicates += 1
                    return Ack(
                        task_id=header.task_id,
                        status=receipt.status,
                        reason=f"duplicate delivery{': ' + receipt.reason if receipt.reason else ''}"[
                            :200
                        ],
                    )
                return self._reject_early(
                    study,
                    UpdateRejected(RejectReason.DUPLICATE, "task already answered"),
                    task_id=header.task_id,
                    device_id=header.device_id,
                    frame_sha=frame_sha,
                )
            try:
                return self._submit(study, incoming, frame_sha=frame_sha)
            except Exception:  # a bug or an input we failed to foresee: refuse, don't crash
                log.exception("update %s of study %s could not be processed", frame_sha, study_id)
                study = self._studies[study_id]  # reloaded by _change
                return self._reject_early(
                    study,
                    UpdateRejected(RejectReason.MALFORMED, "update could not be processed"),
                    task_id=header.task_id,
                    device_id=header.device_id,
                    frame_sha=frame_sha,
                )

    def _submit(self, study: StudyRuntime, incoming: IncomingUpdate, *, frame_sha: str) -> Ack:
        header = incoming.header
        order = study.engine.tasks.get(header.task_id)
        owned = order is not None and order.device_id == header.device_id
        with self._change(study) as changes:
            study.current_update_sha = frame_sha
            study.failure_status[header.task_id] = TaskStatus.REJECTED
            try:
                outcome = study.engine.submit(
                    incoming.update, now=changes.at, context=incoming.privacy
                )
            finally:
                study.current_update_sha = None
                study.failure_status.pop(header.task_id, None)
            if not outcome.accepted:
                status, reason = (
                    AckStatus.REJECTED,
                    outcome.reason.value if outcome.reason else None,
                )
            elif outcome.merge is not None and header.task_id in outcome.merge.task_ids:
                status, reason = AckStatus.MERGED, None
            else:
                status, reason = AckStatus.BUFFERED, None
            if owned:  # only a task's own device can settle it: no receipt for strangers
                changes.new_receipts.append(
                    UpdateReceiptRow(
                        study_id=study.id,
                        task_id=header.task_id,
                        device_id=header.device_id,
                        frame_sha256=frame_sha,
                        status=status,
                        reason=reason,
                        received_at=changes.at,
                    )
                )
        return Ack(task_id=header.task_id, status=status, reason=reason)

    def _reject_early(
        self,
        study: StudyRuntime,
        exc: UpdateRejected,
        *,
        task_id: str,
        device_id: str | None,
        frame_sha: str,
    ) -> Ack:
        """A rejection decided before the engine saw the update: count, audit, ack."""
        with self._change(study) as changes:
            changes.rejections[exc.reason] += 1
            study.rejections[exc.reason] += 1
            details: dict[str, object] = {
                "task_id": task_id,
                "reason": exc.reason.value,
                "detail": exc.detail[:200],
                "update_sha256": frame_sha,
            }
            if device_id is not None:
                details["device_id"] = device_id
            self._audit(
                AuditAction.UPDATE_REJECTED,
                Outcome.DENIED,
                actor=actor(ActorKind.DEVICE, device_id) if device_id else COORDINATOR_ACTOR,
                study_id=study.id,
                details=details,
            )
        return Ack(task_id=task_id, status=AckStatus.REJECTED, reason=exc.reason.value)
