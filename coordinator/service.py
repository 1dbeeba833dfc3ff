"""The live coordinator's one façade: studies, devices, tasks, updates, models.

The REST API and the MQTT bridge both call :class:`StudyService`; neither
touches the engine, the database or the audit log directly. Why one façade:
every decision (enrol, dispatch, accept, reject, merge, lifecycle) must be made
under one lock, persisted in one transaction and audited once, whichever
transport it came through.

How a call works: under the service lock, the study's :class:`Engine` makes the
decision; an engine listener appends it to the audit log (write-ahead: the
entry exists before the database commit), writes new model blobs and collects
the rows to write; then one transaction stores the rows, the receipts, the
counters and an engine snapshot. If anything fails, the study is reloaded from
the database, so memory never runs ahead of what a restart would see.

Time comes from the injected ``clock`` (POSIX seconds), never from the system
directly, so tests and replays control it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from compliance import (
    Actor,
    ActorKind,
    AuditAction,
    AuditLog,
    Outcome,
    load_or_create_signing_key,
)
from protocol.codec import decode_tensors
from protocol.messages import (
    Ack,
    AckStatus,
    DeviceClass,
    DeviceStatus,
    DpParams,
    Enrol,
    EnrolAck,
    Heartbeat,
    ModelDownload,
    Task,
    encode_frame,
)

from .engine import DeviceState, Engine, TaskOrder
from .errors import CoordinatorError, RejectReason, UpdateRejected
from .ingest import IncomingUpdate, decode_update
from .migrations import upgrade_to_head
from .planning import DoesNotFit
from .settings import CoordinatorSettings
from .store import (
    BlobStore,
    Repository,
    StudyChanges,
    StudyState,
    TaskStatus,
    create_db_engine,
)
from .store.audit_trail import COORDINATOR_ACTOR, OPERATOR, AuditTrail, actor
from .store.models import DeviceRow, ModelVersionRow, StudyRow, UpdateReceiptRow
from .store.recorder import EventRecorder
from .store.runtime import RuntimeStore, StudyRuntime
from .strategies import StrategyName
from .study_spec import StudySpec

log = logging.getLogger(__name__)

UNKNOWN_TASK_ID = "unknown"
STUDY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_STUDY_ID_RE = re.compile(STUDY_ID_PATTERN)
Clock = Callable[[], float]

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

# The bridge's reasons for dropping a message (coordinator.bridge.RejectKind values).
_AUTH_REJECTIONS = frozenset({"route"})
_MALFORMED_REJECTIONS = frozenset({"malformed", "unsupported_version", "too_large", "wrong_topic"})

_VERBS = {
    AuditAction.STUDY_STARTED: "start",
    AuditAction.STUDY_PAUSED: "pause",
    AuditAction.STUDY_RESUMED: "resume",
    AuditAction.STUDY_STOPPED: "stop",
}


# -- errors ------------------------------------------------------------------
class ServiceError(CoordinatorError):
    """Base of the errors the service raises for a caller's mistake."""


class StudyNotFound(ServiceError, KeyError):
    pass


class DeviceNotFound(ServiceError, KeyError):
    pass


class ModelVersionNotFound(ServiceError, KeyError):
    pass


class StudyExists(ServiceError):
    pass


class InvalidTransition(ServiceError):
    """The study's state does not allow this lifecycle call."""


class InvalidStudyId(ServiceError, ValueError):
    pass


# -- what callers get back ---------------------------------------------------
class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StudyInfo(_View):
    id: str
    name: str
    state: StudyState
    spec: StudySpec
    created_at: float
    updated_at: float


class StudyStatus(_View):
    """Where a study stands. Counters absent from a mapping are zero."""

    study_id: str
    state: StudyState
    model_version: int
    updates_accepted: int
    merges: int
    tasks_dispatched: int
    tasks_failed: int
    in_flight: int
    buffered: int
    duplicates: int
    devices_by_state: dict[DeviceState, int]
    rejections: dict[RejectReason, int]
    last_accuracy: float | None
    last_accuracy_version: int | None


