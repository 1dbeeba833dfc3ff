"""Tasks: what to publish now, what is in flight, and what missed its deadline.

A task's deadline is sized from how long its device class's tasks took
(:mod:`fedward.coordinator.service.deadlines`), capped by the spec's
``task_deadline_s``; the Task tells the device the same number.
"""

from __future__ import annotations

from fedward.coordinator.engine import DeviceState, Engine, TaskOrder
from fedward.coordinator.store import StudyState, TaskStatus
from fedward.coordinator.store.runtime import StudyRuntime
from fedward.protocol.messages import DpParams, ModelDownload, Task, encode_frame

from .core import ServiceCore
from .secagg import task_secagg
from .views import OutboundTask


class TaskCalls(ServiceCore):
    def dispatch(self, study_id: str) -> list[OutboundTask]:
        """Tasks to publish now (empty unless the study is RUNNING)."""
        with self._lock:
            study = self._require(study_id)
            if study.state is not StudyState.RUNNING:
                return []
            if study.spec.secagg_on:  # fills opened now are counted for /metrics
                self._watch_fills(study)  # type: ignore[attr-defined]  # SecAggCalls
            with self._change(study) as changes:
                orders = study.engine.dispatch(now=changes.at)
                return [self._outbound(study, o) for o in orders]

    def pending_tasks(self, study_id: str) -> list[OutboundTask]:
        """Tasks in flight, rebuilt (e.g. to re-publish after a restart)."""
        with self._lock:
            study = self._require(study_id)
            return [self._outbound(study, o) for o in study.engine.tasks.values()]

    def task_timeouts(self) -> list[tuple[str, str]]:
        """Fail tasks past their deadline; their devices go OFFLINE until a heartbeat.

        Returns ``(study_id, task_id)`` of every task failed.
        """
        failed: list[tuple[str, str]] = []
        with self._lock:
            now = self._clock()
            for study in self._studies.values():
                ceiling = study.spec.task_deadline_s
                expired = [
                    o
                    for o in study.engine.tasks.values()
                    if o.issued_at + self._task_times.of(study.id, o.task_id, default=ceiling)
                    <= now
                ]
                if not expired:
                    continue
                with self._change(study) as changes:
                    for order in expired:
                        study.failure_status[order.task_id] = TaskStatus.FAILED
                        study.engine.task_failed(
                            order.task_id, now=changes.at, reason="deadline passed"
                        )
                        study.engine.set_device_state(
                            order.device_id,
                            DeviceState.OFFLINE,
                            now=changes.at,
                            reason="missed a task deadline",
                        )
                        failed.append((study.id, order.task_id))
                        self._task_times.forget(study.id, order.task_id)
        return failed

    def _deadline(self, study: StudyRuntime, order: TaskOrder) -> float:
        device = study.engine.devices.get(order.device_id)
        ceiling = study.spec.task_deadline_s
        sized = (
            ceiling
            if device is None
            else self._task_times.deadline(study.id, device.device_class, ceiling=ceiling)
        )
        return self._task_times.fix(study.id, order.task_id, sized)

    def _outbound(self, study: StudyRuntime, order: TaskOrder) -> OutboundTask:
        spec = study.spec
        task = Task(
            task_id=order.task_id,
            study_id=study.id,
            device_id=order.device_id,
            model_version=order.model_version,
            subset_id=order.subset.subset_id,
            subset_names=order.subset.names,
            local_epochs=spec.epochs,
            batch_size=spec.batch_size,
            lr=spec.lr,
            deadline_s=self._deadline(study, order),
            dp=_task_dp(study.engine, order),
            secagg=task_secagg(study, order),
            update_encoding=spec.update_encoding,
        )
        base = study.engine.base_params(order.model_version)
        header = ModelDownload(
            model_version=order.model_version,
            subset_id=order.subset.subset_id,
            names=order.download,
        )
        tensors = {n: base[n] for n in order.download} or None
        frame = encode_frame(header, tensors, max_bytes=self._max_bytes)
        return OutboundTask(device_id=order.device_id, task=task, model_frame=frame)


def _task_dp(engine: Engine, order: TaskOrder) -> DpParams | None:
    """The DP mechanism a guard imposes on a task (the privacy guard's ``task_dp``)."""
    for guard in engine.guards:
        task_dp = getattr(guard, "task_dp", None)
        if callable(task_dp):
            return task_dp(order)
    return None
