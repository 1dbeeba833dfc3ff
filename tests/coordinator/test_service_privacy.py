"""A DP study through the service: tasks carry the mechanism, reports are checked,
spends are audited, and the privacy ledger survives a restart."""

from __future__ import annotations

import json

import pytest

from coordinator.errors import RejectReason
from coordinator.privacy_guard import privacy_guard_of
from coordinator.privacy_settings import StudyPrivacy
from coordinator.service import StudyService
from coordinator.study_spec import StudySpec
from edge.local import LocalTask, run_local_task
from edge.updates import encode_update, update_header
from privacy.accounting import epsilon_for
from protocol.messages import AckStatus, PrivacyReport, decode_frame

PRIVACY = StudyPrivacy(
    epsilon=8.0,
    delta=1e-5,
    noise_multiplier=1.0,
    max_grad_norm=1.0,
    sample_rate=0.1,
    steps_per_task=10,
)


@pytest.fixture
def dp_spec(spec: StudySpec) -> StudySpec:
    return spec.model_copy(update={"privacy": PRIVACY})


def update_frame(fleet, out, *, report: PrivacyReport | None) -> bytes:
    _, tensors = decode_frame(out.model_frame, max_bytes=1 << 24)
    held = fleet.held.setdefault(out.device_id, {})
    held.update(tensors)
    task = LocalTask(
        task_id=out.task.task_id,
        model_version=out.task.model_version,
        subset_names=out.task.subset_names,
        train=fleet.spec.train_settings(),
        seed=1,
    )
    result = run_local_task(fleet.model, dict(held), fleet.x, fleet.y, task)
    header = update_header(
        result,
        device_id=out.device_id,
        subset_id=out.task.subset_id,
        base_version=out.task.model_version,
        privacy=report,
    )
    return encode_update(header, result, max_bytes=1 << 24)


def honest_report() -> PrivacyReport:
    step = PRIVACY.task_step()
    return PrivacyReport(
        noise_multiplier=PRIVACY.noise_multiplier,
        sample_rate=PRIVACY.sample_rate,
        steps=PRIVACY.steps_per_task,
        max_grad_norm=PRIVACY.max_grad_norm,
        accountant=PRIVACY.task_dp().accountant,
        claimed_epsilon=epsilon_for([step], delta=PRIVACY.delta, accountant=PRIVACY.accountant),
        delta=PRIVACY.delta,
    )


def test_dp_tasks_reports_spends_and_a_restart(
    service, settings, clock, dp_spec, new_enrol, fleet
) -> None:
    # Prepare
    service.create_study(dp_spec, study_id="dp")
    for i in range(2):
        assert service.enrol("dp", new_enrol("dp", i)).accepted
    service.start("dp")
    first, second = service.dispatch("dp")
    # Execute
    missing = service.submit_update("dp", update_frame(fleet, first, report=None))
    honest = service.submit_update("dp", update_frame(fleet, second, report=honest_report()))
    guard_state = privacy_guard_of(service._studies["dp"].engine).state_dict()
    service.close()
    reopened = StudyService.open(settings, clock=clock, seed=7)
    # Assert
    assert first.task.dp == second.task.dp == PRIVACY.task_dp()
    assert missing.status is AckStatus.REJECTED
    assert missing.reason == RejectReason.BAD_PRIVACY_CLAIM.value
    assert honest.status is AckStatus.BUFFERED
    restored = privacy_guard_of(reopened._studies["dp"].engine)
    assert restored.state_dict() == guard_state
    assert restored.ledger.spent(second.device_id) > 0
    entries = [json.loads(x) for x in settings.audit_log_path.read_text().splitlines()]
    actions = [e["action"] for e in entries]
    assert "privacy_spent" in actions
    rejected = [e for e in entries if e["action"] == "update_rejected"]
    assert rejected[-1]["details"]["reason"] == "bad_privacy_claim"
    reopened.close()


def test_a_budget_the_coordinator_stops_is_audited_as_its_decision(
    service, settings, dp_spec, new_enrol, fleet
) -> None:
    # Prepare: a budget that affords one task but not two
    step = PRIVACY.task_step()
    one = epsilon_for([step], delta=PRIVACY.delta, accountant=PRIVACY.accountant)
    two = epsilon_for([step, step], delta=PRIVACY.delta, accountant=PRIVACY.accountant)
    tight = PRIVACY.model_copy(update={"epsilon": (one + two) / 2})
    service.create_study(dp_spec.model_copy(update={"privacy": tight}), study_id="dp")
    assert service.enrol("dp", new_enrol("dp", 0)).accepted
    service.start("dp")
    (out,) = service.dispatch("dp")
    # Execute: the one affordable task is spent; the coordinator stops the device
    ack = service.submit_update("dp", update_frame(fleet, out, report=honest_report()))
    # Assert
    assert ack.status is AckStatus.BUFFERED
    assert service.dispatch("dp") == []
    entries = [json.loads(x) for x in settings.audit_log_path.read_text().splitlines()]
    by_action = {e["action"]: e for e in entries}
    exhausted = by_action["budget_exhausted"]
    assert exhausted["actor"] == {"kind": "coordinator", "id": "coordinator"}
    assert exhausted["details"]["device_id"] == out.device_id
    assert by_action["privacy_spent"]["actor"]["kind"] == "coordinator"
    assert by_action["update_accepted"]["actor"] == {"kind": "device", "id": out.device_id}
