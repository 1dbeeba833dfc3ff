"""Issue 9 items 3 and 4: the ledger charges what was dispatched and reconciles by task id.

Each test performs the attack (or the loss) through the real engine and
privacy guard, with claims computed by Opacus' accountant as a device's own
budget would compute them.
"""

from __future__ import annotations

import pytest

from fedward.coordinator.engine import DeviceState
from fedward.coordinator.errors import RejectReason
from fedward.coordinator.privacy.events import PrivacyEventKind
from fedward.privacy.accounting import Accountant, MechanismStep, epsilon_for
from tests.privacy_integration.budget_helpers import DELTA, PRIVACY, make_dp_study

TASK = MechanismStep(
    noise_multiplier=PRIVACY.noise_multiplier,
    sample_rate=PRIVACY.sample_rate,
    steps=PRIVACY.steps_per_task,
)


def _epsilon(history):
    return epsilon_for(history, delta=DELTA, accountant=Accountant.RDP)


def test_a_device_reporting_fewer_steps_is_charged_the_dispatched_task():
    # Prepare: a device that trains 8 steps per task but reports 1 step, and claims the
    # epsilon of the 1-step history it reports (a self-consistent lie; the old ledger
    # admitted it for 59 tasks, real epsilon 26.35 against a budget of 8)
    study = make_dp_study(devices=1)
    reported: list[MechanismStep] = []
    trained: list[MechanismStep] = []
    one_step = MechanismStep(
        noise_multiplier=TASK.noise_multiplier, sample_rate=TASK.sample_rate, steps=1
    )
    now = 1.0

    # Execute: keep the device busy far past what its budget allows
    for _ in range(80):
        for order in study.engine.dispatch(now=now):
            trained.append(TASK)
            reported.append(one_step)
            report = study.report_for(order, steps=1, claimed=_epsilon(reported))
            study.engine.submit(study.update_for(order), now=now + 0.5, context=report)
        now += 1.0

    # Assert: charged in full at dispatch, so the ledger never under-counts what it sent
    ledger = study.guard.ledger
    dispatched = len(study.events.dispatched_to("dev-00"))
    assert ledger.history("dev-00") == [TASK] * dispatched
    assert ledger.spent("dev-00") == pytest.approx(_epsilon([TASK] * dispatched), rel=1e-12)
    assert ledger.spent("dev-00") <= PRIVACY.epsilon
    # the lie is caught at the first update (its claim is below what it was sent)
    assert study.engine.stats.accepted == 0
    assert study.engine.stats.rejected[RejectReason.BAD_PRIVACY_CLAIM] == 1
    assert study.engine.devices["dev-00"].state is DeviceState.REVOKED


def test_fewer_steps_with_an_honest_claim_is_still_charged_in_full():
    # Prepare: a report of 1 step whose claim matches the dispatched tasks
    study = make_dp_study(devices=1)
    now, accepted = 1.0, 0

    # Execute
    for _ in range(40):
        for order in study.engine.dispatch(now=now):
            report = study.report_for(order, steps=1)  # claim from the ledger's history
            accepted += study.engine.submit(
                study.update_for(order), now=now + 0.5, context=report
            ).accepted
        now += 1.0

    # Assert: admitted only as many tasks as the budget buys at 8 steps each
    affordable = 0
    while _epsilon([TASK] * (affordable + 1)) <= PRIVACY.epsilon:
        affordable += 1
    assert accepted == affordable
    assert study.guard.ledger.spent("dev-00") == pytest.approx(_epsilon([TASK] * affordable))
    assert study.engine.devices["dev-00"].state is DeviceState.EXHAUSTED


def test_a_lost_update_stays_charged_and_the_honest_device_is_not_revoked():
    # Prepare: the device trains task 1, but its update is lost (the task times out)
    study = make_dp_study(devices=1)
    device_history: list[MechanismStep] = []
    (first,) = study.engine.dispatch(now=1.0)
    device_history.append(TASK)  # the device trained it and counts it
    study.engine.task_failed(first.task_id, now=5.0, reason="deadline")

    # Execute: the next task's update carries the device's honest cumulative claim
    (second,) = study.engine.dispatch(now=6.0)
    device_history.append(TASK)
    report = study.report_for(second, claimed=_epsilon(device_history))
    outcome = study.engine.submit(study.update_for(second), now=7.0, context=report)

    # Assert: accepted, not revoked; the lost task is charged (conservatively) and
    # reconciled by task id
    assert outcome.accepted
    assert study.engine.devices["dev-00"].state is not DeviceState.REVOKED
    ledger = study.guard.ledger
    assert ledger.spent("dev-00") == pytest.approx(_epsilon(device_history))
    assert ledger.unconfirmed("dev-00") == [first.task_id]
    revoked = [e for e in study.events.privacy_events if e.kind is PrivacyEventKind.REVOKED]
    assert revoked == []


def test_a_late_update_after_timeout_is_refused_but_its_task_stays_charged():
    # Prepare
    study = make_dp_study(devices=1)
    (first,) = study.engine.dispatch(now=1.0)
    report = study.report_for(first)
    study.engine.task_failed(first.task_id, now=5.0, reason="deadline")

    # Execute: the update arrives after its task timed out
    late = study.engine.submit(study.update_for(first), now=6.0, context=report)
    (second,) = study.engine.dispatch(now=7.0)
    honest = study.report_for(second, claimed=_epsilon([TASK, TASK]))
    outcome = study.engine.submit(study.update_for(second), now=8.0, context=honest)

    # Assert
    assert late.reason is RejectReason.UNKNOWN_TASK
    assert outcome.accepted
    assert study.guard.ledger.history("dev-00") == [TASK, TASK]


def test_a_device_whose_updates_were_lost_but_claims_less_than_it_delivered_is_revoked():
    # Prepare: two delivered tasks, then a claim that forgets one of them
    study = make_dp_study(devices=1)
    now = 1.0
    for _ in range(2):
        (order,) = study.engine.dispatch(now=now)
        study.engine.submit(study.update_for(order), now=now + 0.5, context=study.report_for(order))
        now += 1.0
    (third,) = study.engine.dispatch(now=now)

    # Execute: the claim counts two tasks although the coordinator has seen three updates
    forged = study.report_for(third, claimed=_epsilon([TASK, TASK]))
    outcome = study.engine.submit(study.update_for(third), now=now + 0.5, context=forged)

    # Assert
    assert outcome.reason is RejectReason.BAD_PRIVACY_CLAIM
    assert study.engine.devices["dev-00"].state is DeviceState.REVOKED
    assert study.guard.ledger.history("dev-00") == [TASK] * 3


def test_reservations_survive_a_restart():
    # Prepare: a task in flight when the coordinator saves its state
    study = make_dp_study(devices=1)
    (order,) = study.engine.dispatch(now=1.0)
    state = study.engine.state_dict()
    versions = {v: study.engine.base_params(v) for v in study.engine.live_versions()}

    # Execute
    fresh = make_dp_study(devices=1)
    fresh.engine.load_state_dict(state, versions=versions)
    outcome = fresh.engine.submit(fresh.update_for(order), now=2.0, context=fresh.report_for(order))

    # Assert: the reservation came back and was confirmed, not charged twice
    assert outcome.accepted
    assert fresh.guard.ledger.history("dev-00") == [TASK]
    assert fresh.guard.ledger.unconfirmed("dev-00") == []
