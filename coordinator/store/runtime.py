"""A study's live state, and how it is built, restored and saved.

A :class:`StudyRuntime` is the engine of one study plus the bookkeeping that
the engine does not keep: the model lineage, which blob holds which version,
the hashes of updates waiting in the buffer (for the lineage), the rejection
counters, and what was last written (to write only what changed).

:class:`RuntimeStore` does the I/O: it builds a runtime for a new study,
rebuilds one from the database and blobs after a restart (verifying the
lineage's hashes and every blob on the way), and saves a runtime's changes
plus an engine snapshot in one transaction.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from fedward.compliance import ModelLineage, ModelVersion
from fedward.compliance.lineage import lineage_state
from fedward.coordinator.engine import DeviceState, Engine, EngineEvent
from fedward.coordinator.errors import CoordinatorError, RejectReason, StateLoadError
from fedward.coordinator.study_spec import StudySpec, build_engine
from fedward.protocol.codec import decode_tensors, encode_tensors
from fedward.protocol.messages import AckStatus
from fedward.tinytrain.models import Params

from .blobs import BlobStore
from .models import ModelVersionRow, StudyRow, StudyState, TaskStatus
from .repository import Repository, StudyChanges
from .snapshot import buffered_delta_refs, engine_snapshot, restore_engine

EventHandler = Callable[["StudyRuntime", EngineEvent], None]
GuardEventHandler = Callable[["StudyRuntime", Any], None]


@dataclass
class StudyRuntime:
    row: StudyRow
    spec: StudySpec
    engine: Engine
    lineage: ModelLineage
    version_sha: dict[int, str] = field(default_factory=dict)
    rejections: Counter[RejectReason] = field(default_factory=Counter)
    update_hashes: dict[str, str] = field(default_factory=dict)
    """Task id -> update frame SHA-256, for updates accepted and not merged yet."""
    delta_refs: dict[str, str] = field(default_factory=dict)
    """Task id -> blob of its buffered delta."""
    saved_devices: dict[str, tuple[DeviceState, int]] = field(default_factory=dict)
    saved_state: dict[str, Any] | None = None
    duplicates: int = 0
    # Set during one service call:
    changes: StudyChanges | None = None
    current_update_sha: str | None = None
    failure_status: dict[str, TaskStatus] = field(default_factory=dict)
    refused_tasks: set[str] = field(default_factory=set)
    """Tasks their device refused in this call: the guard audits those as TASK_REFUSED."""

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def state(self) -> StudyState:
        return self.row.status

    @property
    def model_size(self) -> int:
        """Coordinates in the study's model: no update can carry more."""
        return sum(math.prod(shape) for shape in self.engine.strategy.shapes.values())

    def pending_changes(self) -> StudyChanges:
        if self.changes is None:
            raise CoordinatorError(f"study {self.id} changed outside a service call")
        return self.changes


