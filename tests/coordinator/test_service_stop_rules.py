"""Live studies end by themselves: update budget, target reached, every device exhausted.

Each rule is met through the service's real calls (enrol, dispatch, real local
training, submit); the study must then be STOPPED with the rule named in its
status, and the coordinator (not an operator) audited as the one who ended it.
The held-out evaluation at the coordinator is checked against an independent
evaluation of the same merged model.
"""

from __future__ import annotations

import json

import numpy as np

from fedward.coordinator.privacy.settings import StudyPrivacy
from fedward.coordinator.service import InvalidHoldout
from fedward.coordinator.store import StudyState
from fedward.coordinator.study_spec import StopRule
from fedward.privacy.accounting import epsilon_for
from fedward.protocol.messages import AckStatus, PrivacyReport
from fedward.tinytrain.training import evaluate


def _finished(settings) -> list[dict]:
    entries = [json.loads(x) for x in settings.audit_log_path.read_text().splitlines()]
    return [e for e in entries if e["action"] == "study_stopped"]


def _run_one_fill(service, fleet, study_id: str) -> list:
    acks = [service.submit_update(study_id, fleet.train(out)) for out in service.dispatch(study_id)]
    return acks


def test_the_update_budget_stops_the_study(service, settings, spec, new_enrol, fleet) -> None:
    # Prepare: two updates allowed, a buffer of two
    study = spec.model_copy(update={"stop": StopRule(max_updates=2)})
    service.create_study(study, study_id="b")
    for i in range(3):
        assert service.enrol("b", new_enrol("b", i)).accepted
    service.start("b")
    # Execute
    acks = _run_one_fill(service, fleet, "b")
    status = service.status("b")
    # Assert
    assert [a.status for a in acks] == [AckStatus.BUFFERED, AckStatus.MERGED]
    assert status.state is StudyState.STOPPED
    assert status.stop_reason == "update_budget_spent"
    assert service.dispatch("b") == []
    (entry,) = _finished(settings)
    assert entry["actor"]["kind"] == "coordinator"
    assert entry["details"]["reason"] == "update_budget_spent"
    assert entry["details"]["updates_accepted"] == 2


def test_a_study_under_its_budget_keeps_running(service, spec, new_enrol, fleet) -> None:
    # Prepare
    service.create_study(spec.model_copy(update={"stop": StopRule(max_updates=10)}), study_id="r")
    for i in range(2):
        assert service.enrol("r", new_enrol("r", i)).accepted
    service.start("r")
    # Execute
    _run_one_fill(service, fleet, "r")
    # Assert
    assert service.status("r").state is StudyState.RUNNING
    assert service.status("r").stop_reason is None


def test_every_device_exhausted_ends_the_study_with_a_clear_status(
    service, settings, spec, new_enrol, fleet
) -> None:
    # Prepare: a budget that affords one task per device, one device
    privacy = StudyPrivacy(
        epsilon=8.0,
        delta=1e-5,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.1,
        steps_per_task=10,
    )
    step = privacy.task_step()
    one = epsilon_for([step], delta=privacy.delta, accountant=privacy.accountant)
    two = epsilon_for([step, step], delta=privacy.delta, accountant=privacy.accountant)
    tight = privacy.model_copy(update={"epsilon": (one + two) / 2})
    service.create_study(spec.model_copy(update={"privacy": tight}), study_id="x")
    assert service.enrol("x", new_enrol("x", 0)).accepted
    service.start("x")
    (out,) = service.dispatch("x")
    report = PrivacyReport(
        noise_multiplier=tight.noise_multiplier,
        sample_rate=tight.sample_rate,
        steps=tight.steps_per_task,
        max_grad_norm=tight.max_grad_norm,
        accountant=tight.task_dp().accountant,
        claimed_epsilon=one,
        delta=tight.delta,
    )
    frame = fleet.train(out, privacy=report)
    # Execute
    ack = service.submit_update("x", frame)
    status = service.status("x")
    # Assert
    assert ack.status is AckStatus.BUFFERED
    assert status.state is StudyState.STOPPED
    assert status.stop_reason == "devices_exhausted"
    (entry,) = _finished(settings)
    assert entry["details"]["reason"] == "devices_exhausted"
    assert entry["details"]["exhausted_devices"] == 1


def test_the_coordinators_held_out_evaluation_reaches_the_target(
    service, settings, spec, new_enrol, fleet
) -> None:
    # Prepare: a validation study with a target any merged model meets
    service.create_study(
        spec.model_copy(update={"stop": StopRule(target_accuracy=0.01)}), study_id="v"
    )
    for i in range(2):
        assert service.enrol("v", new_enrol("v", i)).accepted
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, spec.in_channels, spec.window)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, 40)
    service.attach_holdout("v", x, y)
    service.start("v")
    # Execute
    _run_one_fill(service, fleet, "v")
    status = service.status("v")
    # Assert: the accuracy recorded is that of the merged model on the held-out set
    merged = service._studies["v"].engine.params
    expected, _ = evaluate(fleet.model, merged, x, y)
    assert status.last_accuracy_version == 1
    assert status.last_accuracy == expected
    assert status.state is StudyState.STOPPED
    assert status.stop_reason == "target_reached"


def test_a_held_out_set_that_does_not_fit_the_model_is_refused(service, spec) -> None:
    # Prepare
    service.create_study(spec, study_id="h")
    # Execute / Assert
    try:
        service.attach_holdout("h", np.zeros((4, 2, spec.window)), np.zeros(4, dtype=int))
    except InvalidHoldout as exc:
        assert f"held-out x must be [n, {spec.in_channels}, {spec.window}]" in str(exc)
    else:
        raise AssertionError("a held-out set of the wrong shape was accepted")
