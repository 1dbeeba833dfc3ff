"""The coordinator's privacy guard: recomputed claims, budgets at dispatch and admission."""

from __future__ import annotations

import copy

import pytest
from budget_helpers import PRIVACY, SPEC, make_dp_study

from fedward.compliance.events import ActorKind, AuditAction, Outcome
from fedward.coordinator.audit import privacy_entry
from fedward.coordinator.engine import DeviceState, EventKind
from fedward.coordinator.errors import GuardStateError, RejectReason, StateLoadError
from fedward.coordinator.privacy.guard import PrivacyEventKind, PrivacyGuard
from fedward.coordinator.privacy.ledger_store import (
    guard_state_from_snapshot,
    report_from_guard_state,
    snapshot_device_classes,
)
from fedward.coordinator.privacy.settings import StudyPrivacy
from fedward.coordinator.store.snapshot import engine_snapshot, restore_engine
from fedward.errors import SavedStateError
from fedward.privacy.accounting import Accountant, MechanismStep, max_steps_within
from fedward.privacy.errors import LedgerStateError, PolicyError
from fedward.privacy.ledger import PrivacyLedger

RDP = Accountant.RDP


def _one_task(study, device_id="dev-00", now=1.0):
    orders = study.engine.dispatch(now=now, eligible=lambda d: d.device_id == device_id)
    assert len(orders) == 1
    return orders[0]


def test_tasks_carry_the_study_mechanism(dp_study):
    # Prepare
    order = _one_task(dp_study)

    # Execute
    dp = dp_study.guard.task_dp(order)

    # Assert
    assert (dp.noise_multiplier, dp.sample_rate, dp.max_steps) == (1.5, 0.25, 8)
    assert (dp.max_grad_norm, dp.delta, dp.accountant.value) == (1.0, 1e-5, "rdp")


def test_honest_update_is_charged_and_audited(dp_study):
    # Prepare
    order = _one_task(dp_study)
    report = dp_study.report_for(order)

    # Execute
    outcome = dp_study.engine.submit(dp_study.update_for(order), now=2.0, context=report)

    # Assert
    assert outcome.accepted
    assert dp_study.guard.ledger.spent("dev-00") == pytest.approx(report.claimed_epsilon, abs=0)
    spent = [e for e in dp_study.events.privacy_events if e.kind is PrivacyEventKind.SPENT]
    assert len(spent) == 1
    event = spent[0]
    assert (
        privacy_entry(event).action is AuditAction.PRIVACY_SPENT
        and privacy_entry(event).outcome is Outcome.SUCCESS
    )
    assert privacy_entry(event).details["epsilon"] == report.claimed_epsilon
    assert (
        privacy_entry(event).details["epsilon_budget"] == 8.0
        and privacy_entry(event).details["task_id"] == order.task_id
    )
    # charged when dispatched (before the update), confirmed with the claim on arrival
    assert event.at == 1.0 and event.record is not None and not event.record.confirmed
    (confirmed,) = outcome.spends
    assert confirmed.confirmed and confirmed.claimed_epsilon == report.claimed_epsilon


@pytest.mark.parametrize("forged", [0.0, 1.0, 3.2152, 100.0])
def test_forged_claim_is_rejected_counted_and_revokes_the_device(dp_study, forged):
    # Prepare
    order = _one_task(dp_study)
    report = dp_study.report_for(order, claimed=forged)

    # Execute
    outcome = dp_study.engine.submit(dp_study.update_for(order), now=2.0, context=report)

    # Assert
    assert not outcome.accepted and outcome.reason is RejectReason.BAD_PRIVACY_CLAIM
    assert dp_study.engine.stats.rejected[RejectReason.BAD_PRIVACY_CLAIM] == 1
    assert dp_study.engine.stats.accepted == 0
    rejected = [e for e in dp_study.events.engine_events if e.kind is EventKind.UPDATE_REJECTED]
    assert [e.details["reason"] for e in rejected] == ["bad_privacy_claim"]
    kinds = [e.kind for e in dp_study.events.privacy_events]
    assert PrivacyEventKind.REJECTED in kinds and PrivacyEventKind.REVOKED in kinds
    # the server saw the update: the reported mechanism is charged all the same
    assert dp_study.guard.ledger.history("dev-00") == [dp_study.guard.task_step]
    assert dp_study.engine.devices["dev-00"].state is DeviceState.REVOKED
    assert dp_study.engine.dispatch(now=3.0, eligible=lambda d: d.device_id == "dev-00") == []


