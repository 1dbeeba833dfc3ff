"""Guards decide, the engine acts: GuardDecision's rules and how the engine applies them.

A scripted guard (a real EngineGuard, not a mock of the engine) returns the
decisions under test; the engine must move devices, refuse updates with the
guard's reason, count and emit them, and refuse a guard bug loudly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from fedward.coordinator.engine import (
    ALLOW,
    DeviceState,
    Engine,
    EventKind,
    GuardDecision,
)
from fedward.coordinator.errors import CoordinatorError, RejectReason
from fedward.coordinator.study_spec import build_engine
from tests.coordinator.engine_helpers import update_for


@dataclass
class ScriptedGuard:
    """Returns the decisions it is given; records what it was asked."""

    dispatch: GuardDecision = ALLOW
    admission: GuardDecision = ALLOW
    refusal: GuardDecision = ALLOW
    asked: list[str] = field(default_factory=list)

    def may_dispatch(self, device, *, now):
        self.asked.append(f"dispatch:{device.device_id}")
        return self.dispatch

    def admit(self, update, order, device, *, context, now):
        self.asked.append(f"admit:{order.task_id}")
        return self.admission

    def task_refused(self, order, *, now):
        self.asked.append(f"refused:{order.task_id}")
        return self.refusal


def engine_with(spec, *guards) -> tuple[Engine, list]:
    events: list = []
    engine = build_engine(spec, rng=random.Random(5), listeners=(events.append,))
    engine.guards = list(guards)
    for i in range(2):
        engine.enrol(f"dev-{i}", device_class="phone", memory_bytes=1 << 22, now=0.0)
    return engine, events


def test_a_decision_keeps_its_invariants() -> None:
    with pytest.raises(ValueError, match="rejection"):
        GuardDecision(allowed=True, reject=RejectReason.DUPLICATE)
    with pytest.raises(ValueError, match="reason"):
        GuardDecision(allowed=False, device_state=DeviceState.EXHAUSTED)
    assert ALLOW.allowed and ALLOW.device_state is None


def test_a_refused_dispatch_moves_the_device_and_issues_nothing(spec) -> None:
    # Prepare
    stop = GuardDecision(
        allowed=False, device_state=DeviceState.EXHAUSTED, state_reason="budget spent"
    )
    engine, events = engine_with(spec, ScriptedGuard(dispatch=stop))
    # Execute
    orders = engine.dispatch(now=1.0)
    # Assert
    assert orders == []
    assert {d.state for d in engine.devices.values()} == {DeviceState.EXHAUSTED}
    states = [e for e in events if e.kind is EventKind.DEVICE_STATE]
    assert {e.details["reason"] for e in states} == {"budget spent"}


def test_the_first_guard_that_refuses_stops_the_others(spec) -> None:
    # Prepare
    first = ScriptedGuard(dispatch=GuardDecision(allowed=False))
    second = ScriptedGuard()
    engine, _ = engine_with(spec, first, second)
    # Execute
    engine.dispatch(now=1.0)
    # Assert
    assert first.asked and second.asked == []


def test_a_refused_update_carries_the_guards_reason_and_state(spec) -> None:
    # Prepare
    refuse = GuardDecision(
        allowed=False,
        reject=RejectReason.BUDGET_EXCEEDED,
        detail="past the budget",
        device_state=DeviceState.EXHAUSTED,
        state_reason="update past the budget",
    )
    engine, events = engine_with(spec, ScriptedGuard(admission=refuse))
    order = engine.dispatch(now=1.0)[0]
    # Execute
    outcome = engine.submit(update_for(engine, order), now=2.0)
    # Assert: refused, counted, emitted, the device stopped, its slot freed
    assert not outcome.accepted and outcome.reason is RejectReason.BUDGET_EXCEEDED
    assert engine.stats.rejected[RejectReason.BUDGET_EXCEEDED] == 1
    rejected = [e for e in events if e.kind is EventKind.UPDATE_REJECTED]
    assert [e.details["detail"] for e in rejected] == ["past the budget"]
    assert engine.devices[order.device_id].state is DeviceState.EXHAUSTED
    assert order.task_id not in engine.tasks


def test_a_refusal_without_a_reason_is_a_guard_bug_and_loud(spec) -> None:
    # Prepare
    engine, _ = engine_with(spec, ScriptedGuard(admission=GuardDecision(allowed=False)))
    order = engine.dispatch(now=1.0)[0]
    # Execute / Assert
    with pytest.raises(CoordinatorError, match="without a reason"):
        engine.submit(update_for(engine, order), now=2.0)


def test_a_task_refusal_fails_the_task_then_applies_the_decision(spec) -> None:
    # Prepare
    stop = GuardDecision(
        allowed=False, device_state=DeviceState.EXHAUSTED, state_reason="own budget"
    )
    guard = ScriptedGuard(refusal=stop)
    engine, events = engine_with(spec, guard)
    order = engine.dispatch(now=1.0)[0]
    # Execute
    refused = engine.task_refused(order.task_id, now=2.0, reason="the device's budget")
    again = engine.task_refused(order.task_id, now=3.0, reason="the device's budget")
    # Assert: the task failed first (slot freed), then the device was stopped
    kinds = [e.kind for e in events if e.at == 2.0]
    assert refused and not again
    assert kinds == [EventKind.TASK_FAILED, EventKind.DEVICE_STATE]
    failed = next(e for e in events if e.kind is EventKind.TASK_FAILED)
    assert failed.details["reason"] == "the device's budget"
    assert engine.devices[order.device_id].state is DeviceState.EXHAUSTED
    assert guard.asked[-1] == f"refused:{order.task_id}"


def test_an_accepted_update_reports_what_the_guard_charged(spec) -> None:
    # Prepare: a guard that admits with a (stand-in) spend record
    spend = object()
    engine, _ = engine_with(spec, ScriptedGuard(admission=GuardDecision(allowed=True, spend=spend)))
    order = engine.dispatch(now=1.0)[0]
    # Execute
    outcome = engine.submit(update_for(engine, order), now=2.0)
    # Assert
    assert outcome.accepted and outcome.spends == (spend,)