class RuntimeStore:
    def __init__(
        self,
        *,
        repository: Repository,
        blobs: BlobStore,
        pending: BlobStore,
        clock: Callable[[], float],
    ) -> None:
        self.repository = repository
        self.blobs = blobs
        self.pending = pending
        self._clock = clock

    # -- building --------------------------------------------------------------
    def build(
        self,
        row: StudyRow,
        spec: StudySpec,
        *,
        on_event: EventHandler,
        on_guard_event: GuardEventHandler,
        params: Params | None = None,
    ) -> StudyRuntime:
        """A fresh runtime whose engine reports to ``on_event`` (and its guards to the other).

        ``params`` is the model it starts from (default: the spec's initial model).
        """
        holder: list[StudyRuntime] = []
        engine = build_engine(
            spec,
            rng=random.Random(row.seed),
            params=params,
            listeners=(lambda e: on_event(holder[0], e),),
        )
        study = StudyRuntime(
            row=row, spec=spec, engine=engine, lineage=ModelLineage(clock=self._clock)
        )
        holder.append(study)
        for guard in engine.guards:  # the privacy guard reports spends and refusals
            listeners = getattr(guard, "listeners", None)
            if isinstance(listeners, list):
                listeners.append(lambda e: on_guard_event(holder[0], e))
        return study

    def load(
        self, row: StudyRow, *, on_event: EventHandler, on_guard_event: GuardEventHandler
    ) -> StudyRuntime:
        """Rebuild a study from the database and blobs (start-up, or after a failed call)."""
        try:
            spec = StudySpec.model_validate(row.spec)
        except ValidationError as exc:  # e.g. a spec saved under keys since renamed
            raise StateLoadError(f"study {row.id}: its saved spec is refused: {exc}") from exc
        study = self.build(row, spec, on_event=on_event, on_guard_event=on_guard_event)
        versions = self.repository.model_versions(row.id)
        study.lineage.load_state_dict(lineage_state(v.lineage for v in versions))
        study.version_sha = {v.version: v.blob_sha256 for v in versions}
        state_row = self.repository.engine_state(row.id)
        if state_row is None:
            raise StateLoadError(f"study {row.id} has no saved engine state")
        restore_engine(
            study.engine,
            state_row.state,
            load_params=lambda v: self.params(study, v),
            load_delta=lambda sha: decode_tensors(self.pending.get(sha)),
        )
        study.delta_refs = buffered_delta_refs(state_row.state)
        study.update_hashes = {
            r.task_id: r.frame_sha256
            for r in self.repository.receipts(row.id, status=AckStatus.BUFFERED)
        }
        study.rejections = self.repository.rejection_counts(row.id)
        study.saved_devices = {
            d.device_id: (d.state, d.completed) for d in study.engine.devices.values()
        }
        study.saved_state = state_row.state
        return study

    # -- models ----------------------------------------------------------------
    def params(self, study: StudyRuntime, version: int) -> Params:
        """A stored model version's tensors (the blob is verified on read)."""
        sha = study.version_sha.get(version)
        if sha is None:
            raise StateLoadError(f"{study.id} has no model version {version}")
        return decode_tensors(self.blobs.get(sha))

    def record_version(
        self, study: StudyRuntime, *, parent: int | None, task_ids: Iterable[str]
    ) -> ModelVersion:
        """Store the engine's current model as a blob, a lineage record and a row."""
        engine = study.engine
        changes = study.pending_changes()
        blob = encode_tensors(engine.params)
        sha = self.blobs.put(blob)
        hashes = [study.update_hashes.pop(t) for t in task_ids if t in study.update_hashes]
        record = study.lineage.record(
            version=engine.version,
            parents=() if parent is None else (parent,),
            content_hash=sha,
            strategy=engine.strategy.name.value,
            update_hashes=[h for h in hashes if h],
        )
        study.version_sha[engine.version] = sha
        changes.new_versions.append(
            ModelVersionRow(
                study_id=study.id,
                version=engine.version,
                parent=parent,
                blob_sha256=sha,
                size_bytes=len(blob),
                created_at=changes.at,
                strategy=engine.strategy.name,
                lineage=record.model_dump(mode="json"),
            )
        )
        return record

    # -- saving ----------------------------------------------------------------
    def commit(self, study: StudyRuntime, changes: StudyChanges) -> list[int] | None:
        """Add device changes and the engine snapshot to ``changes``; write them at once.

        Returns the outbox ids of the call's audit records, or None when there
        was no decision to commit (the records are then appended directly).
        """
        engine = study.engine
        current = {d.device_id: (d.state, d.completed) for d in engine.devices.values()}
        for device_id, (state, completed) in current.items():
            if study.saved_devices.get(device_id) != (state, completed):
                changes.device(device_id, state=state, completed=completed)
        snapshot = engine_snapshot(engine, delta_ref=lambda t, d: self._delta_ref(study, t, d))
        if snapshot != study.saved_state:
            changes.engine_state = (engine.version, snapshot)
        if changes.is_empty():
            return None
        ids = self.repository.apply(changes)
        study.saved_devices = current
        if changes.engine_state is not None:
            study.saved_state = snapshot
        self._collect_deltas(study)
        return ids

    def _delta_ref(self, study: StudyRuntime, task_id: str, delta: Any) -> str:
        sha = study.delta_refs.get(task_id)
        if sha is None:
            sha = self.pending.put(encode_tensors(delta))
            study.delta_refs[task_id] = sha
        return sha

    def _collect_deltas(self, study: StudyRuntime) -> None:
        """Delete buffered-update blobs once their merge is committed."""
        buffered = set(buffered_delta_refs(study.saved_state or {}))
        live = {study.delta_refs[t] for t in buffered if t in study.delta_refs}
        for task_id in [t for t in study.delta_refs if t not in buffered]:
            sha = study.delta_refs.pop(task_id)
            if sha not in live:
                self.pending.delete(sha)
