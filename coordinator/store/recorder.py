"""Engine decisions -> audit entries, rows and model versions.

The engine emits one event per decision. For each, this recorder appends the
audit entry (write-ahead: before the service's database commit) and adds the
rows the decision implies to the study's pending :class:`StudyChanges`. A
merge also stores the new model blob and its lineage record.

What goes into the log is chosen here: ids, versions, reasons and SHA-256
hashes of update frames and models -- never tensor values or sample counts.
Mapping of engine events to audit actions:

    TASK_DISPATCHED  -> TASK_DISPATCHED
    TASK_FAILED      -> TASK_FAILED (outcome FAILURE, with the reason: deadline,
                        revocation, stop, dropout); a failure caused by a rejected
                        answer is already audited as UPDATE_REJECTED, and one
                        caused by the device's refusal as TASK_REFUSED (by the
                        privacy guard, with the device as actor)
    UPDATE_ACCEPTED  -> UPDATE_ACCEPTED (with the update frame's SHA-256)
    UPDATE_REJECTED  -> UPDATE_REJECTED (reason, detail, SHA-256), counted
    MODEL_MERGED     -> MODEL_MERGED (lineage record: version, parent, hashes)
    DEVICE_ENROLLED / DEVICE_STATE -> audited by the service / saved by diff

Who is the actor: the device for what it did (an update it sent, a task it
refused), the coordinator for what it decided (dispatch, failure, merge, a
budget it stopped).
"""

from __future__ import annotations

from fedward.compliance import ActorKind, AuditAction, Outcome
from fedward.coordinator.engine import EngineEvent, EventKind
from fedward.coordinator.errors import RejectReason
from fedward.coordinator.privacy.guard import PrivacyEvent

from fedward.protocol.messages import AckStatus

from .audit_trail import COORDINATOR_ACTOR, AuditTrail, actor
from .models import TaskRow, TaskStatus
from .runtime import RuntimeStore, StudyRuntime


class EventRecorder:
    def __init__(self, *, trail: AuditTrail, runtimes: RuntimeStore) -> None:
        self._trail = trail
        self._runtimes = runtimes

    def on_event(self, study: StudyRuntime, event: EngineEvent) -> None:
        handler = {
            EventKind.TASK_DISPATCHED: self._dispatched,
            EventKind.TASK_FAILED: self._failed,
            EventKind.UPDATE_ACCEPTED: self._accepted,
            EventKind.UPDATE_REJECTED: self._rejected,
            EventKind.MODEL_MERGED: self._merged,
        }.get(event.kind)
        if handler is not None:
            handler(study, event)

    def on_guard_event(self, study: StudyRuntime, event: PrivacyEvent) -> None:
        """A guard's decision (privacy spend, exhaustion, refusal) arrives audit-ready.

        The event names who decided: a refusal is the device's own act, while a
        spend, an exhaustion or a revocation is the coordinator's judgement about
        the device (which stays named in the details).
        """
        who = (
            actor(ActorKind.DEVICE, event.device_id)
            if event.actor is ActorKind.DEVICE
            else COORDINATOR_ACTOR
        )
        self._trail.record(
            event.action,
            event.outcome,
            who=who,
            study_id=study.id,
            details=dict(event.details),
        )

    def _dispatched(self, study: StudyRuntime, event: EngineEvent) -> None:
        d = event.details
        study.pending_changes().new_tasks.append(
            TaskRow(
                study_id=study.id,
                task_id=d["task_id"],
                device_id=d["device_id"],
                model_version=d["model_version"],
                subset_id=d["subset_id"],
                issued_at=event.at,
                deadline_at=event.at + study.spec.task_deadline_s,
                status=TaskStatus.IN_FLIGHT,
                finished_at=None,
                reason=None,
            )
        )
        self._trail.record(
            AuditAction.TASK_DISPATCHED,
            Outcome.SUCCESS,
            who=COORDINATOR_ACTOR,
            study_id=study.id,
            details={
                "task_id": d["task_id"],
                "device_id": d["device_id"],
                "model_version": d["model_version"],
                "subset_id": d["subset_id"],
                "tier": d["tier"],
            },
        )

    def _failed(self, study: StudyRuntime, event: EngineEvent) -> None:
        d = event.details
        status = study.failure_status.pop(d["task_id"], TaskStatus.FAILED)
        study.pending_changes().task(
            d["task_id"], status=status, finished_at=event.at, reason=d["reason"][:200]
        )
        if status is TaskStatus.FAILED and d["task_id"] not in study.refused_tasks:
            self._trail.record(
                AuditAction.TASK_FAILED,
                Outcome.FAILURE,
                who=COORDINATOR_ACTOR,
                study_id=study.id,
                details={
                    "task_id": d["task_id"],
                    "device_id": d["device_id"],
                    "reason": d["reason"],
                },
            )

    def _accepted(self, study: StudyRuntime, event: EngineEvent) -> None:
        d = event.details
        sha = study.current_update_sha or ""
        study.update_hashes[d["task_id"]] = sha
        study.pending_changes().task(d["task_id"], status=TaskStatus.ACCEPTED, finished_at=event.at)
        self._trail.record(
            AuditAction.UPDATE_ACCEPTED,
            Outcome.SUCCESS,
            who=actor(ActorKind.DEVICE, d["device_id"]),
            study_id=study.id,
            details={
                "task_id": d["task_id"],
                "device_id": d["device_id"],
                "base_version": d["base_version"],
                "staleness": d["staleness"],
                "update_sha256": sha,
            },
        )

    def _rejected(self, study: StudyRuntime, event: EngineEvent) -> None:
        d = event.details
        reason = RejectReason(d["reason"])
        study.pending_changes().rejections[reason] += 1
        study.rejections[reason] += 1
        self._trail.record(
            AuditAction.UPDATE_REJECTED,
            Outcome.DENIED,
            who=actor(ActorKind.DEVICE, d["device_id"]),
            study_id=study.id,
            details={
                "task_id": d["task_id"],
                "device_id": d["device_id"],
                "reason": reason.value,
                "detail": d["detail"],
                "update_sha256": study.current_update_sha or "",
            },
        )

    def _merged(self, study: StudyRuntime, event: EngineEvent) -> None:
        d = event.details
        record = self._runtimes.record_version(study, parent=d["parent"], task_ids=d["task_ids"])
        changes = study.pending_changes()
        for task_id in d["task_ids"]:
            changes.receipt_status[task_id] = AckStatus.MERGED
        self._trail.record(
            AuditAction.MODEL_MERGED,
            Outcome.SUCCESS,
            who=COORDINATOR_ACTOR,
            study_id=study.id,
            details={**record.audit_details(), "staleness_max": d["staleness_max"]},
        )
