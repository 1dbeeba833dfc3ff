"""Issue 14 item 9: once the update budget is met the simulator sends no more tasks
(a synchronous row used to dispatch, and train, a whole round nothing read)."""

from __future__ import annotations

import pytest

from fedward.coordinator.engine import EngineEvent, EventKind
from fedward.simulation.executor import ExecutorKind, make_executor
from fedward.simulation.scenario import PRESETS, StrategyRun
from fedward.simulation.study import Study

TINY = PRESETS["tiny"]


@pytest.mark.parametrize("strategy", [StrategyRun.FEDAVG, StrategyRun.FEDBUFF, StrategyRun.FTTE])
def test_no_task_is_dispatched_after_the_budget_is_met(strategy: StrategyRun) -> None:
    # Prepare
    events: list[EngineEvent] = []
    pool = make_executor(
        ExecutorKind.SERIAL, TINY.data_config(), TINY.study_spec(strategy).model_settings()
    )
    # Execute
    try:
        result = Study(TINY, strategy, executor=pool, listeners=(events.append,)).run()
    finally:
        pool.close()
    # Assert: the budget was met, and nothing was sent from that moment on
    accepted = 0
    sent_after_budget = []
    for event in events:
        if event.kind is EventKind.UPDATE_ACCEPTED:
            accepted += 1
        elif event.kind is EventKind.TASK_DISPATCHED and accepted >= TINY.update_budget:
            sent_after_budget.append(event.details["task_id"])
    assert result.updates == accepted == TINY.update_budget
    assert sent_after_budget == []
