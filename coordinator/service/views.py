"""What callers get back: frozen views, never the engine's or the database's objects.

Why copies: the REST API serialises these and the bridge hands them to another
thread, so nothing a caller holds may change under the service lock later.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from fedward.coordinator.engine import DeviceState
from fedward.coordinator.errors import RejectReason
from fedward.coordinator.store import StudyState
from fedward.coordinator.store.models import ModelVersionRow
from fedward.coordinator.store.runtime import StudyRuntime
from fedward.coordinator.strategies import StrategyName
from fedward.coordinator.study_spec import StudySpec
from fedward.protocol.messages import DeviceClass, Task


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
    stop_reason: str | None = None
    """Which stop rule ended a stopped study (target_reached, update_budget_spent,
    devices_exhausted); None while it runs, or when an operator stopped it."""


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
    """SHA-256 of the model blob (``fedward.protocol.codec`` tensors).

    The lineage's content hash."""
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


def study_info(study: StudyRuntime) -> StudyInfo:
    return StudyInfo(
        id=study.id,
        name=study.row.name,
        state=study.state,
        spec=study.spec,
        created_at=study.row.created_at,
        updated_at=study.row.updated_at,
    )


def version_info(row: ModelVersionRow) -> ModelVersionInfo:
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