@pytest.mark.parametrize(
    "change",
    [
        {"noise_multiplier": 0.5},
        {"sample_rate": 0.5},
        {"steps": 9},
        {"max_grad_norm": 5.0},
        {"delta": 1e-3},
    ],
)
def test_report_of_another_mechanism_is_rejected_and_charged_as_dispatched(dp_study, change):
    # Prepare
    order = _one_task(dp_study)
    report = dp_study.report_for(order, **change)

    # Execute
    outcome = dp_study.engine.submit(dp_study.update_for(order), now=2.0, context=report)

    # Assert
    assert outcome.reason is RejectReason.BAD_PRIVACY_CLAIM
    # charged once, at dispatch, with the task's mechanism: what the device reports changes nothing
    assert dp_study.guard.ledger.history("dev-00") == [dp_study.guard.task_step]
    assert dp_study.engine.stats.rejected[RejectReason.BAD_PRIVACY_CLAIM] == 1


def test_update_without_privacy_report_is_rejected(dp_study):
    # Prepare
    order = _one_task(dp_study)

    # Execute
    outcome = dp_study.engine.submit(dp_study.update_for(order), now=2.0, context=None)

    # Assert
    assert outcome.reason is RejectReason.BAD_PRIVACY_CLAIM
    assert dp_study.guard.ledger.history("dev-00") == [dp_study.guard.task_step]


def test_update_past_the_budget_is_rejected_and_exhausts_the_device(dp_study):
    # Prepare: a task in flight without a reservation (dispatched by a coordinator that
    # charged on arrival, restored here) while a spend recorded elsewhere used the budget
    order = _one_task(dp_study)
    guard = dp_study.guard
    fits = max_steps_within(
        8.0, delta=1e-5, history=(), noise_multiplier=1.5, sample_rate=0.25, accountant=RDP
    )
    big = MechanismStep(noise_multiplier=1.5, sample_rate=0.25, steps=fits - 4)
    guard.ledger = PrivacyLedger(guard.settings.policy())
    guard.ledger.charge("dev-00", "elsewhere", big, at=1.5, max_grad_norm=1.0)
    guard._affordable.clear()
    report = dp_study.report_for(order)

    # Execute
    outcome = dp_study.engine.submit(dp_study.update_for(order), now=2.0, context=report)

    # Assert
    assert outcome.reason is RejectReason.BUDGET_EXCEEDED
    assert dp_study.engine.stats.rejected[RejectReason.BUDGET_EXCEEDED] == 1
    assert dp_study.engine.devices["dev-00"].state is DeviceState.EXHAUSTED
    assert len(guard.ledger.records("dev-00")) == 1  # nothing charged past the budget
    actions = [privacy_entry(e).action for e in dp_study.events.privacy_events]
    assert AuditAction.BUDGET_EXHAUSTED in actions and AuditAction.UPDATE_REJECTED in actions