class DeviceInfo(_View):
    device_id: str
    device_class: DeviceClass
    memory_bytes: int
    state: DeviceState
    revoked: bool
    completed: int
    enrolled_at: float
    last_seen_at: float | None
    public_key: str
    """Ed25519 raw public key, hex."""


class ModelVersionInfo(_View):
    version: int
    parent: int | None
    sha256: str
    """SHA-256 of the model blob (``protocol.codec`` tensors): the lineage's content hash."""
    size_bytes: int
    created_at: float
    strategy: StrategyName
    record_hash: str
    update_count: int


@dataclass(frozen=True)
class OutboundTask:
    """A task to publish to one device: its header and the model frame it needs."""

    device_id: str
    task: Task
    model_frame: bytes


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StudyService:
    """Thread-safe façade over every live study (see the module doc)."""

    def __init__(
        self,
        *,
        repository: Repository,
        blobs: BlobStore,
        pending: BlobStore,
        audit: AuditLog,
        clock: Clock,
        max_message_bytes: int,
        seed: int | None = None,
    ) -> None:
        self._repo = repository
        self._trail = AuditTrail(audit)
        self._runtimes = RuntimeStore(
            repository=repository, blobs=blobs, pending=pending, clock=clock
        )
        self._recorder = EventRecorder(trail=self._trail, runtimes=self._runtimes)
        self._clock = clock
        self._max_bytes = max_message_bytes
        self._seed = seed
        self._lock = threading.RLock()
        self._closed = False
        self._studies: dict[str, StudyRuntime] = {}
        self._reserved: set[str] = set()  # ids of studies being created
        for row in self._repo.studies():
            self._studies[row.id] = self._runtimes.load(
                row, on_event=self._recorder.on_event, on_guard_event=self._recorder.on_guard_event
            )

    @classmethod
    def open(
        cls,
        settings: CoordinatorSettings,
        *,
        clock: Clock = time.time,
        seed: int | None = None,
        migrate: bool = True,
    ) -> StudyService:
        """Build the service from settings: migrate the database, open blobs and audit log."""
        db = create_db_engine(settings.database_url)
        try:
            if migrate:
                upgrade_to_head(db)
            settings.signing_key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            settings.audit_log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            password = settings.audit_key_password
            key = load_or_create_signing_key(
                settings.signing_key_path,
                password=password.get_secret_value().encode() if password else None,
            )
            audit = AuditLog.open(settings.audit_log_path, signing_key=key, clock=clock)
        except BaseException:
            db.dispose()
            raise
        try:
            return cls(
                repository=Repository(db),
                blobs=BlobStore(settings.blob_dir),
                pending=BlobStore(settings.pending_dir),
                audit=audit,
                clock=clock,
                max_message_bytes=settings.max_message_bytes,
                seed=seed,
            )
        except BaseException:
            audit.close()
            db.dispose()
            raise

    def close(self) -> None:
        """Sign the audit log's tail and release the database (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._trail.close()
            finally:
                self._repo.close()

    @property
    def audit_public_key(self) -> Ed25519PublicKey:
        return self._trail.public_key

    @property
    def repository(self) -> Repository:
        return self._repo

    # -- studies -------------------------------------------------------------
    def create_study(
        self, spec: StudySpec, *, study_id: str | None = None, by: str = OPERATOR
    ) -> StudyInfo:
        """Create a DRAFT study with its initial model (version 0); the spec is then fixed.

        Building the engine measures the training footprint of every subset tier
        (seconds for a large model), so it runs outside the service lock: other
        studies keep being served meanwhile.
        """
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
            study = self._new_runtime(row, spec)
            with self._lock:
                self._studies[sid] = study
                try:
                    self._persist_new_study(study, by=by)
                except BaseException:
                    self._studies.pop(sid, None)
                    raise
                return self._info(study)
        finally:
            with self._lock:
                self._reserved.discard(sid)

    def _persist_new_study(self, study: StudyRuntime, *, by: str) -> None:
        spec = study.spec
        with self._change(study, new=True) as changes:
            changes.new_study = study.row
            record = self._runtimes.record_version(study, parent=None, task_ids=())
            self._audit(
                AuditAction.STUDY_CREATED,
                Outcome.SUCCESS,
                actor=actor(ActorKind.OPERATOR, by),
                study_id=study.id,
                details={
                    "study_name": spec.name,
                    "strategy": spec.strategy.value,
                    "subset_mode": spec.subset_mode.value,
                    "model_kind": spec.model_kind.value,
                    "concurrency": spec.concurrency,
                    "buffer_size": spec.buffer_size,
                    "spec_sha256": _digest(spec.model_dump_json().encode()),
                    "content_hash": record.content_hash,
                    "record_hash": record.record_hash,
                },
            )

    def list_studies(self) -> list[StudyInfo]:
        with self._lock:
            return [self._info(s) for s in self._studies.values()]

    def study(self, study_id: str) -> StudyInfo:
        with self._lock:
            return self._info(self._require(study_id))

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
            return self.status(study_id)

    # -- devices -------------------------------------------------------------
    def enrol(self, study_id: str, msg: Enrol) -> EnrolAck:
        """Admit a device (idempotent for the same key); refusals are acks, not errors."""
        with self._lock:
            study = self._studies.get(study_id)
            if study is None or msg.study_id != study_id:
                return EnrolAck(accepted=False, reason="unknown study")
            device_actor = actor(ActorKind.DEVICE, msg.device_id)
            details: dict[str, object] = {
                "device_id": msg.device_id,
                "device_class": msg.device_class.value,
                "memory_bytes": msg.memory_bytes,
                "key_sha256": _digest(msg.public_key),
            }
            refusal = self._enrol_refusal(study, msg)
            if refusal is not None:
                action = (
                    AuditAction.DEVICE_AUTH_FAILED
                    if refusal.startswith("device id is enrolled")
                    else AuditAction.DEVICE_ENROLLED
                )
                self._audit(
                    action,
                    Outcome.DENIED,
                    actor=device_actor,
                    study_id=study.id,
                    details={**details, "reason": refusal},
                )
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
                self._audit(
                    AuditAction.DEVICE_ENROLLED,
                    Outcome.SUCCESS,
                    actor=device_actor,
                    study_id=study.id,
                    details=details,
                )
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
                    self._audit(
                        AuditAction.DEVICE_REVOKED,
                        Outcome.SUCCESS,
                        actor=actor(ActorKind.OPERATOR, by),
                        study_id=study.id,
                        details={"device_id": device_id},
                    )
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

    # -- tasks ---------------------------------------------------------------
    def dispatch(self, study_id: str) -> list[OutboundTask]:
        """Tasks to publish now (empty unless the study is RUNNING)."""
        with self._lock:
            study = self._require(study_id)
            if study.state is not StudyState.RUNNING:
                return []
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
                deadline = study.spec.task_deadline_s
                expired = [o for o in study.engine.tasks.values() if o.issued_at + deadline <= now]
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
        return failed

    # -- updates -------------------------------------------------------------
    def submit_update(self, study_id: str, frame: bytes) -> Ack:
        """Decode, dedupe, judge and persist one update frame; never raises for bad input.

        A re-delivered frame (same task, device and bytes) is acknowledged with
        the status its first delivery earned and is never merged twice; a
        different frame for an answered task is rejected as DUPLICATE.
        """
        raw = bytes(frame) if isinstance(frame, bytes | bytearray | memoryview) else b""
        frame_sha = _digest(raw)
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

    # -- models --------------------------------------------------------------
    def model_versions(self, study_id: str) -> list[ModelVersionInfo]:
        with self._lock:
            self._require(study_id)
            return [_version_info(r) for r in self._repo.model_versions(study_id)]

    def model_blob(self, study_id: str, version: int) -> bytes:
        """The stored model (``protocol.codec`` tensors), verified against its SHA-256."""
        with self._lock:
            study = self._require(study_id)
            sha = study.version_sha.get(version)
            if sha is None:
                raise ModelVersionNotFound(f"{study_id} has no model version {version}")
            return self._runtimes.blobs.get(sha)

    def model_frame(self, study_id: str, version: int) -> bytes:
        """A full-model ``ModelDownload`` frame of a version (what the API serves)."""
        with self._lock:
            study = self._require(study_id)
            params = decode_tensors(self.model_blob(study_id, version))
            header = ModelDownload(
                model_version=version,
                subset_id=study.engine.planner.ladder.full().subset_id,
                names=tuple(params),
            )
            return encode_frame(header, params, max_bytes=2**32 - 1)

    # -- metrics source ------------------------------------------------------
    def study_ids(self) -> list[str]:
        with self._lock:
            return list(self._studies)

    # == internals ============================================================
    def _require(self, study_id: str) -> StudyRuntime:
        study = self._studies.get(study_id)
        if study is None:
            raise StudyNotFound(f"no study {study_id!r}")
        return study

    def _new_study_id(self, name: str) -> str:
        slug = name.lstrip("_.-")[:50] or "study"
        while True:
            candidate = f"{slug}-{secrets.token_hex(4)}"
            if candidate not in self._studies and candidate not in self._reserved:
                return candidate

    def _study_seed(self, study_id: str) -> int:
        if self._seed is None:
            return secrets.randbits(62)
        digest = hashlib.sha256(f"{self._seed}/{study_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") >> 2

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
                self._audit(
                    action,
                    Outcome.SUCCESS,
                    actor=actor(ActorKind.OPERATOR, by),
                    study_id=study.id,
                    details={"previous_state": previous.value, "state": target.value},
                )
            return self._info(study)

    def _info(self, study: StudyRuntime) -> StudyInfo:
        return StudyInfo(
            id=study.id,
            name=study.row.name,
            state=study.state,
            spec=study.spec,
            created_at=study.row.created_at,
            updated_at=study.row.updated_at,
        )

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
            deadline_s=spec.task_deadline_s,
            dp=_task_dp(study.engine, order),
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

    # -- runtimes ------------------------------------------------------------
    def _new_runtime(self, row: StudyRow, spec: StudySpec) -> StudyRuntime:
        return self._runtimes.build(
            row,
            spec,
            on_event=self._recorder.on_event,
            on_guard_event=self._recorder.on_guard_event,
        )

    def _reload(self, study_id: str) -> None:
        """Replace a study's runtime by what the database holds (after a failed call)."""
        row = self._repo.study(study_id)
        if row is None:
            self._studies.pop(study_id, None)
            return
        self._studies[study_id] = self._runtimes.load(
            row, on_event=self._recorder.on_event, on_guard_event=self._recorder.on_guard_event
        )

    @contextmanager
    def _change(self, study: StudyRuntime, *, new: bool = False) -> Iterator[StudyChanges]:
        """One service call's changes to a study: committed at the end, or rolled back."""
        if self._closed:
            raise CoordinatorError("the study service is closed")
        changes = StudyChanges(study_id=study.id, at=self._clock())
        study.changes = changes
        try:
            yield changes
            self._runtimes.commit(study, changes)
        except BaseException:
            study.changes = None
            if not new:
                try:
                    self._reload(study.id)
                except Exception:
                    log.exception("could not reload study %s after a failed change", study.id)
            raise
        finally:
            study.changes = None

    def _audit(
        self,
        action: AuditAction,
        outcome: Outcome,
        *,
        actor: Actor,
        study_id: str | None,
        details: dict[str, object],
    ) -> None:
        self._trail.record(action, outcome, who=actor, study_id=study_id, details=details)


def _task_dp(engine: Engine, order: TaskOrder) -> DpParams | None:
    """The DP mechanism a guard imposes on a task (the privacy guard's ``task_dp``)."""
    for guard in engine.guards:
        task_dp = getattr(guard, "task_dp", None)
        if callable(task_dp):
            return task_dp(order)
    return None


def _version_info(row: ModelVersionRow) -> ModelVersionInfo:
    lineage = row.lineage
    return ModelVersionInfo(
        version=row.version,
        parent=row.parent,
        sha256=row.blob_sha256,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
        strategy=row.strategy,
        record_hash=lineage["record_hash"],
        update_count=len(lineage.get("update_hashes", ())),
    )
