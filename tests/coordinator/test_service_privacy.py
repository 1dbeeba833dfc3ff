"""A DP study through the service: tasks carry the mechanism, reports are checked,
spends are audited, the privacy ledger survives a restart, budgets are reported
over REST, and a device may decline a task because its own budget is spent."""

from __future__ import annotations

import json
import warnings

import pytest

from fedward.compliance.reports import BudgetReport
from fedward.coordinator.api import create_app
from fedward.coordinator.engine import DeviceState
from fedward.coordinator.errors import RejectReason
from fedward.coordinator.privacy.guard import privacy_guard_of
from fedward.coordinator.privacy.settings import StudyPrivacy
from fedward.coordinator.service import (
    DeviceNotFound,
    NoPrivacyPolicy,
    StudyNotFound,
    StudyService,
    UnsupportedRefusal,
)
from fedward.coordinator.store import TaskStatus
from fedward.coordinator.study_spec import StudySpec
from fedward.privacy.accounting import epsilon_for
from fedward.protocol.messages import (
    AckStatus,
    ErrorCode,
    ErrorMessage,
    PrivacyReport,
)

with warnings.catch_warnings():  # starlette's note about httpx2; the client works as is
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

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
    missing = service.submit_update("dp", fleet.train(first, privacy=None))
    honest = service.submit_update("dp", fleet.train(second, privacy=honest_report()))
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
    ack = service.submit_update("dp", fleet.train(out, privacy=honest_report()))
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


def test_the_privacy_report_over_rest(service, settings, token, dp_spec, spec, new_enrol, fleet):
    # Prepare: one device charged for a task, one never scheduled; and a study without DP
    auth = {"Authorization": f"Bearer {token}"}
    service.create_study(dp_spec, study_id="dp")
    service.create_study(spec, study_id="plain")
    for i in range(2):
        assert service.enrol("dp", new_enrol("dp", i)).accepted
    service.start("dp")
    out = service.dispatch("dp")[0]
    service.submit_update("dp", fleet.train(out, privacy=honest_report()))
    ledger = privacy_guard_of(service._studies["dp"].engine).ledger
    # Execute
    with TestClient(create_app(settings, service=service)) as client:
        report = client.get("/v1/studies/dp/privacy", headers=auth)
        plain = client.get("/v1/studies/plain/privacy", headers=auth)
        missing = client.get("/v1/studies/nope/privacy", headers=auth)
        anonymous = client.get("/v1/studies/dp/privacy")
        documented = client.get("/openapi.json").json()["paths"]["/v1/studies/{study_id}/privacy"]
    # Assert
    assert report.status_code == 200, report.text
    body = BudgetReport.model_validate(report.json())
    assert body == service.privacy_report("dp")
    assert body.policy.epsilon == PRIVACY.epsilon and body.policy.delta == PRIVACY.delta
    rows = {r.device_id: r for r in body.devices}
    assert set(rows) == {"dev-000", "dev-001"}
    assert rows[out.device_id].epsilon_spent == ledger.spent(out.device_id) > 0
    assert rows[out.device_id].tasks == 1
    assert body.ledger_sha256 == ledger.state_dict()["payload"]["sha256"]
    assert (plain.status_code, plain.json()["error"]) == (404, "no_privacy_policy")
    assert (missing.status_code, missing.json()["error"]) == (404, "study_not_found")
    assert anonymous.status_code == 401
    schema = documented["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/BudgetReport")
    assert {"401", "404", "422"} <= set(documented["get"]["responses"])


def test_the_privacy_report_conforms_to_its_openapi_schema(
    service, settings, token, dp_spec, new_enrol, fleet
):
    # Prepare: a DP study with a spend, so every part of the report is filled in
    schemathesis = pytest.importorskip("schemathesis")
    service.create_study(dp_spec, study_id="dp")
    assert service.enrol("dp", new_enrol("dp", 0)).accepted
    service.start("dp")
    (out,) = service.dispatch("dp")
    service.submit_update("dp", fleet.train(out, privacy=honest_report()))
    app = create_app(settings, service=service)
    operation = schemathesis.openapi.from_asgi("/openapi.json", app)[
        "/v1/studies/{study_id}/privacy"
    ]["GET"]
    # Execute / Assert: status documented, body valid against the published schema
    for study_id in ("dp", "nope"):
        case = operation.Case(
            path_parameters={"study_id": study_id}, headers={"Authorization": f"Bearer {token}"}
        )
        case.call_and_validate()


# -- a device declines a task: its own budget is spent ---------------------------------
def dp_running(service, dp_spec, new_enrol, *, devices: int = 2) -> list:
    service.create_study(dp_spec, study_id="dp")
    for i in range(devices):
        assert service.enrol("dp", new_enrol("dp", i)).accepted
    service.start("dp")
    return service.dispatch("dp")


