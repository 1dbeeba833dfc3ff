"""Liveness: deadlines sized from observed task times; a device's lost task freed at once."""

from __future__ import annotations

import numpy as np
import pytest

from fedward.coordinator.service import StudyService
from fedward.coordinator.service.deadlines import DEADLINE_FACTOR, MIN_OBSERVED
from fedward.coordinator.settings import CoordinatorSettings
from fedward.protocol.messages import (
    AckStatus,
    DeviceClass,
    DeviceStatus,
    Enrol,
    Heartbeat,
)
from fedward.tinytrain.models import build_model, param_shapes
from tests.live.live_helpers import TINY_SPEC
from tests.wire.update_frames import update_frame

SPEC = TINY_SPEC.model_copy(update={"task_deadline_s": 3600.0, "concurrency": 1})


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked(tmp_path):
    clock = Clock()
    service = StudyService.open(
        CoordinatorSettings(
            database_url=f"sqlite:///{tmp_path / 'c.db'}",
            data_dir=tmp_path / "data",
            operator_token="wire-liveness-7c6b5a4f3e",
        ),
        clock=clock,
        seed=0,
    )
    service.create_study(SPEC, study_id="s")
    enrol = Enrol(
        device_id="d",
        study_id="s",
        device_class=DeviceClass.PHONE,
        memory_bytes=64 << 20,
        public_key=b"\x01" * 32,
    )
    assert service.enrol("s", enrol).accepted
    service.start("s")
    yield service, clock
    service.close()


def _answer(service, task) -> AckStatus:
    shapes = param_shapes(build_model(SPEC.model_settings(), seed=0))
    tensors = {n: np.full(shapes[n], 1e-3, np.float32) for n in task.subset_names}
    return service.submit_update("s", update_frame(task, tensors)).status


def test_deadlines_are_sized_from_observed_task_times(clocked):
    # Prepare: the device's first tasks each take 20 s
    service, clock = clocked
    first = service.dispatch("s")[0].task
    assert first.deadline_s == SPEC.task_deadline_s  # nothing observed yet: the ceiling
    clock.now += 20
    assert _answer(service, first) is not AckStatus.REJECTED
    for _ in range(MIN_OBSERVED - 1):
        task = service.dispatch("s")[0].task
        clock.now += 20
        assert _answer(service, task) is not AckStatus.REJECTED
    # Execute: the next task, then the device goes silent
    task = service.dispatch("s")[0].task
    clock.now += DEADLINE_FACTOR * 20 + 1
    failed = service.task_timeouts()
    # Assert: its deadline was 4 x 20 s, not the hour of the spec, and it was freed
    assert task.deadline_s == DEADLINE_FACTOR * 20
    assert ("s", task.task_id) in failed


def test_a_heartbeat_that_no_longer_holds_the_task_frees_it(clocked):
    # Prepare
    service, clock = clocked
    task = service.dispatch("s")[0].task
    clock.now += 1
    before = service.status("s").tasks_failed
    # Execute: a heartbeat just after dispatch (it may not have seen the task yet), then one later
    service.heartbeat("s", Heartbeat(device_id="d", status=DeviceStatus.IDLE))
    early = service.status("s").tasks_failed
    clock.now += 10
    service.heartbeat("s", Heartbeat(device_id="d", status=DeviceStatus.IDLE))
    # Assert: not freed within the grace period, freed once it has passed
    assert early == before
    assert service.status("s").tasks_failed == before + 1
    assert task.task_id not in {t.task.task_id for t in service.pending_tasks("s")}


def test_a_heartbeat_holding_the_task_keeps_it(clocked):
    # Prepare
    service, clock = clocked
    task = service.dispatch("s")[0].task
    clock.now += 60
    # Execute
    service.heartbeat(
        "s", Heartbeat(device_id="d", status=DeviceStatus.TRAINING, tasks=(task.task_id,))
    )
    # Assert
    assert [t.task.task_id for t in service.pending_tasks("s")] == [task.task_id]
