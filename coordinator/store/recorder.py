"""Engine and privacy decisions -> audit entries, rows and model versions.

The engine emits one event per decision. For each, this recorder stages the
audit record with the rows the decision implies in the study's pending
:class:`StudyChanges`: both are committed in one transaction and the entry
reaches the log only after that commit (the outbox, :mod:`.audit_trail`). A
merge also stores the new model blob and its lineage record.

What goes into the log, and who the actor is, is decided in one place,
``fedward.coordinator.audit`` (``engine_entry``, ``privacy_entry``); this
module adds what only the store knows (the update frame's SHA-256, the
lineage record of a merge) and writes. A failure caused by a rejected answer
is already audited as UPDATE_REJECTED, and one caused by the device's refusal
as TASK_REFUSED, so neither is audited again as TASK_FAILED.
"""

from __future__ import annotations

from fedward.coordinator.audit import AuditRecord, engine_entry, privacy_entry
from fedward.coordinator.engine import EngineEvent, EventKind
from fedward.coordinator.errors import RejectReason
from fedward.coordinator.privacy.events import PrivacyEvent
from fedward.protocol.messages import AckStatus

from .audit_trail import AuditTrail
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
            # A fill's steps (FILL_REFUSED is audited by the service under the sender).
            EventKind.FILL_OPENED: self._fill_step,
            EventKind.FILL_PHASE: self._fill_step,
            EventKind.FILL_ABORTED: self._fill_step,
            EventKind.FILL_MERGED: self._fill_merged,
        }.get(event.kind)
        if handler is not None:
            handler(study, event)

    def on_guard_event(self, study: StudyRuntime, event: PrivacyEvent) -> None:
        """A guard's decision (privacy spend, exhaustion, refusal, revocation)."""
        self._write(study, privacy_entry(event))

    def _write(self, study: StudyRuntime, entry: AuditRecord | None) -> None:
        if entry is None:
            return
        if study.changes is not None:  # inside a service call: committed with its decision
            study.changes.audit.append(self._trail.stage(entry, study_id=study.id))
        else:
            self._trail.write(entry, study_id=study.id)

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
        self._write(study, engine_entry(event))

    def _failed(self, study: StudyRuntime, event: EngineEvent) -> None:
        d = event.details
        status = study.failure_status.pop(d["task_id"], TaskStatus.FAILED)
        study.pending_changes().task(
            d["task_id"], status=status, finished_at=event.at, reason=d["reason"][:200]
        )
        if status is TaskStatus.FAILED and d["task_id"] not in study.refused_tasks:
            self._write(study, engine_entry(event))

    def _accepted(self, study: StudyRuntime, event: EngineEvent) -> None:
        d = event.details
        sha = study.current_update_sha or ""
        study.update_hashes[d["task_id"]] = sha
        study.pending_changes().task(d["task_id"], status=TaskStatus.ACCEPTED, finished_at=event.at)
        self._write(study, engine_entry(event, update_sha256=sha))

    def _rejected(self, study: StudyRuntime, event: EngineEvent) -> None:
        reason = RejectReason(event.details["reason"])
        study.pending_changes().rejections[reason] += 1
        study.rejections[reason] += 1
        self._write(study, engine_entry(event, update_sha256=study.current_update_sha or ""))

    def _merged(self, study: StudyRuntime, event: EngineEvent) -> None:
        d = event.details
        record = self._runtimes.record_version(study, parent=d["parent"], task_ids=d["task_ids"])
        changes = study.pending_changes()
        for task_id in d["task_ids"]:
            changes.receipt_status[task_id] = AckStatus.MERGED
        self._write(study, engine_entry(event, merge_details=record.audit_details()))

    def _fill_step(self, study: StudyRuntime, event: EngineEvent) -> None:
        self._write(study, engine_entry(event))

    def _fill_merged(self, study: StudyRuntime, event: EngineEvent) -> None:
        # A survivor's task ends in the fill's merge: no UPDATE_ACCEPTED is emitted
        # for it (the coordinator never sees its update), so its row is closed here.
        changes = study.pending_changes()
        for task_id in event.details["task_ids"]:
            changes.task(task_id, status=TaskStatus.ACCEPTED, finished_at=event.at)
        self._write(study, engine_entry(event))
