"""Devices: enrolment (idempotent per key), revocation, heartbeats, listings."""

from __future__ import annotations

from functools import partial

from fedward.coordinator import audit
from fedward.coordinator.engine import DeviceState
from fedward.coordinator.engine.planning import DoesNotFit
from fedward.coordinator.store import StudyState, TaskStatus
from fedward.coordinator.store.audit_trail import OPERATOR
from fedward.coordinator.store.models import DeviceRow
from fedward.coordinator.store.runtime import StudyRuntime
from fedward.protocol.messages import DeviceStatus, Enrol, EnrolAck, Heartbeat

from .core import ServiceCore, digest
from .errors import DeviceNotFound
from .views import DeviceInfo


class DeviceCalls(ServiceCore):
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
            if device.state in (DeviceState.REVOKED, DeviceState.EXHAUSTED):
                return False
            with self._change(study) as changes:
                now = changes.at
                changes.device(msg.device_id, last_seen_at=now)
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
