"""The coordinator's store: migrations, blobs, atomic writes, engine snapshots.

Database tests run on SQLite and on a real PostgreSQL (``db_url`` is
parametrized over both; the PostgreSQL half is marked ``postgres``).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from fedward.coordinator.engine import DeviceState
from fedward.coordinator.migrations import (
    current_revision,
    head_revision,
    is_at_head,
    upgrade_to_head,
)
from fedward.coordinator.store import (
    Base,
    BlobCorrupted,
    BlobError,
    BlobNotFound,
    BlobStore,
    Repository,
    StudyChanges,
    StudyState,
    create_db_engine,
    engine_snapshot,
    restore_engine,
    sha256_of,
)
from fedward.coordinator.store.models import StudyRow, UpdateReceiptRow
from fedward.coordinator.strategies import ClientUpdate
from fedward.coordinator.strategies.base import saved_updates
from fedward.coordinator.study_spec import build_engine
from fedward.protocol.codec import decode_tensors, encode_tensors
from fedward.protocol.messages import AckStatus


# -- migrations ----------------------------------------------------------------
def test_migrated_schema_equals_the_models_metadata(db_url: str) -> None:
    # Prepare
    engine = create_db_engine(db_url)
    # Execute
    upgrade_to_head(engine)
    upgrade_to_head(engine)  # idempotent
    # Assert
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(engine) == head_revision()
    assert is_at_head(engine)
    assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
    engine.dispose()


def test_an_empty_database_is_not_at_head(db_url: str) -> None:
    # Prepare
    engine = create_db_engine(db_url)
    # Execute / Assert
    assert current_revision(engine) is None
    assert not is_at_head(engine)
    engine.dispose()


def study_row(study_id: str = "s1") -> StudyRow:
    return StudyRow(
        id=study_id,
        name="study",
        spec={"name": "study"},
        status=StudyState.DRAFT,
        seed=1,
        created_at=1.0,
        updated_at=1.0,
        last_accuracy=None,
        last_accuracy_version=None,
    )


def receipt(task_id: str) -> UpdateReceiptRow:
    return UpdateReceiptRow(
        study_id="s1",
        task_id=task_id,
        device_id="dev-1",
        frame_sha256="0" * 64,
        status=AckStatus.BUFFERED,
        reason=None,
        received_at=2.0,
    )


def test_repository_apply_writes_everything_or_nothing(db_url: str) -> None:
    # Prepare: a study with one receipt
    engine = create_db_engine(db_url)
    upgrade_to_head(engine)
    repo = Repository(engine)
    first = StudyChanges(study_id="s1", at=1.0, new_study=study_row())
    first.new_receipts.append(receipt("t1"))
    first.engine_state = (0, {"format": 1})
    repo.apply(first)
    # Execute: a batch that changes the status but repeats a receipt's task id
    bad = StudyChanges(study_id="s1", at=2.0, study_values={"status": StudyState.RUNNING})
    bad.new_receipts.append(receipt("t1"))
    bad.engine_state = (1, {"format": 1, "x": 1})
    with pytest.raises(IntegrityError):
        repo.apply(bad)
    # Assert: nothing of the failed batch is visible
    assert repo.study("s1").status is StudyState.DRAFT
    assert [r.task_id for r in repo.receipts("s1")] == ["t1"]
    state = repo.engine_state("s1")
    assert (state.model_version, state.revision, state.state) == (0, 1, {"format": 1})
    repo.close()


def test_rejection_counters_accumulate_across_batches(db_url: str) -> None:
    # Prepare
    from fedward.coordinator.errors import RejectReason

    engine = create_db_engine(db_url)
    upgrade_to_head(engine)
    repo = Repository(engine)
    repo.apply(StudyChanges(study_id="s1", at=1.0, new_study=study_row()))
    # Execute
    for n in (1, 2):
        changes = StudyChanges(study_id="s1", at=2.0)
        changes.rejections[RejectReason.MALFORMED] += n
        changes.rejections[RejectReason.UNKNOWN_TASK] += 1
        repo.apply(changes)
    # Assert
    assert repo.rejection_counts("s1") == {RejectReason.MALFORMED: 3, RejectReason.UNKNOWN_TASK: 2}
    repo.close()


def test_sqlite_enforces_foreign_keys(sqlite_url: str) -> None:
    # Prepare
    engine = create_db_engine(sqlite_url)
    upgrade_to_head(engine)
    repo = Repository(engine)
    orphan = StudyChanges(study_id="nope", at=1.0)
    orphan.new_receipts.append(receipt("t1"))
    # Execute / Assert: a receipt for a study that does not exist is refused
    with pytest.raises(IntegrityError):
        repo.apply(orphan)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    repo.close()


# -- blobs ---------------------------------------------------------------------
def test_blobs_are_content_addressed_and_stored_once(tmp_path) -> None:
    # Prepare
    store = BlobStore(tmp_path / "blobs")
    data = b"model bytes"
    # Execute
    digest = store.put(data)
    again = store.put(data)
    # Assert
    assert digest == again == sha256_of(data)
    path = tmp_path / "blobs" / "sha256" / digest[:2] / digest
    assert path.read_bytes() == data
    assert store.get(digest) == data
    assert [p.name for p in path.parent.iterdir()] == [digest]  # no temporary files left


def test_a_corrupted_blob_is_detected_and_a_put_repairs_it(tmp_path) -> None:
    # Prepare
    store = BlobStore(tmp_path)
    digest = store.put(b"weights")
    store.path_for(digest).write_bytes(b"weightz")
    # Execute / Assert
    with pytest.raises(BlobCorrupted):
        store.get(digest)
    store.put(b"weights")
    assert store.get(digest) == b"weights"


def test_missing_blobs_and_unsafe_names_are_refused(tmp_path) -> None:
    # Prepare
    store = BlobStore(tmp_path)
    # Execute / Assert
    with pytest.raises(BlobNotFound):
        store.get("a" * 64)
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63, ""):
        with pytest.raises(BlobError):
            store.get(bad)


# -- engine snapshots ------------------------------------------------------------
def test_engine_snapshot_round_trips_through_json(spec) -> None:
    # Prepare: an engine with devices, tasks in flight and one buffered update
    engine = build_engine(spec, rng=random.Random(3))
    for i in range(3):
        engine.enrol(f"dev-{i}", device_class="phone", memory_bytes=1 << 22, now=0.0)
    orders = engine.dispatch(now=1.0)
    first = orders[0]
    delta = {n: np.full(engine.params[n].shape, 0.01, np.float32) for n in first.subset.names}
    engine.submit(
        ClientUpdate(
            device_id=first.device_id,
            task_id=first.task_id,
            base_version=0,
            subset_id=first.subset.subset_id,
            delta=delta,
            num_samples=5,
        ),
        now=2.0,
    )
    blobs: dict[str, bytes] = {}

    def put(_: str, tensors) -> str:
        data = encode_tensors(tensors)
        blobs[sha256_of(data)] = data
        return sha256_of(data)

    # Execute
    state = json.loads(json.dumps(engine_snapshot(engine, delta_ref=put)))
    twin = build_engine(spec, rng=random.Random(99))
    restore_engine(
        twin,
        state,
        load_params=lambda v: {n: a.copy() for n, a in engine.base_params(v).items()},
        load_delta=lambda sha: decode_tensors(blobs[sha]),
    )
    # Assert
    assert twin.version == engine.version
    assert twin.tasks == engine.tasks
    assert {d: (x.state, x.held_version) for d, x in twin.devices.items()} == {
        d: (x.state, x.held_version) for d, x in engine.devices.items()
    }
    assert twin.devices[first.device_id].state is DeviceState.IDLE
    assert twin.strategy.pending == 1
    assert twin.rng.getstate() == engine.rng.getstate()
    assert twin.stats.accepted == engine.stats.accepted == 1
    saved = saved_updates(twin.strategy.state_dict())[0]["delta"]
    assert all(np.array_equal(saved[n], delta[n]) for n in delta)
    assert engine_snapshot(twin, delta_ref=put) == state
