"""StudyService.submit_updates and the bridge's update batches: one commit per burst.

Why: ingest is bounded by one transaction (snapshot + fsync) per update; a
burst of frames is judged exactly as one-by-one frames are, but committed at
once, and acked only after that commit.
"""

from __future__ import annotations

import json

import pytest

from fedward.coordinator.errors import RejectReason
from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.store import sha256_of
from fedward.protocol.messages import Ack, AckStatus, Heartbeat, decode_frame
from fedward.protocol.topics import TopicKind, device_topic
from fedward.protocol.transport import InMemoryBroker, InMemoryTransport


def audit_entries(settings) -> list[dict]:
    return [json.loads(line) for line in settings.audit_log_path.read_text().splitlines()]


class CommitFailed(RuntimeError):
    """The injected database failure."""


def test_a_batch_with_a_duplicate_and_a_malformed_frame_is_judged_once_and_committed_once(
    service, start_study, fleet, settings
) -> None:
    # Prepare
    sid = start_study(service)
    out_a, out_b = service.dispatch(sid)
    frame_a, frame_b = fleet.train(out_a), fleet.train(out_b)
    revision = service.repository.engine_state(sid).revision
    # Execute
    acks = service.submit_updates(sid, [frame_a, frame_a, b"garbage", frame_b])
    replay = service.submit_updates(sid, [frame_a])  # a later batch dedupes too
    # Assert
    assert [a.status for a in acks] == [
        AckStatus.BUFFERED,
        AckStatus.BUFFERED,
        AckStatus.REJECTED,
        AckStatus.MERGED,
    ]
    assert acks[1].reason.startswith("duplicate delivery") and acks[2].reason == "malformed"
    assert replay[0].status is AckStatus.MERGED
    assert service.repository.engine_state(sid).revision == revision + 1  # ONE snapshot
    status = service.status(sid)
    assert (status.updates_accepted, status.merges, status.duplicates) == (2, 1, 2)
    assert status.rejections == {RejectReason.MALFORMED: 1}
    receipts = service.repository.receipts(sid)
    assert sorted(r.task_id for r in receipts) == sorted([out_a.task.task_id, out_b.task.task_id])
    assert {r.status for r in receipts} == {AckStatus.MERGED}
    entries = audit_entries(settings)
    accepted = [e["details"]["update_sha256"] for e in entries if e["action"] == "update_accepted"]
    assert accepted == [sha256_of(frame_a), sha256_of(frame_b)]
    rejected = [e["details"] for e in entries if e["action"] == "update_rejected"]
    assert [r["update_sha256"] for r in rejected] == [sha256_of(b"garbage")]
    assert [e["action"] for e in entries].count("model_merged") == 1


def test_a_forged_second_frame_for_a_task_in_the_same_batch_is_a_duplicate(
    service, start_study, fleet
) -> None:
    # Prepare
    sid = start_study(service)
    out_a, _ = service.dispatch(sid)
    # Execute
    first, forged = service.submit_updates(sid, [fleet.train(out_a), fleet.train(out_a, seed=2)])
    # Assert
    assert first.status is AckStatus.BUFFERED
    assert forged.status is AckStatus.REJECTED and forged.reason == "duplicate"
    assert service.status(sid).updates_accepted == 1


def test_a_failed_commit_acks_nothing_and_keeps_nothing(
    service, start_study, fleet, monkeypatch
) -> None:
    # Prepare
    sid = start_study(service)
    frames = [fleet.train(o) for o in service.dispatch(sid)]
    repo = service.repository

    def failing_apply(changes) -> None:
        raise CommitFailed("disk full")

    monkeypatch.setattr(repo, "apply", failing_apply)
    # Execute
    with pytest.raises(CommitFailed):
        service.submit_updates(sid, frames)
    monkeypatch.undo()
    # Assert: nothing was kept, so the re-delivered batch is judged afresh and merged once
    assert repo.receipts(sid) == []
    assert service.status(sid).updates_accepted == 0
    acks = service.submit_updates(sid, frames)
    assert [a.status for a in acks] == [AckStatus.BUFFERED, AckStatus.MERGED]
    assert service.status(sid).merges == 1


def test_a_crash_on_one_frame_refuses_only_that_frame(
    service, start_study, fleet, monkeypatch
) -> None:
    # Prepare: the engine raises (a bug) on the first task's update only
    sid = start_study(service)
    out_a, out_b = service.dispatch(sid)
    frames = [fleet.train(out_a), fleet.train(out_b)]
    calls = {"n": 0}
    original = type(service)._submit

    def buggy(self, study, changes, incoming, *, frame_sha):
        if incoming.header.task_id == out_a.task.task_id:
            calls["n"] += 1
            raise ZeroDivisionError("bug")
        return original(self, study, changes, incoming, frame_sha=frame_sha)

    monkeypatch.setattr(type(service), "_submit", buggy)
    # Execute
    acks = service.submit_updates(sid, frames)
    # Assert
    assert [a.status for a in acks] == [AckStatus.REJECTED, AckStatus.BUFFERED]
    assert acks[0].reason == "malformed" and calls["n"] == 2  # in the batch, then alone
    assert service.status(sid).updates_accepted == 1


class BatchingService:
    """Records the batches the bridge submits; can fail every commit."""

    def __init__(self, *, fail: bool) -> None:
        self.fail = fail
        self.batches: list[int] = []

    def submit_updates(self, study_id: str, frames) -> list[Ack]:
        self.batches.append(len(frames))
        if self.fail:
            raise CommitFailed("database down")
        return [Ack(task_id=f"t{i}", status=AckStatus.BUFFERED) for i in range(len(frames))]

    def enrol(self, study_id, msg):  # pragma: no cover - not used
        raise NotImplementedError

    def heartbeat(self, study_id: str, msg: Heartbeat) -> bool:
        return True

    def dispatch(self, study_id: str) -> list:
        return []

    def task_timeouts(self) -> None:
        return None


@pytest.mark.parametrize("fail", [False, True], ids=["commits", "commit-fails"])
def test_the_bridge_submits_a_burst_as_one_batch_and_acks_only_after_commit(
    start_study, service, fleet, fail
) -> None:
    # Prepare: real frames for device dev-000 and dev-001, queued before the worker runs
    sid = start_study(service)
    outs = service.dispatch(sid)
    frames = [(o.device_id, fleet.train(o)) for o in outs] * 3
    broker = InMemoryBroker()
    coordinator, device = InMemoryTransport(broker), InMemoryTransport(broker)
    acks: list[bytes] = []
    for device_id in {d for d, _ in frames}:
        device.subscribe(device_topic(TopicKind.ACK, sid, device_id), lambda t, p: acks.append(p))
    fake = BatchingService(fail=fail)
    bridge = StudyBridge(fake, coordinator, study_id=sid, dispatch_interval_s=60.0)
    for device_id, frame in frames:  # queued before start: one burst
        bridge._enqueue(device_topic(TopicKind.UPDATE, sid, device_id), frame)
    coordinator.connect()
    device.connect()
    # Execute
    bridge.start()
    try:
        assert bridge.drain(10.0)
    finally:
        bridge.stop()
    # Assert
    assert fake.batches == [len(frames)]
    if fail:
        assert acks == [] and bridge.stats.rejected["internal"] == len(frames)
    else:
        decoded = [decode_frame(p, max_bytes=1 << 20)[0] for p in acks]
        assert len(decoded) == len(frames) and all(isinstance(a, Ack) for a in decoded)
