"""A restarted coordinator resumes a study exactly where it was.

The check is strict: a service that is closed mid-study and reopened on the
same database and data directory must end the study with the very same bytes
as a twin that never stopped (same seed, same clock, same device answers).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedward.compliance import verify_log
from fedward.coordinator.engine import DeviceState
from fedward.coordinator.errors import RejectReason
from fedward.coordinator.service import StudyRestoreFailed, StudyService
from fedward.coordinator.store import BlobCorrupted, StudyState, TaskStatus
from fedward.coordinator.strategies.base import saved_updates
from fedward.protocol.messages import AckStatus


def engine_of(service: StudyService, study_id: str):
    return service._studies[study_id].engine  # white-box: compare the restored engine


def first_half(service: StudyService, fleet, start_study) -> tuple[str, dict[str, bytes]]:
    """Merge one version, then leave one update buffered and one task in flight."""
    sid = start_study(service, devices=3)
    for out in service.dispatch(sid):
        service.submit_update(sid, fleet.train(out))
    pending = {o.task.task_id: fleet.train(o) for o in service.dispatch(sid)}
    first_task = sorted(pending)[0]
    assert service.submit_update(sid, pending.pop(first_task)).status is AckStatus.BUFFERED
    return sid, pending


def second_half(service: StudyService, sid: str, fleet, pending: dict[str, bytes]) -> list:
    acks = [service.submit_update(sid, frame) for frame in pending.values()]
    for out in service.dispatch(sid):
        acks.append(service.submit_update(sid, fleet.train(out)))
    return acks


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_restarted_service_continues_bit_identically(
    backend, request, tmp_path, clock, fleet, start_study, settings_for
) -> None:
    # Prepare: a twin that never stops, and a service we stop halfway
    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgres"
        else f"sqlite:///{tmp_path / 'restart.db'}"
    )
    twin = StudyService.open(
        settings_for(f"sqlite:///{tmp_path / 'twin.db'}", tmp_path / "twin"), clock=clock, seed=7
    )
    twin_fleet = type(fleet)()
    sid, twin_pending = first_half(twin, twin_fleet, start_study)
    settings = settings_for(url, tmp_path / "data")
    first = StudyService.open(settings, clock=clock, seed=7)
    sid, pending = first_half(first, fleet, start_study)
    before = engine_of(first, sid)
    saved = {
        "version": before.version,
        "params": {n: a.copy() for n, a in before.params.items()},
        "tasks": dict(before.tasks),
        "buffer": saved_updates(before.strategy.state_dict()),
        "rng": before.rng.getstate(),
        "devices": {d: (x.state, x.held_version, x.completed) for d, x in before.devices.items()},
        "stats": (before.stats.dispatched, before.stats.accepted, before.stats.merges),
    }
    first.close()
    # Execute
    second = StudyService.open(settings, clock=clock, seed=7)
    after = engine_of(second, sid)
    # Assert: everything the engine decides with came back
    assert after.version == saved["version"] == 1
    assert all(np.array_equal(after.params[n], a) for n, a in saved["params"].items())
    assert all(after.params[n].tobytes() == a.tobytes() for n, a in saved["params"].items())
    assert after.tasks == saved["tasks"] and len(after.tasks) == 1
    buffer = saved_updates(after.strategy.state_dict())
    assert [b["task_id"] for b in buffer] == [b["task_id"] for b in saved["buffer"]]
    for got, want in zip(buffer, saved["buffer"], strict=True):
        assert all(np.array_equal(got["delta"][n], want["delta"][n]) for n in want["delta"])
    assert after.rng.getstate() == saved["rng"]
    assert {d: (x.state, x.held_version, x.completed) for d, x in after.devices.items()} == saved[
        "devices"
    ]
    assert (after.stats.dispatched, after.stats.accepted, after.stats.merges) == saved["stats"]
    assert second.status(sid).state is StudyState.RUNNING
    # ... and the study continues exactly like the twin that never stopped
    acks = second_half(second, sid, fleet, pending)
    twin_acks = second_half(twin, sid, twin_fleet, twin_pending)
    assert [a.status for a in acks] == [a.status for a in twin_acks]
    assert AckStatus.MERGED in [a.status for a in acks]
    final = second.status(sid).model_version
    assert final == twin.status(sid).model_version >= 2
    assert second.model_blob(sid, final) == twin.model_blob(sid, final)
    assert [v.sha256 for v in second.model_versions(sid)] == [
        v.sha256 for v in twin.model_versions(sid)
    ]
    public_key = second.audit_public_key
    second.close()
    twin.close()
    assert verify_log(settings.audit_log_path, public_key).ok


def test_restart_keeps_receipts_rejections_and_offline_devices(
    service, settings, clock, fleet, start_study
) -> None:
    # Prepare: a buffered update, a malformed frame, a deadline missed
    sid = start_study(service, devices=2)
    a, b = service.dispatch(sid)
    frame_a = fleet.train(a)
    service.submit_update(sid, frame_a)
    service.submit_update(sid, b"junk")
    clock.advance(10_000)
    service.task_timeouts()
    service.close()
    # Execute
    reopened = StudyService.open(settings, clock=clock, seed=7)
    replay = reopened.submit_update(sid, frame_a)
    late = reopened.submit_update(sid, fleet.train(b))
    # Assert
    status = reopened.status(sid)
    assert replay.status is AckStatus.BUFFERED  # deduped across the restart
    assert late.status is AckStatus.REJECTED  # its task timed out before the restart
    assert status.buffered == 1 and status.updates_accepted == 1
    assert status.rejections == {RejectReason.MALFORMED: 1, RejectReason.UNKNOWN_TASK: 1}
    assert status.devices_by_state == {DeviceState.IDLE: 1, DeviceState.OFFLINE: 1}
    tasks = {t.task_id: t.status for t in reopened.repository.tasks(sid)}
    assert tasks[b.task.task_id] is TaskStatus.FAILED
    assert tasks[a.task.task_id] is TaskStatus.ACCEPTED
    reopened.close()


def test_a_corrupted_model_blob_fails_that_study_not_the_restart(
    service, settings, clock, start_study
) -> None:
    # Prepare
    sid = start_study(service, devices=1)
    sha = service.model_versions(sid)[0].sha256
    service.close()
    path = settings.blob_dir / "sha256" / sha[:2] / sha
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    # Execute: the coordinator refuses to resume the study from a model it cannot trust
    reopened = StudyService.open(settings, clock=clock, seed=7)
    # Assert: that study is set aside (not served), the coordinator runs
    assert BlobCorrupted.__name__ in reopened.failed_studies()[sid]
    with pytest.raises(StudyRestoreFailed):
        reopened.status(sid)
    reopened.close()


def test_a_synchronous_round_open_at_restart_closes_after_it(
    service, settings, clock, fleet, spec, new_enrol
) -> None:
    # Prepare: FedAvg, a round of two tasks, one answered before the restart
    from fedward.coordinator.strategies import StrategyName

    fedavg = spec.model_copy(update={"strategy": StrategyName.FEDAVG})
    service.create_study(fedavg, study_id="sync")
    for i in range(2):
        service.enrol("sync", new_enrol("sync", i))
    service.start("sync")
    a, b = service.dispatch("sync")
    assert service.submit_update("sync", fleet.train(a)).status is AckStatus.BUFFERED
    service.close()
    # Execute
    reopened = StudyService.open(settings, clock=clock, seed=7)
    no_new_round = reopened.dispatch("sync")
    closing = reopened.submit_update("sync", fleet.train(b))
    # Assert
    assert no_new_round == []  # the round is still open after the restart
    assert closing.status is AckStatus.MERGED
    assert reopened.status("sync").model_version == 1
    assert len(reopened.dispatch("sync")) == 2  # the next round
    reopened.close()
