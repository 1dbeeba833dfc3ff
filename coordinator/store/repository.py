"""Reads and one-transaction writes of the coordinator's tables.

The service changes a study in memory (through the engine) and then hands a
:class:`StudyChanges` batch to :meth:`Repository.apply`, which writes all of it
-- new rows, status changes, receipts, counters and the engine snapshot -- in
one transaction. Either the whole decision is durable or none of it is, so the
tables and the snapshot a restart resumes from never disagree. The decision's
audit records are part of that batch (the ``audit_outbox`` rows), so the log
can only ever hear of what committed (see :mod:`.audit_trail`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from fedward.coordinator.errors import RejectReason
from fedward.protocol.messages import AckStatus

from .models import (
    AuditOutboxRow,
    DeviceRow,
    EngineStateRow,
    ModelVersionRow,
    RejectionCounterRow,
    StudyRow,
    TaskRow,
    UpdateReceiptRow,
)


@dataclass
class StudyChanges:
    """Everything one service call changed in one study."""

    study_id: str
    at: float
    new_study: StudyRow | None = None
    study_values: dict[str, Any] = field(default_factory=dict)
    new_devices: list[DeviceRow] = field(default_factory=list)
    device_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    new_tasks: list[TaskRow] = field(default_factory=list)
    task_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    new_versions: list[ModelVersionRow] = field(default_factory=list)
    new_receipts: list[UpdateReceiptRow] = field(default_factory=list)
    receipt_status: dict[str, AckStatus] = field(default_factory=dict)
    rejections: Counter[RejectReason] = field(default_factory=Counter)
    engine_state: tuple[int, dict[str, Any]] | None = None  # (model version, snapshot)
    audit: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    """Audit records of this call, (study id, record), written to the outbox with the rest."""
    audit_done_upto: int = 0
    """Outbox rows up to this id are durable in the log: deleted in the same transaction."""

    def is_empty(self) -> bool:
        """Nothing but (possibly) audit records: no decision to commit."""
        return not (
            self.new_study
            or self.study_values
            or self.new_devices
            or self.device_values
            or self.new_tasks
            or self.task_values
            or self.new_versions
            or self.new_receipts
            or self.receipt_status
            or self.rejections
            or self.engine_state
        )

    def device(self, device_id: str, **values: Any) -> None:
        self.device_values.setdefault(device_id, {}).update(values)

    def task(self, task_id: str, **values: Any) -> None:
        self.task_values.setdefault(task_id, {}).update(values)


def _bulk_update(
    s: Session, model: type[Any], key: str, study_id: str, values: dict[str, dict[str, Any]]
) -> None:
    """UPDATE rows by primary key, one executemany per set of changed columns.

    Why: a batch of updates changes dozens of tasks and devices; one statement
    (pipelined by the driver) instead of one round trip per row.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for ident, row_values in values.items():
        params = {"study_id": study_id, key: ident, **row_values}
        groups.setdefault(tuple(sorted(row_values)), []).append(params)
    for rows in groups.values():
        s.execute(update(model), rows, execution_options={"synchronize_session": False})


