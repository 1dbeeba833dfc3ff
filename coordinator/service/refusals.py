"""What the transport reports besides updates: dropped messages, declined tasks.

Why here and not in the bridge: a dropped message is a security-relevant
decision (malformed input, a device publishing as another), so it is audited
and counted like every other decision, under the service lock.

A device that declines a task because its *own* accountant says its budget
is spent says so with a ``fedward.protocol.messages.ErrorMessage`` of code
``BUDGET_EXHAUSTED`` whose ``detail`` starts with the task id (anything after
the first whitespace is the device's free text, never logged). Why act on it
at once rather than wait for the deadline: the slot is freed for another
device now, and the device is never scheduled again (a budget only shrinks),
instead of being re-dispatched after every heartbeat to refuse again.

A device that holds a DP budget declines a task without DP-SGD with code
``DP_REQUIRED`` (same detail rule): the task is failed at once and the device
goes DECLINED for this study (the study's tasks will never carry what it
requires), so it is neither held to the deadline nor asked again.

A device whose own SecAgg floors refuse a fill (cohort below its minimum, a
threshold below floor((n + c)/2) + 1 for its colluder bound, parameters it
cannot check) says so before it advertises, with ``SECAGG_REFUSED`` (same
detail rule): its task fails at once, so its fill loses the member now rather
than at the ADVERTISE timer, and the device goes DECLINED (the study's fills
are sized by one policy: the next would be refused the same way).
"""

from __future__ import annotations

from collections import Counter

from fedward.coordinator import audit
from fedward.coordinator.errors import RejectReason
from fedward.coordinator.privacy.guard import privacy_guard_of
from fedward.coordinator.store import TaskStatus
from fedward.protocol.ids import is_valid_id
from fedward.protocol.messages import ErrorCode, ErrorMessage

from .core import ServiceCore
from .errors import DeviceNotFound, NoPrivacyPolicy, UnsupportedRefusal
from .studies import finish_if_done

# The bridge's reasons for dropping a message (fedward.coordinator.mqtt.bridge.RejectKind values).
_AUTH_REJECTIONS = frozenset({"route"})
_MALFORMED_REJECTIONS = frozenset({"malformed", "unsupported_version", "too_large", "wrong_topic"})
# The codes a device may decline a task with (see the module doc).
_DECLINE_CODES = frozenset(
    {ErrorCode.BUDGET_EXHAUSTED, ErrorCode.DP_REQUIRED, ErrorCode.SECAGG_REFUSED}
)
# Codes that decline the study's kind of task (DECLINED), with their audit reason.
_DECLINED_REASONS = {
    ErrorCode.DP_REQUIRED: "dp_required",
    ErrorCode.SECAGG_REFUSED: "secagg_refused",
}


class RefusalCalls(ServiceCore):
    def transport_rejected(
        self, study_id: str, device_id: str | None, reason: str, detail: str
    ) -> None:
        """A message the transport dropped before the service saw it (the bridge's
        ``on_reject`` hook): audited, and counted as MALFORMED when it was malformed
        input rather than a routing or authorisation failure."""
        with self._lock:
            study = self._studies.get(study_id)
            # every reason, routing and authorisation failures included, for /metrics
            self._wire_refusals.setdefault(study_id if study else "", Counter())[reason] += 1
            entry = audit.transport_rejected(
                device_id=device_id,
                reason=reason,
                detail=detail,
                authentication=reason in _AUTH_REJECTIONS,
            )
            if study is None:
                self._audit(entry, study_id=None)
                return
            with self._change(study) as changes:
                if reason in _MALFORMED_REJECTIONS:
                    changes.rejections[RejectReason.MALFORMED] += 1
                    study.rejections[RejectReason.MALFORMED] += 1
                self._audit(entry, study_id=study.id)

    def device_refused(
        self, study_id: str, device_id: str, task_id: str, reason: ErrorCode
    ) -> bool:
        """``device_id`` declines ``task_id``: its own privacy budget is spent
        (``BUDGET_EXHAUSTED``) or the task carries no DP-SGD and the device
        requires it (``DP_REQUIRED``: the task fails at once, the device goes
        DECLINED for this study; no guard is asked).

        For a spent budget, the privacy guard fails the task (its slot freed), audits the refusal
        as TASK_REFUSED with the device as actor, and stops the device for good
        (EXHAUSTED, audited as the coordinator's BUDGET_EXHAUSTED). Returns
        False, changing nothing, when the task is no longer in flight (a
        re-delivered refusal, or one after the deadline) or is another
        device's (audited as DEVICE_AUTH_FAILED: no device can stop another).
        """
        if reason not in _DECLINE_CODES:
            raise UnsupportedRefusal(f"a device cannot decline a task with {reason!r}")
        with self._lock:
            study = self._require(study_id)
            if device_id not in study.engine.devices:
                raise DeviceNotFound(f"{study_id} has no device {device_id}")
            if reason is ErrorCode.BUDGET_EXHAUSTED and privacy_guard_of(study.engine) is None:
                raise NoPrivacyPolicy(f"study {study_id!r} has no privacy budgets to refuse on")
            order = study.engine.tasks.get(task_id)
            if order is None:
                return False
            if order.device_id != device_id:
                self._audit(audit.task_not_its_own(device_id, task_id), study_id=study.id)
                return False
            with self._change(study) as changes:
                study.failure_status[task_id] = TaskStatus.FAILED
                study.refused_tasks.add(task_id)
                try:
                    declined = _DECLINED_REASONS.get(reason)
                    if declined is not None:
                        study.engine.task_declined(
                            task_id, now=changes.at, reason=f"declined by the device: {declined}"
                        )
                        self._audit(
                            audit.task_declined(device_id, task_id, reason=declined),
                            study_id=study.id,
                        )
                    else:
                        study.engine.task_refused(
                            task_id, now=changes.at, reason="refused by the device: privacy budget"
                        )
                finally:
                    study.refused_tasks.discard(task_id)
                finish_if_done(self, study, changes)  # maybe the last device able to work
            return True

    def device_error(self, study_id: str, device_id: str, message: ErrorMessage) -> bool:
        """An uplink ``ErrorMessage`` from ``device_id`` (the id its topic names).

        ``detail`` must start with the task id (see the module doc); the rest
        is the device's own text and is dropped. Raises ``UnsupportedRefusal``
        for a code other than ``BUDGET_EXHAUSTED``/``DP_REQUIRED``/``SECAGG_REFUSED`` or a
        detail naming no task.
        """
        words = message.detail.split(maxsplit=1)
        task_id = words[0] if words else ""
        if not is_valid_id(task_id):
            raise UnsupportedRefusal("an uplink error's detail must start with the task id")
        return self.device_refused(study_id, device_id, task_id, message.code)
