"""A study's lifecycle: DRAFT -> RUNNING <-> PAUSED -> STOPPED, each move audited."""

from __future__ import annotations

from fedward.compliance import AuditAction
from fedward.coordinator import audit
from fedward.coordinator.store import StudyState, TaskStatus
from fedward.coordinator.store.audit_trail import OPERATOR

from .core import ServiceCore
from .errors import InvalidTransition
from .views import StudyInfo

# Which lifecycle call moves a study from which states to which.
_TRANSITIONS: dict[AuditAction, tuple[frozenset[StudyState], StudyState]] = {
    AuditAction.STUDY_STARTED: (frozenset({StudyState.DRAFT}), StudyState.RUNNING),
    AuditAction.STUDY_PAUSED: (frozenset({StudyState.RUNNING}), StudyState.PAUSED),
    AuditAction.STUDY_RESUMED: (frozenset({StudyState.PAUSED}), StudyState.RUNNING),
    AuditAction.STUDY_STOPPED: (
        frozenset({StudyState.DRAFT, StudyState.RUNNING, StudyState.PAUSED}),
        StudyState.STOPPED,
    ),
}

_VERBS = {
    AuditAction.STUDY_STARTED: "start",
    AuditAction.STUDY_PAUSED: "pause",
    AuditAction.STUDY_RESUMED: "resume",
    AuditAction.STUDY_STOPPED: "stop",
}


class LifecycleCalls(ServiceCore):
    def start(self, study_id: str, *, by: str = OPERATOR) -> StudyInfo:
        return self._transition(study_id, AuditAction.STUDY_STARTED, by=by)

    def pause(self, study_id: str, *, by: str = OPERATOR) -> StudyInfo:
        """Stop dispatching; tasks in flight may still deliver their updates."""
        return self._transition(study_id, AuditAction.STUDY_PAUSED, by=by)

    def resume(self, study_id: str, *, by: str = OPERATOR) -> StudyInfo:
        return self._transition(study_id, AuditAction.STUDY_RESUMED, by=by)

    def stop(self, study_id: str, *, by: str = OPERATOR) -> StudyInfo:
        """Stop for good: tasks in flight fail, later updates are refused."""
        return self._transition(study_id, AuditAction.STUDY_STOPPED, by=by)

    def _transition(self, study_id: str, action: AuditAction, *, by: str) -> StudyInfo:
        allowed, target = _TRANSITIONS[action]
        with self._lock:
            study = self._require(study_id)
            if study.state not in allowed:
                raise InvalidTransition(f"cannot {_VERBS[action]} a {study.state.value} study")
            with self._change(study) as changes:
                previous = study.state
                if target is StudyState.STOPPED:
                    for task_id in list(study.engine.tasks):
                        study.failure_status[task_id] = TaskStatus.FAILED
                        study.engine.task_failed(task_id, now=changes.at, reason="study stopped")
                study.row.status = target
                study.row.updated_at = changes.at
                changes.study_values.update(status=target, updated_at=changes.at)
                entry = audit.study_transition(
                    action, by=by, previous=previous.value, state=target.value
                )
                self._audit(entry, study_id=study.id)
            return self._info(study)
