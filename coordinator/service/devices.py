"""Devices: enrolment (idempotent per key), revocation, heartbeats, listings.

Enrolment over the wire needs the operator: :meth:`DeviceCalls.issue_enrolment_secret`
mints a one-time secret for one device id (audited under the operator), and
:meth:`DeviceCalls.enrol_authenticated` admits an ``Enrol`` only with a valid proof
of that secret (:mod:`fedward.protocol.enrolment`); without one the attempt is
audited as anonymous, never in the name of the id it claims. ``enrol`` itself
trusts its caller (in-process tools); the MQTT bridge calls the authenticated one.

A heartbeat lists the tasks its device still holds; a task in flight for that
device and missing from the list was lost (the agent restarted, or dropped it)
and is freed at once rather than at its deadline.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from functools import partial

from fedward.coordinator import audit
from fedward.coordinator.engine import DeviceState
from fedward.coordinator.engine.planning import DoesNotFit
from fedward.coordinator.store import StudyState, TaskStatus
from fedward.coordinator.store.audit_trail import OPERATOR
from fedward.coordinator.store.models import DeviceRow
from fedward.coordinator.store.runtime import StudyRuntime
from fedward.protocol.enrolment import check_ticket, issue_secret
from fedward.protocol.errors import EnrolmentDenied
from fedward.protocol.ids import is_valid_id
from fedward.protocol.messages import DeviceStatus, Enrol, EnrolAck, Heartbeat

from .core import ServiceCore, digest
from .errors import DeviceNotFound, ServiceError
from .views import DeviceInfo

DEFAULT_SECRET_VALID_S = 7 * 24 * 3600
LOST_TASK_GRACE_S = 5.0
"""A task dispatched this recently may be missing from a heartbeat sent before it arrived."""


class EnrolmentUnavailable(ServiceError):
    """This service has no enrolment key (built without ``StudyService.open``)."""


class DeviceCalls(ServiceCore):
    def issue_enrolment_secret(
        self,
        study_id: str,
        device_id: str,
        *,
        by: str = OPERATOR,
        valid_s: float = DEFAULT_SECRET_VALID_S,
    ) -> str:
        """A one-time enrolment secret for ``device_id`` (text form; hand it to the device).

        Audited under the operator ``by`` with the secret's hash. Refused for an
        unknown study, an invalid id or a device id already enrolled (its secret
        was used; a lost device gets a new id, the old one is revoked).
        """
        if self._enrolment_key is None:
            raise EnrolmentUnavailable("this coordinator has no enrolment key")
        if not is_valid_id(device_id):
            raise DeviceNotFound("a device id must match [A-Za-z0-9_.-]{1,64}")
        if not valid_s > 0:
            raise EnrolmentUnavailable("valid_s must be > 0")
        with self._lock:
            study = self._require(study_id)
            if device_id in study.engine.devices:
                raise EnrolmentUnavailable(f"device {device_id} is already enrolled in {study_id}")
            expires_at = int(self._clock() + valid_s)
            secret = issue_secret(
                self._enrolment_key, study_id=study_id, device_id=device_id, expires_at=expires_at
            )
            text = secret.text()
            entry = audit.enrolment_secret_issued(
                device_id=device_id,
                by=by,
                expires_at=expires_at,
                secret_sha256=hashlib.sha256(text.encode()).hexdigest(),
            )
            self._audit(entry, study_id=study.id)
            return text

    def enrol_authenticated(self, study_id: str, msg: Enrol) -> tuple[EnrolAck, bytes | None]:
        """``enrol`` behind a check of the device's enrolment-secret proof.

        Returns the ack and the secret's mac (the bridge proves the coordinator key
        with it), or a refusal and ``None`` when the proof is missing, wrong or
        expired: that attempt is audited as anonymous.
        """
        if self._enrolment_key is None:
            raise EnrolmentUnavailable("this coordinator has no enrolment key")
        ticket = msg.ticket
        try:
            if ticket is None:
                raise EnrolmentDenied("enrolment needs an operator-issued secret")
            mac = check_ticket(
                self._enrolment_key,
                study_id=study_id,
                device_id=msg.device_id,
                expires_at=ticket.expires_at,
                nonce=ticket.nonce,
                proof=ticket.proof,
                public_key=bytes(msg.public_key),
                now=self._clock(),
            )
        except EnrolmentDenied as exc:
            self.wire_refused(
                study_id,
                sender=None,
                reason="enrolment_denied",
                detail=str(exc),
                claimed_device_id=msg.device_id,
                topic_kind="enrol",
            )
            return EnrolAck(accepted=False, reason=str(exc)[:200]), None
        return self.enrol(study_id, msg), mac

    def wire_refused(
        self,
        study_id: str,
        *,
        sender: str | None,
        reason: str,
        detail: str,
        claimed_device_id: str | None,
        topic_kind: str | None,
        count: int = 1,
    ) -> None:
        """Count and audit a message refused on the wire (see ``audit.wire_refused``)."""
        with self._lock:
            known = study_id in self._studies
            counter = self._wire_refusals.setdefault(study_id if known else "", Counter())
            counter[reason] += count
            entry = audit.wire_refused(
                sender=sender,
                reason=reason,
                detail=detail,
                claimed_device_id=claimed_device_id,
                topic_kind=topic_kind,
                count=count,
            )
            self._audit(entry, study_id=study_id if known else None)

    def wire_refusals(self, study_id: str) -> dict[str, int]:
        """Messages refused on the wire since start, by reason (``""``: unknown studies)."""
        with self._lock:
            return dict(self._wire_refusals.get(study_id, {}))

    def enrol(self, study_id: str, msg: Enrol, *, by: str | None = None) -> EnrolAck:
        """Admit a device (idempotent for the same key); refusals are acks, not errors.

        ``by``: the operator enrolling it over REST (the audit's actor); None when the
        device asked itself."""
        with self._lock:
            study = self._studies.get(study_id)
            if study is None or msg.study_id != study_id:
                return EnrolAck(accepted=False, reason="unknown study")
            refusal = self._enrol_refusal(study, msg)
            enrolment = partial(
                audit.device_enrolment,
                device_id=msg.device_id,
                device_class=msg.device_class.value,
                memory_bytes=msg.memory_bytes,
                key_sha256=digest(msg.public_key),
                by=by,
            )
            if refusal is not None:
                entry = enrolment(
                    refusal=refusal, impersonation=refusal.startswith("device id is enrolled")
                )
                self._audit(entry, study_id=study.id)
                return EnrolAck(accepted=False, reason=refusal)
            if msg.device_id in study.engine.devices:
                return EnrolAck(accepted=True, reason="already enrolled")
            with self._change(study) as changes:
                now = changes.at
                device = study.engine.enrol(
                    msg.device_id,
                    device_class=msg.device_class.value,
                    memory_bytes=msg.memory_bytes,
                    now=now,
                )
                changes.new_devices.append(
                    DeviceRow(
                        study_id=study.id,
                        device_id=msg.device_id,
                        device_class=msg.device_class,
                        memory_bytes=msg.memory_bytes,
                        public_key=bytes(msg.public_key),
                        state=device.state,
                        completed=0,
                        enrolled_at=now,
                        last_seen_at=now,
                        revoked=False,
                    )
                )
                study.saved_devices[msg.device_id] = (device.state, device.completed)
                self._audit(enrolment(refusal=None), study_id=study.id)
            return EnrolAck(accepted=True)

    def _enrol_refusal(self, study: StudyRuntime, msg: Enrol) -> str | None:
        if study.state is StudyState.STOPPED:
            return "study is stopped"
        known = study.engine.devices.get(msg.device_id)
        if known is not None:
            if known.state is DeviceState.REVOKED:
                return "device is revoked"
            row = self._repo.device(study.id, msg.device_id)
            if row is not None and row.public_key != bytes(msg.public_key):
                return "device id is enrolled with another key"
            return None
        try:
            study.engine.planner.subset_for(msg.memory_bytes, fleet_memory=[msg.memory_bytes])
        except DoesNotFit as exc:
            return f"device memory too small: {exc}"[:200]
        return None

    def revoke(self, study_id: str, device_id: str, *, by: str = OPERATOR) -> DeviceInfo:
        """Revoke a device for good; its task in flight fails, its updates are refused."""
        with self._lock:
            study = self._require(study_id)
            device = study.engine.devices.get(device_id)
            if device is None:
                raise DeviceNotFound(f"{study_id} has no device {device_id}")
            if device.state is not DeviceState.REVOKED:
                with self._change(study) as changes:
                    now = changes.at
                    for order in [
                        o for o in study.engine.tasks.values() if o.device_id == device_id
                    ]:
                        study.failure_status[order.task_id] = TaskStatus.FAILED
                        study.engine.task_failed(order.task_id, now=now, reason="device revoked")
                    study.engine.set_device_state(
                        device_id, DeviceState.REVOKED, now=now, reason="revoked by operator"
                    )
                    changes.device(device_id, revoked=True)
                    self._audit(audit.device_revoked(device_id, by=by), study_id=study.id)
            return self._device_info(study, device_id)

    def list_devices(self, study_id: str) -> list[DeviceInfo]:
        with self._lock:
            study = self._require(study_id)
            rows = {r.device_id: r for r in self._repo.devices(study_id)}
            return [self._device_info(study, d, row=rows.get(d)) for d in study.engine.devices]

    def device_public_key(self, study_id: str, device_id: str) -> bytes:
        """The enrolled Ed25519 public key (32 raw bytes) of a device."""
        with self._lock:
            study = self._require(study_id)
            if device_id not in study.engine.devices:
                raise DeviceNotFound(f"{study_id} has no device {device_id}")
            return bytes(self._device_row(study, device_id).public_key)

    def heartbeat(self, study_id: str, msg: Heartbeat) -> bool:
        """Note a device is alive; False if the study or device is unknown or revoked.

        An OFFLINE device (it missed a deadline) becomes schedulable again; a
        device announcing shutdown while idle is taken off the schedule.
        """
        with self._lock:
            study = self._studies.get(study_id)
            device = study.engine.devices.get(msg.device_id) if study else None
            if study is None or device is None:
                return False
            if device.state in (DeviceState.REVOKED, DeviceState.EXHAUSTED, DeviceState.DECLINED):
                return False
            with self._change(study) as changes:
                now = changes.at
                changes.device(msg.device_id, last_seen_at=now)
                self._free_lost_tasks(study, msg, now=now)
                if msg.status is DeviceStatus.SHUTTING_DOWN:
                    if device.state is DeviceState.IDLE:
                        study.engine.set_device_state(
                            msg.device_id, DeviceState.OFFLINE, now=now, reason="shutting down"
                        )
                elif device.state is DeviceState.OFFLINE:
                    study.engine.set_device_state(
                        msg.device_id, DeviceState.IDLE, now=now, reason="heartbeat"
                    )
            return True

    def _free_lost_tasks(self, study: StudyRuntime, msg: Heartbeat, *, now: float) -> None:
        """Fail this device's tasks in flight that its heartbeat no longer holds."""
        held = set(msg.tasks)
        lost = [
            o
            for o in study.engine.tasks.values()
            if o.device_id == msg.device_id
            and o.task_id not in held
            and o.issued_at + LOST_TASK_GRACE_S <= now
        ]
        for order in lost:
            study.failure_status[order.task_id] = TaskStatus.FAILED
            study.engine.task_failed(order.task_id, now=now, reason="device no longer holds it")
            self._task_times.forget(study.id, order.task_id)

    def _device_row(self, study: StudyRuntime, device_id: str) -> DeviceRow:
        row = self._repo.device(study.id, device_id)
        if row is None:
            raise DeviceNotFound(f"{study.id} has no device row {device_id}")
        return row

    def _device_info(
        self, study: StudyRuntime, device_id: str, *, row: DeviceRow | None = None
    ) -> DeviceInfo:
        row = row if row is not None else self._device_row(study, device_id)
        device = study.engine.devices[device_id]
        return DeviceInfo(
            device_id=device_id,
            device_class=row.device_class,
            memory_bytes=row.memory_bytes,
            state=device.state,
            revoked=device.state is DeviceState.REVOKED,
            completed=device.completed,
            enrolled_at=row.enrolled_at,
            last_seen_at=row.last_seen_at,
            public_key=bytes(row.public_key).hex(),
        )
