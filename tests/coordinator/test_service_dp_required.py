"""A device that holds a DP budget declines a study's task without DP-SGD.

The device side (``DP_REQUIRED`` on the wire) is tested in
``tests/privacy_integration/test_agent_plain_task.py``. Here the coordinator's
side: before, it answered the refusal with ``UnsupportedRefusal`` and the task
sat in flight until its deadline, then the device was offered the same kind of
task again. Now the task fails at once, the device goes DECLINED for this
study (across a restart), and the slot goes to a device that can work.
"""

from __future__ import annotations

import json

from fedward.coordinator.engine import DeviceState
from fedward.coordinator.service import StudyService
from fedward.coordinator.store import TaskStatus
from fedward.protocol.messages import ErrorCode, ErrorMessage


def plain_running(service, spec, new_enrol, *, devices: int) -> list:
    service.create_study(spec, study_id="plain")
    for i in range(devices):
        assert service.enrol("plain", new_enrol("plain", i)).accepted
    service.start("plain")
    return service.dispatch("plain")


def test_a_device_requiring_dp_frees_its_task_at_once_and_is_not_asked_again(
    service, settings, clock, spec, new_enrol
) -> None:
    # Prepare: two of three devices busy with plain (no DP-SGD) tasks
    declining, other = plain_running(service, spec, new_enrol, devices=3)[:2]
    before = len(settings.audit_log_path.read_text().splitlines())
    message = ErrorMessage(
        code=ErrorCode.DP_REQUIRED, detail=f"{declining.task.task_id} this device needs DP"
    )
    # Execute
    applied = service.device_error("plain", declining.device_id, message)
    again = service.device_error("plain", declining.device_id, message)
    next_round = service.dispatch("plain")
    # Assert: the task failed now, not at its deadline; the slot went elsewhere
    assert applied and not again
    assert declining.device_id not in {o.device_id for o in next_round}
    states = {d.device_id: d.state for d in service.list_devices("plain")}
    assert states[declining.device_id] is DeviceState.DECLINED
    assert states[other.device_id] is DeviceState.BUSY
    tasks = {t.task_id: t for t in service.repository.tasks("plain")}
    assert tasks[declining.task.task_id].status is TaskStatus.FAILED
    # ... audited without the device's free text
    log = settings.audit_log_path.read_text()
    assert "needs DP" not in log
    new = [json.loads(x) for x in log.splitlines()[before:]]
    refusals = [e for e in new if e["action"] == "task_refused"]
    assert [(e["actor"]["kind"], e["actor"]["id"]) for e in refusals] == [
        ("device", declining.device_id)
    ]
    details = refusals[0]["details"]
    assert (details["device_id"], details["task_id"], details["reason"]) == (
        declining.device_id,
        declining.task.task_id,
        "dp_required",
    )
    # ... and a heartbeat does not bring the device back; nor does a restart
    service.close()
    reopened = StudyService.open(settings, clock=clock, seed=7)
    try:
        states = {d.device_id: d.state for d in reopened.list_devices("plain")}
        assert states[declining.device_id] is DeviceState.DECLINED
        assert declining.device_id not in {o.device_id for o in reopened.dispatch("plain")}
    finally:
        reopened.close()


def test_a_study_whose_devices_all_decline_stops_by_itself(service, spec, new_enrol) -> None:
    # Prepare
    (only,) = plain_running(service, spec, new_enrol, devices=1)
    # Execute
    service.device_refused("plain", only.device_id, only.task.task_id, ErrorCode.DP_REQUIRED)
    # Assert: nothing can ever work: the stop rule ends the study with a reason
    status = service.status("plain")
    assert status.stop_reason == "devices_exhausted"