class Repository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    # -- reads ---------------------------------------------------------------
    def studies(self) -> list[StudyRow]:
        with self._read() as s:
            return list(s.scalars(select(StudyRow).order_by(StudyRow.created_at, StudyRow.id)))

    def study(self, study_id: str) -> StudyRow | None:
        with self._read() as s:
            return s.get(StudyRow, study_id)

    def devices(self, study_id: str) -> list[DeviceRow]:
        with self._read() as s:
            query = select(DeviceRow).where(DeviceRow.study_id == study_id)
            return list(s.scalars(query.order_by(DeviceRow.device_id)))

    def device(self, study_id: str, device_id: str) -> DeviceRow | None:
        with self._read() as s:
            return s.get(DeviceRow, (study_id, device_id))

    def tasks(self, study_id: str) -> list[TaskRow]:
        with self._read() as s:
            query = select(TaskRow).where(TaskRow.study_id == study_id)
            return list(s.scalars(query.order_by(TaskRow.task_id)))

    def model_versions(self, study_id: str) -> list[ModelVersionRow]:
        with self._read() as s:
            query = select(ModelVersionRow).where(ModelVersionRow.study_id == study_id)
            return list(s.scalars(query.order_by(ModelVersionRow.version)))

    def engine_state(self, study_id: str) -> EngineStateRow | None:
        with self._read() as s:
            return s.get(EngineStateRow, study_id)

    def receipt(self, study_id: str, task_id: str) -> UpdateReceiptRow | None:
        with self._read() as s:
            query = select(UpdateReceiptRow).where(
                UpdateReceiptRow.study_id == study_id, UpdateReceiptRow.task_id == task_id
            )
            return s.scalars(query).one_or_none()

    def receipts_for(self, study_id: str, task_ids: Iterable[str]) -> dict[str, UpdateReceiptRow]:
        """The receipts of ``task_ids`` that exist, by task id (one query for a batch)."""
        wanted = sorted(set(task_ids))
        if not wanted:
            return {}
        with self._read() as s:
            query = select(UpdateReceiptRow).where(
                UpdateReceiptRow.study_id == study_id, UpdateReceiptRow.task_id.in_(wanted)
            )
            return {row.task_id: row for row in s.scalars(query)}

    def receipts(self, study_id: str, *, status: AckStatus | None = None) -> list[UpdateReceiptRow]:
        with self._read() as s:
            query = select(UpdateReceiptRow).where(UpdateReceiptRow.study_id == study_id)
            if status is not None:
                query = query.where(UpdateReceiptRow.status == status)
            return list(s.scalars(query.order_by(UpdateReceiptRow.id)))

    def rejection_counts(self, study_id: str) -> Counter[RejectReason]:
        with self._read() as s:
            query = select(RejectionCounterRow).where(RejectionCounterRow.study_id == study_id)
            return Counter({row.reason: row.count for row in s.scalars(query)})

    def audit_outbox(self) -> list[AuditOutboxRow]:
        """Every outbox row, oldest first (start-up: what may not be in the log yet)."""
        with self._read() as s:
            return list(s.scalars(select(AuditOutboxRow).order_by(AuditOutboxRow.id)))

    def delete_audit_outbox(self, *, upto: int) -> None:
        """Forget outbox rows up to ``upto``: their entries are durable in the log."""
        with self._sessions.begin() as s:
            s.execute(delete(AuditOutboxRow).where(AuditOutboxRow.id <= upto))

    # -- the one write -------------------------------------------------------
    def apply(self, changes: StudyChanges) -> list[int]:
        """Write ``changes`` in one transaction (all or nothing).

        Returns the outbox ids of ``changes.audit``, in order.
        """
        sid = changes.study_id
        with self._sessions.begin() as s:
            if changes.new_study is not None:
                s.add(changes.new_study)
                s.flush()
            if changes.study_values:
                s.execute(update(StudyRow).where(StudyRow.id == sid).values(changes.study_values))
            s.add_all(changes.new_devices)
            s.flush()
            _bulk_update(s, DeviceRow, "device_id", sid, changes.device_values)
            s.add_all(changes.new_tasks)
            s.add_all(changes.new_versions)
            s.add_all(changes.new_receipts)
            s.flush()
            _bulk_update(s, TaskRow, "task_id", sid, changes.task_values)
            for task_id, status in changes.receipt_status.items():
                s.execute(
                    update(UpdateReceiptRow)
                    .where(UpdateReceiptRow.study_id == sid, UpdateReceiptRow.task_id == task_id)
                    .values(status=status)
                )
            for reason, n in changes.rejections.items():
                row = s.get(RejectionCounterRow, (sid, reason))
                if row is None:
                    s.add(RejectionCounterRow(study_id=sid, reason=reason, count=n))
                else:
                    row.count += n
            if changes.engine_state is not None:
                version, state = changes.engine_state
                engine_row = s.get(EngineStateRow, sid)
                if engine_row is None:
                    s.add(
                        EngineStateRow(
                            study_id=sid,
                            model_version=version,
                            revision=1,
                            state=state,
                            updated_at=changes.at,
                        )
                    )
                else:
                    engine_row.model_version = version
                    engine_row.revision += 1
                    engine_row.state = state
                    engine_row.updated_at = changes.at
            if changes.audit_done_upto:
                s.execute(
                    delete(AuditOutboxRow).where(AuditOutboxRow.id <= changes.audit_done_upto)
                )
            outbox = [
                AuditOutboxRow(study_id=study_id, record=record, created_at=changes.at)
                for study_id, record in changes.audit
            ]
            s.add_all(outbox)
            s.flush()
            return [row.id for row in outbox]
