"""Studies: create one (its spec then fixed), list them, see where one stands."""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from collections import Counter

import numpy as np

from fedward.coordinator import audit
from fedward.coordinator.engine import DeviceState
from fedward.coordinator.privacy.settings import check_first_task
from fedward.coordinator.secagg import CohortBinding, SecAggPolicyError
from fedward.coordinator.store import StudyChanges, StudyState, TaskStatus
from fedward.coordinator.store.audit_trail import OPERATOR
from fedward.coordinator.store.models import StudyRow
from fedward.coordinator.store.runtime import StudyRuntime
from fedward.coordinator.study_spec import StudySpec
from fedward.tinytrain.models import Params, build_model
from fedward.tinytrain.training import evaluate

from .core import STUDY_ID_PATTERN, ServiceCore, digest
from .errors import (
    InvalidHoldout,
    InvalidInitialModel,
    InvalidStudyId,
    ModelVersionNotFound,
    StudyExists,
)
from .holdout import Holdout
from .views import StudyInfo, StudyStatus

_STUDY_ID_RE = re.compile(STUDY_ID_PATTERN)


class StopReason(enum.StrEnum):
    """Which of the study's stop rules (``StudySpec.stop``) ended it."""

    TARGET_REACHED = "target_reached"
    UPDATE_BUDGET_SPENT = "update_budget_spent"
    DEVICES_EXHAUSTED = "devices_exhausted"


_CANNOT_WORK = frozenset({DeviceState.EXHAUSTED, DeviceState.REVOKED, DeviceState.DECLINED})
# Devices that stopped by their own word (budget spent, DP required), not the operator's.
_STOPPED_THEMSELVES = frozenset({DeviceState.EXHAUSTED, DeviceState.DECLINED})


def stop_reason(study: StudyRuntime) -> StopReason | None:
    """The first stop rule ``study`` meets now, or None (pure: reads, never changes)."""
    rule, engine = study.spec.stop, study.engine
    accuracy = study.row.last_accuracy
    if rule.target_accuracy is not None and accuracy is not None:
        if accuracy >= rule.target_accuracy:
            return StopReason.TARGET_REACHED
    if rule.max_updates is not None and engine.stats.accepted >= rule.max_updates:
        return StopReason.UPDATE_BUDGET_SPENT
    devices = engine.devices.values()
    if (
        rule.when_exhausted
        and devices
        and engine.in_flight() == 0
        and any(d.state in _STOPPED_THEMSELVES for d in devices)
        and all(d.state in _CANNOT_WORK for d in devices)
    ):
        return StopReason.DEVICES_EXHAUSTED
    return None


def finish_if_done(core: ServiceCore, study: StudyRuntime, changes: StudyChanges) -> None:
    """Within a call's change: evaluate a new model on the held-out set, then apply the
    stop rules; a study that meets one is stopped by the coordinator and audited."""
    if study.state is not StudyState.RUNNING:
        return
    holdout = core._holdouts.get(study.id)
    if holdout is not None and holdout.evaluated_version != study.engine.version:
        accuracy, _ = evaluate(holdout.model, study.engine.params, holdout.x, holdout.y)
        holdout.evaluated_version = study.engine.version
        study.row.last_accuracy = accuracy
        study.row.last_accuracy_version = study.engine.version
        changes.study_values.update(
            last_accuracy=accuracy, last_accuracy_version=study.engine.version
        )
    reason = stop_reason(study)
    if reason is None:
        return
    for task_id in list(study.engine.tasks):
        study.failure_status[task_id] = TaskStatus.FAILED
        study.engine.task_failed(task_id, now=changes.at, reason=f"study finished: {reason}")
    previous = study.state
    study.row.status = StudyState.STOPPED
    study.row.updated_at = changes.at
    changes.study_values.update(status=StudyState.STOPPED, updated_at=changes.at)
    figures = {
        "updates_accepted": study.engine.stats.accepted,
        "merges": study.engine.stats.merges,
        "model_version": study.engine.version,
        "last_accuracy": study.row.last_accuracy,
        "exhausted_devices": sum(
            d.state is DeviceState.EXHAUSTED for d in study.engine.devices.values()
        ),
    }
    entry = audit.study_finished(reason=reason.value, previous=previous.value, figures=figures)
    core._audit(entry, study_id=study.id)


