"""The coordinator's tables (SQLAlchemy 2 typed declarative).

What lives here and why:

* ``studies``: the immutable spec (JSON) and the lifecycle status;
* ``devices``, ``tasks``, ``model_versions``: what operators and auditors query
  (who is enrolled, what was sent to whom, which model came from which);
* ``engine_state``: one JSON snapshot per study from which a restarted
  coordinator rebuilds its engine (devices, tasks in flight, counters, RNG,
  strategy buffer by reference to blobs); written in the same transaction as
  the rows above, so the two never disagree;
* ``update_receipts``: one row per task id a device answered, so a re-delivered
  update is acknowledged again but merged exactly once;
* ``rejection_counters``: every refused update, by reason, across restarts.

Times are POSIX seconds (``Double``) from the service's injected clock: the
same clock that stamps the audit log, and exact on both backends.
Enums are stored by value as strings (no native PostgreSQL enum types, so a new
member never needs an ``ALTER TYPE`` migration).
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fedward.coordinator.engine import DeviceState
from fedward.coordinator.errors import RejectReason
from fedward.coordinator.strategies import StrategyName
from fedward.protocol.messages import AckStatus, DeviceClass

ID_LEN = 64
SHA_LEN = 64

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class StudyState(enum.StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class TaskStatus(enum.StrEnum):
    IN_FLIGHT = "in_flight"
    ACCEPTED = "accepted"  # the update was accepted (buffered or merged)
    REJECTED = "rejected"  # the device answered, the update was refused
    FAILED = "failed"  # no usable answer: deadline, revocation, stop


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, bytes: LargeBinary}


class StudyRow(Base):
    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    name: Mapped[str] = mapped_column(String(ID_LEN))
    spec: Mapped[dict[str, Any]]
    status: Mapped[StudyState] = mapped_column(_enum(StudyState))
    seed: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    last_accuracy: Mapped[float | None] = mapped_column(Double)
    last_accuracy_version: Mapped[int | None] = mapped_column(Integer)


class DeviceRow(Base):
    __tablename__ = "devices"

    study_id: Mapped[str] = mapped_column(
        String(ID_LEN), ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    device_class: Mapped[DeviceClass] = mapped_column(_enum(DeviceClass))
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    state: Mapped[DeviceState] = mapped_column(_enum(DeviceState))
    completed: Mapped[int] = mapped_column(Integer, default=0)
    enrolled_at: Mapped[float] = mapped_column(Double)
    last_seen_at: Mapped[float | None] = mapped_column(Double)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class TaskRow(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        ForeignKeyConstraint(
            ["study_id", "device_id"],
            ["devices.study_id", "devices.device_id"],
            name="fk_tasks_device",
            ondelete="CASCADE",
        ),
    )

    study_id: Mapped[str] = mapped_column(
        String(ID_LEN), ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    task_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(ID_LEN))
    model_version: Mapped[int] = mapped_column(Integer)
    subset_id: Mapped[str] = mapped_column(String(ID_LEN))
    issued_at: Mapped[float] = mapped_column(Double)
    deadline_at: Mapped[float] = mapped_column(Double)
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus))
    finished_at: Mapped[float | None] = mapped_column(Double)
    reason: Mapped[str | None] = mapped_column(String(200))


class ModelVersionRow(Base):
    __tablename__ = "model_versions"

    study_id: Mapped[str] = mapped_column(
        String(ID_LEN), ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent: Mapped[int | None] = mapped_column(Integer)
    blob_sha256: Mapped[str] = mapped_column(String(SHA_LEN))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Double)
    strategy: Mapped[StrategyName] = mapped_column(_enum(StrategyName))
    lineage: Mapped[dict[str, Any]]
    """The ``fedward.compliance.ModelVersion`` record (record hash, update hashes)."""


class EngineStateRow(Base):
    __tablename__ = "engine_state"

    study_id: Mapped[str] = mapped_column(
        String(ID_LEN), ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    model_version: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[dict[str, Any]]
    updated_at: Mapped[float] = mapped_column(Double)


class UpdateReceiptRow(Base):
    __tablename__ = "update_receipts"
    __table_args__ = (UniqueConstraint("study_id", "task_id", name="uq_update_receipts_task"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(
        String(ID_LEN), ForeignKey("studies.id", ondelete="CASCADE")
    )
    task_id: Mapped[str] = mapped_column(String(ID_LEN))
    device_id: Mapped[str] = mapped_column(String(ID_LEN))
    frame_sha256: Mapped[str] = mapped_column(String(SHA_LEN))
    status: Mapped[AckStatus] = mapped_column(_enum(AckStatus))
    reason: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[float] = mapped_column(Double)


class RejectionCounterRow(Base):
    __tablename__ = "rejection_counters"

    study_id: Mapped[str] = mapped_column(
        String(ID_LEN), ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    reason: Mapped[RejectReason] = mapped_column(_enum(RejectReason), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class ApiTokenRow(Base):
    """A REST API token: only the SHA-256 of its secret is kept (fedward.coordinator.access)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(ID_LEN))
    secret_sha256: Mapped[str] = mapped_column(String(SHA_LEN))
    created_at: Mapped[float] = mapped_column(Double)
    created_by: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double)
    revoked_by: Mapped[str | None] = mapped_column(String(128))


class AuditOutboxRow(Base):
    """Audit records committed with the decision they record, not yet known durable in the log.

    Why (``fedward.coordinator.store.audit_trail``): an entry in the log must mean
    the decision committed. Each service call's records are written here in the
    decision's own transaction; after the commit they are appended to the log,
    and a start-up appends whatever a crash left here. ``id`` only ever grows
    (AUTOINCREMENT on SQLite, a sequence on PostgreSQL): the log's entries carry
    it as ``outbox_ref`` so a restart knows which rows already reached the log.
    """

    __tablename__ = "audit_outbox"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    study_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    record: Mapped[dict[str, Any]]
    created_at: Mapped[float] = mapped_column(Double)