def test_device_that_cannot_afford_a_task_is_never_dispatched_again():
    # Prepare: a budget that buys exactly two tasks (epsilon 3.22, then 4.29)
    tight = StudyPrivacy(**{**PRIVACY.model_dump(), "epsilon": 4.5})
    affordable = (
        max_steps_within(
            4.5, delta=1e-5, history=(), noise_multiplier=1.5, sample_rate=0.25, accountant=RDP
        )
        // 8
    )
    study = make_dp_study(spec=SPEC.model_copy(update={"privacy": tight}), devices=1)
    now = 1.0

    # Execute: keep asking for work long after the budget is gone
    for _ in range(6):
        for order in study.engine.dispatch(now=now):
            study.engine.submit(
                study.update_for(order), now=now + 0.5, context=study.report_for(order)
            )
        now += 1.0

    # Assert
    assert affordable == 2
    assert len(study.events.dispatched_to("dev-00")) == 2
    assert study.engine.stats.accepted == 2 and not study.engine.stats.rejected
    assert study.engine.devices["dev-00"].state is DeviceState.EXHAUSTED
    exhausted = [e for e in study.events.privacy_events if e.kind is PrivacyEventKind.EXHAUSTED]
    assert len(exhausted) == 1
    assert (
        privacy_entry(exhausted[0]).details["epsilon"]
        <= 4.5
        < privacy_entry(exhausted[0]).details["epsilon_next_task"]
    )
    state_changes = [e for e in study.events.engine_events if e.kind is EventKind.DEVICE_STATE]
    assert state_changes[-1].details["state"] == "exhausted" and state_changes[-1].details["reason"]


def test_guard_state_round_trip_keeps_budgets(dp_study):
    # Prepare
    for t in (1.0, 3.0):
        order = _one_task(dp_study, now=t)
        dp_study.engine.submit(
            dp_study.update_for(order), now=t + 1, context=dp_study.report_for(order)
        )
    state = dp_study.guard.state_dict()

    # Execute: a restarted coordinator builds a fresh guard and loads the state
    restored = PrivacyGuard(PRIVACY)
    restored.load_state_dict(state)

    # Assert
    assert restored.ledger.spent("dev-00") == dp_study.guard.ledger.spent("dev-00") > 0
    assert restored.ledger.history("dev-00") == dp_study.guard.ledger.history("dev-00")
    assert restored.device_classes() == {"dev-00": "wearable"}
    assert restored.state_dict() == state


def test_guard_state_of_other_settings_or_tampered_is_refused(dp_study):
    # Prepare
    order = _one_task(dp_study)
    dp_study.engine.submit(dp_study.update_for(order), now=2.0, context=dp_study.report_for(order))
    state = dp_study.guard.state_dict()
    looser = StudyPrivacy(**{**PRIVACY.model_dump(), "epsilon": 80.0})
    tampered = copy.deepcopy(state)
    tampered["payload"]["ledger"]["payload"]["devices"]["dev-00"][0]["epsilon_after"] = 0.1

    # Execute / Assert
    with pytest.raises(PolicyError):
        PrivacyGuard(looser).load_state_dict(state)
    with pytest.raises(LedgerStateError):
        PrivacyGuard(PRIVACY).load_state_dict(tampered)
    with pytest.raises(SavedStateError, match="privacy_guard"):
        PrivacyGuard(PRIVACY).load_state_dict({**state, "kind": "fedward.privacy.ledger"})
    with pytest.raises(SavedStateError, match="format version"):
        PrivacyGuard(PRIVACY).load_state_dict({**state, "format_version": 1})


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("device_classes", {"dev-00": 7}),
        ("exhausted", "dev-00"),
        ("revoked", [""]),
        ("ledger", None),
        ("settings", {"epsilon": "lots"}),
    ],
)
def test_a_bad_guard_state_changes_nothing_and_is_a_state_error(dp_study, part, value):
    # Prepare: a guard that has charged one task; a state broken in one part
    order = _one_task(dp_study)
    dp_study.engine.submit(dp_study.update_for(order), now=2.0, context=dp_study.report_for(order))
    good = dp_study.guard.state_dict()
    bad = copy.deepcopy(good)
    bad["payload"][part] = value
    target = make_dp_study().guard
    before = target.state_dict()
    # Execute / Assert: refused as a saved-state error, and all or nothing
    with pytest.raises(GuardStateError):
        target.load_state_dict(bad)
    assert target.state_dict() == before