def _check_live_secagg(spec: StudySpec) -> None:
    """Refuse what the live path cannot run: cohorts bound at arrival need a device to
    say "trained" and hold its update, which the edge agent does not do yet."""
    secagg = spec.secagg
    if secagg is not None and secagg.enabled and secagg.cohort_binding is CohortBinding.ARRIVAL:
        raise SecAggPolicyError(
            "cohort_binding 'arrival' runs in the simulator only (fedward simulate, fedward "
            "bench): live devices cannot yet report a finished update and wait for a fill; "
            "use cohort_binding 'dispatch' (the default) for a live study"
        )


class StudyCalls(ServiceCore):
    def create_study(
        self,
        spec: StudySpec,
        *,
        study_id: str | None = None,
        by: str = OPERATOR,
        initial_params: Params | None = None,
    ) -> StudyInfo:
        """Create a DRAFT study with its initial model (version 0); the spec is then fixed.

        ``initial_params`` is a warm start (e.g. a model pre-trained centrally on
        a public cohort, as ``fedward simulate`` starts from); it becomes version
        0's blob, so a restart and every device start from it too. Default: the
        spec's seeded initial model. ``InvalidInitialModel`` if its tensor names
        or shapes are not the study's model.

        Building the engine measures the training footprint of every subset tier
        (seconds for a large model), so it runs outside the service lock: other
        studies keep being served meanwhile.

        A DP study's first-task epsilon is computed first, once, within a time
        limit and outside the lock; ``PrivacySettingsRefused`` (with the figure)
        if one task exceeds the budget or the computation overruns.
        """
        if spec.privacy is not None:
            check_first_task(spec.privacy)
        _check_live_secagg(spec)
        with self._lock:
            sid = study_id if study_id is not None else self._new_study_id(spec.name)
            if not isinstance(sid, str) or not _STUDY_ID_RE.fullmatch(sid):
                raise InvalidStudyId(f"study id must match {STUDY_ID_PATTERN}")
            if sid in self._studies or sid in self._reserved or self._repo.study(sid):
                raise StudyExists(sid)
            self._reserved.add(sid)
        try:
            now = self._clock()
            row = StudyRow(
                id=sid,
                name=spec.name,
                spec=spec.model_dump(mode="json"),
                status=StudyState.DRAFT,
                seed=self._study_seed(sid),
                created_at=now,
                updated_at=now,
                last_accuracy=None,
                last_accuracy_version=None,
            )
            try:
                study = self._new_runtime(row, spec, params=initial_params)
            except ValueError as exc:
                if initial_params is None:
                    raise
                raise InvalidInitialModel(str(exc)) from exc
            with self._lock:
                self._studies[sid] = study
                try:
                    self._persist_new_study(study, by=by, warm_start=initial_params is not None)
                except BaseException:
                    self._studies.pop(sid, None)
                    raise
                return self._info(study)
        finally:
            with self._lock:
                self._reserved.discard(sid)

    def _persist_new_study(self, study: StudyRuntime, *, by: str, warm_start: bool) -> None:
        spec = study.spec
        with self._change(study, new=True) as changes:
            changes.new_study = study.row
            record = self._runtimes.record_version(study, parent=None, task_ids=())
            entry = audit.study_created(
                by=by,
                spec_summary={
                    "study_name": spec.name,
                    "strategy": spec.strategy.value,
                    "subset_mode": spec.subset_mode.value,
                    "model_kind": spec.model_kind.value,
                    "concurrency": spec.concurrency,
                    "buffer_size": spec.buffer_size,
                },
                spec_sha256=digest(spec.model_dump_json().encode()),
                content_hash=record.content_hash,
                record_hash=record.record_hash,
                warm_start=warm_start,
            )
            self._audit(entry, study_id=study.id)

    def list_studies(self) -> list[StudyInfo]:
        with self._lock:
            return [self._info(s) for s in self._studies.values()]

    def study(self, study_id: str) -> StudyInfo:
        with self._lock:
            return self._info(self._require(study_id))

    def status(self, study_id: str) -> StudyStatus:
        with self._lock:
            study = self._require(study_id)
            engine = study.engine
            by_state = Counter(d.state for d in engine.devices.values())
            return StudyStatus(
                study_id=study.id,
                state=study.state,
                model_version=engine.version,
                updates_accepted=engine.stats.accepted,
                merges=engine.stats.merges,
                tasks_dispatched=engine.stats.dispatched,
                tasks_failed=engine.stats.failed,
                in_flight=engine.in_flight(),
                buffered=engine.strategy.pending,
                duplicates=study.duplicates,
                devices_by_state=dict(by_state),
                rejections={r: n for r, n in study.rejections.items() if n},
                last_accuracy=study.row.last_accuracy,
                last_accuracy_version=study.row.last_accuracy_version,
                stop_reason=stop_reason(study) if study.state is StudyState.STOPPED else None,
            )

    def report_evaluation(self, study_id: str, *, version: int, accuracy: float) -> StudyStatus:
        """Record the accuracy an evaluator measured for a model version."""
        if isinstance(accuracy, bool) or not isinstance(accuracy, float | int):
            raise ValueError("accuracy must be a number in [0, 1]")
        if not 0.0 <= float(accuracy) <= 1.0:
            raise ValueError("accuracy must be a number in [0, 1]")
        with self._lock:
            study = self._require(study_id)
            if version not in study.version_sha:
                raise ModelVersionNotFound(f"{study_id} has no model version {version}")
            with self._change(study) as changes:
                study.row.last_accuracy = float(accuracy)
                study.row.last_accuracy_version = version
                changes.study_values.update(
                    last_accuracy=float(accuracy), last_accuracy_version=version
                )
                finish_if_done(self, study, changes)  # the target may be reached now
            return self.status(study_id)

    def attach_holdout(self, study_id: str, x: np.ndarray, y: np.ndarray) -> None:
        """Evaluate every new model of ``study_id`` on ``(x, y)`` at the coordinator.

        For validation studies: the accuracy is recorded as the study's last
        accuracy (what ``StopRule.target_accuracy`` reads), so no evaluation loop
        outside the coordinator is needed. Raises ``InvalidHoldout`` if the data
        does not fit the study's model.
        """
        with self._lock:
            study = self._require(study_id)
            spec = study.spec
            x = np.asarray(x, dtype=np.float32)
            y = np.asarray(y)
            if x.ndim != 3 or x.shape[1:] != (spec.in_channels, spec.window):
                raise InvalidHoldout(
                    f"held-out x must be [n, {spec.in_channels}, {spec.window}] for this study, "
                    f"got {x.shape}"
                )
            if y.shape != (len(x),) or y.dtype.kind not in "iu" or len(y) == 0:
                raise InvalidHoldout(f"held-out y must be integer labels [{len(x)}], got {y.shape}")
            if y.min() < 0 or y.max() >= spec.num_classes:
                raise InvalidHoldout(f"held-out labels must lie in [0, {spec.num_classes})")
            model = build_model(spec.model_settings(), seed=spec.model_seed)
            # models merged from now on are evaluated (not the one the study holds now)
            self._holdouts[study_id] = Holdout(
                x=x, y=y.astype(np.int64), model=model, evaluated_version=study.engine.version
            )

    def _new_study_id(self, name: str) -> str:
        slug = name.lstrip("_.-")[:50] or "study"
        while True:
            candidate = f"{slug}-{secrets.token_hex(4)}"
            if candidate not in self._studies and candidate not in self._reserved:
                return candidate

    def _study_seed(self, study_id: str) -> int:
        if self._seed is None:
            return secrets.randbits(62)
        digest_ = hashlib.sha256(f"{self._seed}/{study_id}".encode()).digest()
        return int.from_bytes(digest_[:8], "big") >> 2