def test_a_device_refusal_frees_its_task_and_stops_the_device_for_good(
    service, settings, clock, dp_spec, new_enrol
) -> None:
    # Prepare
    refused, other = dp_running(service, dp_spec, new_enrol, devices=3)
    before = len(settings.audit_log_path.read_text().splitlines())
    # Execute
    applied = service.device_refused(
        "dp", refused.device_id, refused.task.task_id, ErrorCode.BUDGET_EXHAUSTED
    )
    again = service.device_refused(
        "dp", refused.device_id, refused.task.task_id, ErrorCode.BUDGET_EXHAUSTED
    )
    after_again = len(settings.audit_log_path.read_text().splitlines())
    next_round = service.dispatch("dp")
    # Assert: the slot went to the idle device, never back to the one that refused
    assert applied and not again
    (idle,) = {"dev-000", "dev-001", "dev-002"} - {refused.device_id, other.device_id}
    assert [o.device_id for o in next_round] == [idle]
    states = {d.device_id: d.state for d in service.list_devices("dp")}
    assert states[refused.device_id] is DeviceState.EXHAUSTED
    assert states[other.device_id] is DeviceState.BUSY
    tasks = {t.task_id: t for t in service.repository.tasks("dp")}
    assert tasks[refused.task.task_id].status is TaskStatus.FAILED
    assert service.status("dp").tasks_failed == 1
    guard = privacy_guard_of(service._studies["dp"].engine)
    assert guard.ledger.history(refused.device_id) == []  # nothing trained, nothing spent
    # ... audited once: the device's refusal and the coordinator's stop, no TASK_FAILED
    entries = [json.loads(x) for x in settings.audit_log_path.read_text().splitlines()]
    new = [(e["action"], e["outcome"], e["actor"]["kind"]) for e in entries[before:after_again]]
    assert new == [
        ("task_refused", "denied", "device"),
        ("budget_exhausted", "success", "coordinator"),
    ]
    assert entries[before]["details"]["task_id"] == refused.task.task_id
    assert entries[before]["actor"]["id"] == refused.device_id
    # ... and it survives a restart
    service.close()
    reopened = StudyService.open(settings, clock=clock, seed=7)
    try:
        states = {d.device_id: d.state for d in reopened.list_devices("dp")}
        assert states[refused.device_id] is DeviceState.EXHAUSTED
        restored = privacy_guard_of(reopened._studies["dp"].engine)
        assert refused.device_id in restored.exhausted_devices()
    finally:
        reopened.close()


def test_an_uplink_error_message_names_the_task_in_its_detail(
    service, settings, dp_spec, new_enrol
) -> None:
    # Prepare
    out, _ = dp_running(service, dp_spec, new_enrol)
    message = ErrorMessage(
        code=ErrorCode.BUDGET_EXHAUSTED, detail=f"{out.task.task_id} my own accountant says: spent"
    )
    # Execute
    applied = service.device_error("dp", out.device_id, message)
    # Assert
    assert applied
    assert service.status("dp").devices_by_state[DeviceState.EXHAUSTED] == 1
    assert "accountant says" not in settings.audit_log_path.read_text()  # device text: not logged
    for bad in ("", "   ", "../etc budget"):
        with pytest.raises(UnsupportedRefusal):
            service.device_error(
                "dp", out.device_id, ErrorMessage(code=ErrorCode.BUDGET_EXHAUSTED, detail=bad)
            )


def test_refusals_that_are_not_the_devices_to_make_change_nothing(
    service, settings, spec, dp_spec, new_enrol
) -> None:
    # Prepare
    victim, attacker = dp_running(service, dp_spec, new_enrol)
    service.create_study(spec, study_id="plain")
    assert service.enrol("plain", new_enrol("plain", 0)).accepted
    task = victim.task.task_id
    # Execute / Assert: another device's task is refused and audited
    assert not service.device_refused("dp", attacker.device_id, task, ErrorCode.BUDGET_EXHAUSTED)
    entry = json.loads(settings.audit_log_path.read_text().splitlines()[-1])
    assert (entry["action"], entry["actor"]["id"]) == ("device_auth_failed", attacker.device_id)
    assert service.status("dp").in_flight == 2
    assert DeviceState.EXHAUSTED not in service.status("dp").devices_by_state
    with pytest.raises(UnsupportedRefusal):
        service.device_refused("dp", victim.device_id, task, ErrorCode.STALE)
    with pytest.raises(DeviceNotFound):
        service.device_refused("dp", "ghost", task, ErrorCode.BUDGET_EXHAUSTED)
    with pytest.raises(NoPrivacyPolicy):
        service.device_refused("plain", "dev-000", task, ErrorCode.BUDGET_EXHAUSTED)
    with pytest.raises(StudyNotFound):
        service.device_refused("nope", "dev-000", task, ErrorCode.BUDGET_EXHAUSTED)
    assert not service.device_refused(
        "dp", victim.device_id, "t9999999", ErrorCode.BUDGET_EXHAUSTED
    )