def test_an_engine_with_a_bad_guard_state_refuses_the_whole_state(dp_study):
    # Prepare
    order = _one_task(dp_study)
    dp_study.engine.submit(dp_study.update_for(order), now=2.0, context=dp_study.report_for(order))
    state = copy.deepcopy(dp_study.engine.state_dict())
    state["payload"]["guards"][0]["payload"]["exhausted"] = "not a list"
    fresh = make_dp_study()
    versions = {v: dp_study.engine.base_params(v) for v in dp_study.engine.live_versions()}
    # Execute / Assert: one error type for the caller, and the fresh engine untouched
    with pytest.raises(StateLoadError):
        fresh.engine.load_state_dict(state, versions=versions)
    assert fresh.engine.version == 0 and fresh.guard.ledger.history("dev-00") == []


def test_engine_snapshot_restores_the_ledger(dp_study):
    # Prepare
    order = _one_task(dp_study)
    dp_study.engine.submit(dp_study.update_for(order), now=2.0, context=dp_study.report_for(order))
    snapshot = engine_snapshot(dp_study.engine, delta_ref=lambda task_id, delta: "0" * 64)
    fresh = make_dp_study()
    params = {v: dp_study.engine.params for v in (0, dp_study.engine.version)}

    # Execute
    restore_engine(
        fresh.engine,
        snapshot,
        load_params=lambda version: params[version],
        load_delta=lambda sha: dp_study.update_for(order).delta,
    )

    # Assert
    assert fresh.guard.ledger.spent("dev-00") == dp_study.guard.ledger.spent("dev-00") > 0


def test_device_refusal_frees_the_task_and_stops_scheduling(dp_study):
    # Prepare
    order = _one_task(dp_study)

    # Execute
    dp_study.engine.task_refused(order.task_id, now=2.0, reason="its own budget")
    later = dp_study.engine.dispatch(now=3.0, eligible=lambda d: d.device_id == "dev-00")

    # Assert
    assert later == [] and order.task_id not in dp_study.engine.tasks
    assert dp_study.engine.stats.failed == 1
    assert dp_study.engine.devices["dev-00"].state is DeviceState.EXHAUSTED
    actions = [privacy_entry(e).action for e in dp_study.events.privacy_events]
    assert actions == [
        AuditAction.PRIVACY_SPENT,
        AuditAction.TASK_REFUSED,
        AuditAction.BUDGET_EXHAUSTED,
    ]
    # charged when dispatched, released by the refusal: nothing trained, nothing spent
    assert dp_study.guard.ledger.history("dev-00") == []


def test_audit_actor_is_the_device_only_for_its_own_refusal(dp_study):
    # Prepare
    first = _one_task(dp_study)
    dp_study.engine.submit(dp_study.update_for(first), now=2.0, context=dp_study.report_for(first))
    second = _one_task(dp_study, now=3.0)

    # Execute
    dp_study.engine.task_refused(second.task_id, now=4.0, reason="its own budget")

    # Assert
    actors = {e.kind: privacy_entry(e).actor for e in dp_study.events.privacy_events}
    assert actors == {
        PrivacyEventKind.SPENT: ActorKind.COORDINATOR,
        PrivacyEventKind.REFUSED: ActorKind.DEVICE,
        PrivacyEventKind.EXHAUSTED: ActorKind.COORDINATOR,
    }


def test_a_report_from_a_snapshot_lists_devices_the_guard_never_saw(dp_study):
    # Prepare: one device charged, one enrolled later and never dispatched
    order = _one_task(dp_study)
    dp_study.engine.submit(dp_study.update_for(order), now=2.0, context=dp_study.report_for(order))
    dp_study.engine.enrol("dev-late", device_class="gateway", memory_bytes=1 << 22, now=3.0)
    snapshot = engine_snapshot(dp_study.engine, delta_ref=lambda task_id, delta: "0" * 64)
    # Execute: what `fedward budget report` does with a database row
    state = guard_state_from_snapshot(snapshot)
    assert state is not None
    report = report_from_guard_state(
        state, study_id="dp-unit", device_classes=snapshot_device_classes(snapshot)
    )
    # Assert: every enrolled device has a row; the late one has spent nothing
    rows = {row.device_id: row for row in report.devices}
    assert set(rows) == set(dp_study.engine.devices)
    assert rows["dev-late"].epsilon_spent == 0.0 and rows["dev-late"].device_class == "gateway"
