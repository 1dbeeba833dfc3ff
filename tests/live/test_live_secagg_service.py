"""The live coordinator's secure-aggregation path without a broker: StudyService with
the real engine (SecAggPolicy) and real device participants, frames as they travel."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.protocol.messages import DeviceClass, Enrol, SecAggPhase
from tests.live.secagg_helpers import SECAGG_SPEC, Member, decoded, delta_for, model_shapes

TOKEN = "secagg-service-tests-1a2b3c"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _private(device_id: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([int(device_id.split("-")[1]) + 1]) * 32)


def _key(i: int) -> bytes:
    return _private(f"dev-{i}").public_key().public_bytes_raw()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(tmp_path: Path, clock: Clock):
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        data_dir=tmp_path / "data",
        operator_token=TOKEN,
    )
    svc = StudyService.open(settings, clock=clock, seed=3)
    yield svc
    svc.close()


def _study(service: StudyService, devices: int = 6) -> str:
    study = "sa-1"
    service.create_study(SECAGG_SPEC, study_id=study)
    for i in range(devices):
        ack = service.enrol(
            study,
            Enrol(
                device_id=f"dev-{i}",
                study_id=study,
                device_class=DeviceClass.PHONE,
                memory_bytes=64 << 20,
                public_key=_key(i),
            ),
        )
        assert ack.accepted
    service.start(study)
    return study


def _pump(service, study, members: dict[str, Member], frames: list[tuple[str, bytes]]) -> int:
    """Deliver frames both ways until quiet; returns how many downlink frames were sent."""
    sent = 0
    while frames:
        device, raw = frames.pop(0)
        message, tensors = decoded(raw)
        for out in service.secagg_receive(study, message, tensors, sender=device, size=len(raw)):
            sent += 1
            member = members.get(out.device_id)
            if member is not None:
                frames.extend((out.device_id, r) for r in member.on_frame(out.frame))
    return sent


def test_a_fill_runs_through_the_service_and_merges_once(service, tmp_path):
    # Prepare
    study = _study(service)
    shapes = model_shapes(SECAGG_SPEC)
    before = service.status(study)
    # Execute: dispatch forms whole cohorts, each task carries its fill's parameters
    tasks = service.dispatch(study)
    members = {
        t.device_id: Member.for_task(
            t.task,
            root=tmp_path,
            spec=SECAGG_SPEC,
            delta=delta_for(t.task, shapes, seed=i),
            signing_key=_private(t.device_id),
        )
        for i, t in enumerate(tasks)
    }
    frames = [(d, raw) for d, m in members.items() for raw in m.start()]
    _pump(service, study, members, frames)
    after = service.status(study)
    stats = service.secagg_stats(study)
    # Assert
    assert tasks and all(t.task.secagg is not None for t in tasks)
    assert len({t.task.secagg.fill_id for t in tasks}) == len(tasks) // 4
    assert after.merges >= before.merges + 1
    assert after.model_version >= 1
    assert stats["fills"]["opened"] == len(tasks) // 4
    assert stats["fills"].get("merged", 0) == after.merges
    assert stats["bytes_in"] > 0 and stats["bytes_out"] > 0


def test_a_member_silent_through_masked_input_is_dropped_and_refused_afterwards(
    service, tmp_path, clock
):
    # Prepare: one member of the first fill never sends its masked input
    study = _study(service, devices=4)
    shapes = model_shapes(SECAGG_SPEC)
    tasks = service.dispatch(study)
    members = {
        t.device_id: Member.for_task(
            t.task,
            root=tmp_path,
            spec=SECAGG_SPEC,
            delta=delta_for(t.task, shapes, seed=i),
            signing_key=_private(t.device_id),
        )
        for i, t in enumerate(tasks)
    }
    late = members[tasks[0].device_id]
    late.silent_from = SecAggPhase.MASKED_INPUT
    frames = [(d, raw) for d, m in members.items() for raw in m.start()]
    _pump(service, study, members, frames)
    # Execute: the phase timer fires; the fill goes on with 3 = t survivors
    clock.now += SECAGG_SPEC.secagg.phase_timeout_s + 1
    frames = []
    for out in service.secagg_tick(study):
        frames.extend((out.device_id, r) for r in members[out.device_id].on_frame(out.frame))
    _pump(service, study, members, frames)
    # the dropped member now sends the masked input it held back
    refused_before = service.wire_refusals(study)
    (raw,) = late.withheld
    message, tensors = decoded(raw)
    answer = service.secagg_receive(study, message, tensors, sender=late.task.device_id)
    refused = service.wire_refusals(study)
    # Assert
    assert late.aborted  # told it was dropped
    assert service.status(study).merges == 1
    assert answer == []
    assert sum(refused.values()) == sum(refused_before.values()) + 1
    assert any(k.startswith("secagg_") for k in refused)
    assert service.secagg_stats(study)["dropouts"].get("masked_input") == 1


def test_a_restart_mid_fill_resumes_it_and_the_fill_merges(tmp_path, clock):
    # Prepare: a fill that reached MASKED_INPUT (members hold their masked inputs back)
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        data_dir=tmp_path / "data",
        operator_token=TOKEN,
    )
    service = StudyService.open(settings, clock=clock, seed=3)
    study = _study(service, devices=4)
    shapes = model_shapes(SECAGG_SPEC)
    tasks = service.dispatch(study)
    members = {
        t.device_id: Member.for_task(
            t.task,
            root=tmp_path,
            spec=SECAGG_SPEC,
            delta=delta_for(t.task, shapes, seed=i),
            signing_key=_private(t.device_id),
        )
        for i, t in enumerate(tasks)
    }
    for member in members.values():
        member.silent_from = SecAggPhase.MASKED_INPUT
    _pump(service, study, members, [(d, raw) for d, m in members.items() for raw in m.start()])
    assert all(m.withheld for m in members.values()) and service.status(study).merges == 0
    # Execute: the coordinator restarts; its phase timer asks the live members again
    service.close()
    service = StudyService.open(settings, clock=clock, seed=3)
    try:
        assert service.failed_studies() == {}
        for member in members.values():
            member.silent_from = None
        frames = []
        asked = service.secagg_tick(study)
        for out in asked:
            frames.extend((out.device_id, r) for r in members[out.device_id].on_frame(out.frame))
        resent = list(frames)
        _pump(service, study, members, frames)
        status = service.status(study)
    finally:
        service.close()
    # Assert: the same bytes were re-sent, and the fill merged once
    assert {o.phase for o in asked} == {SecAggPhase.DELIVERY} and len(asked) == len(members)
    assert len(resent) == len(members)
    assert all(raw in members[d].withheld for d, raw in resent)
    assert status.merges == 1 and status.model_version == 1
    assert not any(m.aborted for m in members.values())


def test_an_advertisement_not_signed_by_the_enrolled_key_is_refused(service, tmp_path):
    # Prepare: one member signs its advertisement with a key it did not enrol
    study = _study(service, devices=4)
    shapes = model_shapes(SECAGG_SPEC)
    tasks = service.dispatch(study)
    forger = tasks[0].device_id
    members = {
        t.device_id: Member.for_task(
            t.task,
            root=tmp_path,
            spec=SECAGG_SPEC,
            delta=delta_for(t.task, shapes, seed=i),
            signing_key=Ed25519PrivateKey.generate() if t.device_id == forger else None,
        )
        for i, t in enumerate(tasks)
    }
    # Execute: only the forger advertises
    (advert, *_) = members[forger].start()
    message, tensors = decoded(advert)
    answer = service.secagg_receive(study, message, tensors, sender=forger)
    refused = service.wire_refusals(study)
    # Assert
    assert answer == []
    assert sum(n for k, n in refused.items() if k.startswith("secagg_")) == 1
