"""StudyService: lifecycle, enrolment, dispatch and real updates, dedupe, rejections, audit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedward.compliance import verify_log
from fedward.coordinator.engine import DeviceState
from fedward.coordinator.errors import RejectReason
from fedward.coordinator.service import (
    InvalidStudyId,
    InvalidTransition,
    ModelVersionNotFound,
    StudyExists,
    StudyNotFound,
)
from fedward.coordinator.store import StudyState, TaskStatus, sha256_of
from fedward.protocol.codec import decode_tensors
from fedward.protocol.messages import AckStatus, DeviceStatus, Heartbeat, decode_frame, encode_frame


def audit_entries(settings) -> list[dict]:
    return [json.loads(line) for line in settings.audit_log_path.read_text().splitlines()]


# -- lifecycle -----------------------------------------------------------------
def test_lifecycle_moves_draft_running_paused_stopped(service, spec) -> None:
    # Prepare
    info = service.create_study(spec, study_id="s1")
    # Execute / Assert
    assert info.state is StudyState.DRAFT and info.spec == spec
    assert service.dispatch("s1") == []  # nothing runs in DRAFT
    assert service.start("s1").state is StudyState.RUNNING
    assert service.pause("s1").state is StudyState.PAUSED
    with pytest.raises(InvalidTransition):
        service.start("s1")
    assert service.resume("s1").state is StudyState.RUNNING
    assert service.stop("s1").state is StudyState.STOPPED
    for call in (service.start, service.pause, service.resume, service.stop):
        with pytest.raises(InvalidTransition):
            call("s1")
    assert [s.id for s in service.list_studies()] == ["s1"]


def test_study_ids_are_unique_and_checked(service, spec) -> None:
    # Prepare
    service.create_study(spec, study_id="s1")
    generated = service.create_study(spec)
    # Execute / Assert
    with pytest.raises(StudyExists):
        service.create_study(spec, study_id="s1")
    for bad in ("-lead", "has/slash", "x" * 65, ""):
        with pytest.raises(InvalidStudyId):
            service.create_study(spec, study_id=bad)
    assert generated.id.startswith(f"{spec.name}-")
    with pytest.raises(StudyNotFound):
        service.status("nope")


def test_a_new_study_has_version_zero_with_its_lineage(service, spec) -> None:
    # Prepare / Execute
    service.create_study(spec, study_id="s1")
    # Assert
    (v0,) = service.model_versions("s1")
    assert (v0.version, v0.parent, v0.update_count) == (0, None, 0)
    assert sha256_of(service.model_blob("s1", 0)) == v0.sha256
    with pytest.raises(ModelVersionNotFound):
        service.model_blob("s1", 1)


# -- devices -------------------------------------------------------------------
def test_enrol_is_idempotent_for_the_same_key_and_refuses_another(
    service, spec, new_enrol, settings
) -> None:
    # Prepare
    service.create_study(spec, study_id="s1")
    first = service.enrol("s1", new_enrol("s1", 0))
    # Execute
    again = service.enrol("s1", new_enrol("s1", 0))
    other_key = service.enrol("s1", new_enrol("s1", 0, key=b"\x01" * 32))
    wrong_study = service.enrol("s1", new_enrol("s2", 1))
    too_small = service.enrol("s1", new_enrol("s1", 2, memory=1024))
    # Assert
    assert first.accepted and again.accepted
    assert not other_key.accepted and "another key" in other_key.reason
    assert not wrong_study.accepted and not too_small.accepted
    assert [d.device_id for d in service.list_devices("s1")] == ["dev-000"]
    actions = [(e["action"], e["outcome"]) for e in audit_entries(settings)]
    assert ("device_enrolled", "success") in actions
    assert ("device_auth_failed", "denied") in actions


def test_revoke_fails_the_task_in_flight_and_refuses_later_updates(
    service, start_study, fleet, new_enrol
) -> None:
    # Prepare: a task in flight on a device
    sid = start_study(service, devices=2)
    out = service.dispatch(sid)[0]
    frame = fleet.train(out)
    # Execute
    info = service.revoke(sid, out.device_id)
    ack = service.submit_update(sid, frame)
    again = service.enrol(sid, new_enrol(sid, int(out.device_id[-3:])))
    # Assert
    assert info.state is DeviceState.REVOKED and info.revoked
    assert ack.status is AckStatus.REJECTED and ack.reason == RejectReason.UNKNOWN_TASK.value
    assert not again.accepted
    tasks = {t.task_id: t for t in service.repository.tasks(sid)}
    assert tasks[out.task.task_id].status is TaskStatus.FAILED
    assert all(o.device_id != out.device_id for o in service.dispatch(sid))


# -- dispatch and updates --------------------------------------------------------
def test_real_updates_merge_into_a_persisted_version(service, start_study, fleet, spec) -> None:
    # Prepare
    sid = start_study(service)
    outs = service.dispatch(sid)
    # Execute
    acks = [service.submit_update(sid, fleet.train(o)) for o in outs]
    # Assert
    assert len(outs) == spec.concurrency
    assert [a.status for a in acks] == [AckStatus.BUFFERED, AckStatus.MERGED]
    status = service.status(sid)
    assert (status.model_version, status.merges, status.updates_accepted) == (1, 1, 2)
    v1 = service.model_versions(sid)[1]
    assert (v1.version, v1.parent, v1.update_count) == (1, 0, 2)
    blob = service.model_blob(sid, 1)
    assert sha256_of(blob) == v1.sha256
    header, tensors = decode_frame(service.model_frame(sid, 1), max_bytes=1 << 24)
    assert header.model_version == 1
    assert all(np.array_equal(tensors[n], a) for n, a in decode_tensors(blob).items())
    receipts = service.repository.receipts(sid)
    assert {r.status for r in receipts} == {AckStatus.MERGED}


def test_model_frames_carry_only_the_tensors_a_device_lacks(service, start_study, fleet) -> None:
    # Prepare: every device got the full model once, then version 1 is merged
    sid = start_study(service, devices=2)
    first = service.dispatch(sid)
    for out in first:
        service.submit_update(sid, fleet.train(out))
    # Execute
    second = service.dispatch(sid)
    # Assert
    full = {n for n in decode_frame(first[0].model_frame, max_bytes=1 << 24)[1]}
    for out in second:
        header, tensors = decode_frame(out.model_frame, max_bytes=1 << 24)
        assert set(tensors) == set(header.names) < full  # only what changed
        assert set(tensors) == set(out.task.subset_names)


def test_a_redelivered_update_is_acked_again_but_merged_once(service, start_study, fleet) -> None:
    # Prepare
    sid = start_study(service)
    out_a, out_b = service.dispatch(sid)
    frame_a = fleet.train(out_a)
    first = service.submit_update(sid, frame_a)
    # Execute
    replay = service.submit_update(sid, frame_a)
    forged = service.submit_update(sid, fleet.train(out_a, seed=2))  # other bytes, same task
    merged = service.submit_update(sid, fleet.train(out_b))
    replay_after_merge = service.submit_update(sid, frame_a)
    # Assert
    assert first.status is replay.status is AckStatus.BUFFERED
    assert forged.status is AckStatus.REJECTED and forged.reason == "duplicate"
    assert merged.status is AckStatus.MERGED
    assert replay_after_merge.status is AckStatus.MERGED
    status = service.status(sid)
    assert (status.updates_accepted, status.merges, status.duplicates) == (2, 1, 2)
    assert status.rejections == {RejectReason.DUPLICATE: 1}


@pytest.mark.parametrize(
    "frame",
    [b"", b"garbage", b"FWFR" + b"\x00" * 40, "not bytes", None, bytearray(b"\x01" * 9)],
    ids=["empty", "garbage", "zeros", "str", "none", "bytearray"],
)
def test_malformed_frames_are_rejected_counted_and_audited(
    service, start_study, settings, frame
) -> None:
    # Prepare
    sid = start_study(service)
    # Execute
    ack = service.submit_update(sid, frame)
    # Assert
    assert ack.status is AckStatus.REJECTED and ack.reason == "malformed"
    assert service.status(sid).rejections == {RejectReason.MALFORMED: 1}
    assert service.repository.rejection_counts(sid) == {RejectReason.MALFORMED: 1}
    rejected = [e for e in audit_entries(settings) if e["action"] == "update_rejected"]
    raw = frame if isinstance(frame, bytes | bytearray) else b""
    assert rejected[-1]["details"]["update_sha256"] == sha256_of(bytes(raw))


def test_a_truncated_real_frame_and_a_stranger_are_rejected(service, start_study, fleet) -> None:
    # Prepare
    sid = start_study(service)
    out = service.dispatch(sid)[0]
    frame = fleet.train(out)
    stranger = frame.replace(out.device_id.encode(), b"dev-999")  # CRC breaks: malformed
    # Execute
    acks = [service.submit_update(sid, frame[:-5]), service.submit_update(sid, stranger)]
    unknown_study = service.submit_update("nope", frame)
    # Assert
    assert all(a.status is AckStatus.REJECTED for a in [*acks, unknown_study])
    assert service.status(sid).rejections == {RejectReason.MALFORMED: 2}
    assert service.submit_update(sid, frame).status is AckStatus.BUFFERED  # still its task


def test_an_update_that_under_reports_its_energy_is_rejected(
    service, start_study, settings, fleet
) -> None:
    # Prepare: a real update whose header claims a thousandth of its energy
    # (what a divergent device would send to slip past FTTE's energy damping)
    sid = start_study(service)
    out = service.dispatch(sid)[0]
    honest = fleet.train(out)
    header, tensors = decode_frame(honest, max_bytes=1 << 24)
    forged = encode_frame(
        header.model_copy(update={"update_energy": header.update_energy / 1000}),
        tensors,
        max_bytes=1 << 24,
    )
    # Execute
    ack = service.submit_update(sid, forged)
    # Assert: refused, counted and audited; the honest frame for the task still lands
    assert ack.status is AckStatus.REJECTED and ack.reason == "malformed"
    assert service.status(sid).rejections == {RejectReason.MALFORMED: 1}
    rejected = [e for e in audit_entries(settings) if e["action"] == "update_rejected"]
    assert "does not match" in json.dumps(rejected[-1]["details"])
    assert service.submit_update(sid, honest).status is AckStatus.BUFFERED


def test_deadlines_fail_tasks_and_a_heartbeat_brings_the_device_back(
    service, start_study, clock, spec
) -> None:
    # Prepare
    sid = start_study(service, devices=2)
    outs = service.dispatch(sid)
    clock.advance(spec.task_deadline_s + 1)
    # Execute
    failed = service.task_timeouts()
    states = {d.device_id: d.state for d in service.list_devices(sid)}
    alive = service.heartbeat(sid, Heartbeat(device_id=outs[0].device_id, status=DeviceStatus.IDLE))
    # Assert
    assert sorted(t for _, t in failed) == sorted(o.task.task_id for o in outs)
    assert set(states.values()) == {DeviceState.OFFLINE}
    assert alive
    assert [o.device_id for o in service.dispatch(sid)] == [outs[0].device_id]
    assert not service.heartbeat(sid, Heartbeat(device_id="ghost", status=DeviceStatus.IDLE))


def test_stop_fails_tasks_in_flight_and_refuses_their_updates(service, start_study, fleet) -> None:
    # Prepare
    sid = start_study(service)
    out = service.dispatch(sid)[0]
    # Execute
    service.stop(sid)
    ack = service.submit_update(sid, fleet.train(out))
    # Assert
    assert ack.status is AckStatus.REJECTED
    assert service.status(sid).in_flight == 0
    assert service.dispatch(sid) == []


def test_deadline_revoke_and_stop_failures_are_audited_as_task_failed(
    service, start_study, clock, spec, settings
) -> None:
    # Prepare: three devices, a task each
    sid = start_study(service, devices=3)
    late, revoked = service.dispatch(sid)
    clock.advance(spec.task_deadline_s + 1)
    service.task_timeouts()  # both miss the deadline; one device comes back
    service.heartbeat(sid, Heartbeat(device_id=revoked.device_id, status=DeviceStatus.IDLE))
    orders = {o.device_id: o for o in service.dispatch(sid)}  # the revived and the third
    again = orders.pop(revoked.device_id)
    (stopped,) = orders.values()
    # Execute
    service.revoke(sid, again.device_id)
    service.stop(sid)
    # Assert: one TASK_FAILED per failure, by the coordinator, with its reason
    failed = [e for e in audit_entries(settings) if e["action"] == "task_failed"]
    reasons = {e["details"]["task_id"]: e["details"]["reason"] for e in failed}
    assert reasons[late.task.task_id] == reasons[revoked.task.task_id] == "deadline passed"
    assert reasons[again.task.task_id] == "device revoked"
    assert reasons[stopped.task.task_id] == "study stopped"
    assert {(e["outcome"], e["actor"]["kind"], e["actor"]["id"]) for e in failed} == {
        ("failure", "coordinator", "coordinator")
    }
    assert "task_refused" not in {e["action"] for e in audit_entries(settings)}


def test_evaluations_are_recorded_for_known_versions(service, spec) -> None:
    # Prepare
    service.create_study(spec, study_id="s1")
    # Execute
    status = service.report_evaluation("s1", version=0, accuracy=0.75)
    # Assert
    assert (status.last_accuracy, status.last_accuracy_version) == (0.75, 0)
    with pytest.raises(ModelVersionNotFound):
        service.report_evaluation("s1", version=3, accuracy=0.5)
    for bad in (1.5, -0.1, True):
        with pytest.raises(ValueError):
            service.report_evaluation("s1", version=0, accuracy=bad)


# -- audit ---------------------------------------------------------------------
def test_the_audit_log_verifies_and_holds_no_tensor_data(
    service, start_study, fleet, settings
) -> None:
    # Prepare: a run with merges, a replay and a malformed frame
    sid = start_study(service)
    frames = []
    for _ in range(2):
        for out in service.dispatch(sid):
            frames.append(fleet.train(out))
            service.submit_update(sid, frames[-1])
    service.submit_update(sid, frames[0])
    service.submit_update(sid, b"junk")
    public_key = service.audit_public_key
    # Execute
    service.close()
    report = verify_log(settings.audit_log_path, public_key)
    entries = audit_entries(settings)
    # Assert
    assert report.ok, report.problems
    actions = {e["action"] for e in entries}
    assert {
        "study_created",
        "device_enrolled",
        "study_started",
        "task_dispatched",
        "update_accepted",
        "update_rejected",
        "model_merged",
    } <= actions
    accepted = {e["details"]["update_sha256"] for e in entries if e["action"] == "update_accepted"}
    assert accepted == {sha256_of(f) for f in frames}
    merged = [e["details"] for e in entries if e["action"] == "model_merged"]
    assert [m["model_version"] for m in merged] == [1, 2]
    assert [list(m["parent_versions"]) for m in merged] == [[0], [1]]
    for entry in entries:  # scalars, ids and hashes only: no arrays, no number series
        for value in entry["details"].values():
            assert not isinstance(value, dict)
            if isinstance(value, list):
                assert sum(isinstance(v, int) for v in value) <= 16
                assert all(isinstance(v, str | int) for v in value)
    assert max(len(line) for line in settings.audit_log_path.read_bytes().splitlines()) < 2048


def test_concurrent_callers_never_merge_an_update_twice(service, start_study, fleet) -> None:
    # Prepare: every update delivered four times, from four threads at once
    from concurrent.futures import ThreadPoolExecutor

    sid = start_study(service, devices=4)
    frames = [fleet.train(o) for o in service.dispatch(sid)]
    # Execute
    with ThreadPoolExecutor(max_workers=4) as pool:
        acks = list(pool.map(lambda f: service.submit_update(sid, f), frames * 4))
        list(pool.map(lambda _: service.dispatch(sid), range(8)))
    # Assert
    status = service.status(sid)
    assert status.updates_accepted == 2 and status.merges == 1
    assert status.duplicates == 6 and status.rejections == {}
    assert {a.status for a in acks} <= {AckStatus.BUFFERED, AckStatus.MERGED}
    assert status.in_flight == 2  # the dispatch threads topped up once, not eight times


def test_messages_the_transport_dropped_are_audited_and_counted(
    service, start_study, settings
) -> None:
    # Prepare
    sid = start_study(service, devices=1)
    # Execute
    service.transport_rejected(sid, "dev-000", "malformed", "frame header CRC mismatch")
    service.transport_rejected(sid, "dev-000", "route", "device id differs from the topic")
    service.transport_rejected("ghost-study", None, "wrong_topic", "enrol on a model topic")
    # Assert
    assert service.status(sid).rejections == {RejectReason.MALFORMED: 1}
    entries = audit_entries(settings)[-3:]
    assert [(e["action"], e["study_id"]) for e in entries] == [
        ("update_rejected", sid),
        ("device_auth_failed", sid),
        ("update_rejected", None),
    ]
    assert entries[0]["details"]["transport_reason"] == "malformed"
