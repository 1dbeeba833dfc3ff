"""Cohorts bound at arrival (``CohortBinding.ARRIVAL``, issue 11: time to target).

Devices get plain training tasks, say when they have trained
(``Engine.secagg_ready``), and the first ``m`` ready tasks of a subset form the
next fill; each member's task then carries its public staleness weight. Driven by
real SecAgg clients (``Fleet``), in Prepare / Execute / Assert form.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from fedward.coordinator.api import create_app
from fedward.coordinator.engine import Engine, EngineEvent, EventKind, TaskOrder
from fedward.coordinator.errors import CoordinatorError, StateLoadError
from fedward.coordinator.secagg import CohortBinding, SecAggPolicy, SecAggPolicyError
from fedward.coordinator.strategies import ClientUpdate
from tests.coordinator.test_secagg_engine import (
    COHORT,
    SHAPES,
    Fleet,
    enrol,
    make_engine,
    plaintext_merge,
    tolerance,
    versions_of,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

CONCURRENCY = 2 * COHORT


def arrival_engine(*, events: list[EngineEvent] | None = None, seed: int = 0) -> Engine:
    engine = make_engine(fills_in_flight=2, events=events, seed=seed)
    engine.fills.policy = dataclasses.replace(
        engine.fills.policy, cohort_binding=CohortBinding.ARRIVAL
    )
    engine.concurrency = CONCURRENCY
    return engine


def ready(engine: Engine, orders: list[TaskOrder], *, now: float) -> list[TaskOrder]:
    invited: list[TaskOrder] = []
    for order in orders:
        step = engine.secagg_ready(task_id=order.task_id, device_id=order.device_id, now=now)
        invited.extend(step.invited)
    return invited


def test_devices_train_plain_tasks_and_the_first_m_ready_form_a_fill() -> None:
    # Prepare
    engine = arrival_engine()
    enrol(engine, CONCURRENCY)
    # Execute
    orders = engine.dispatch(now=1.0)
    early = ready(engine, orders[: COHORT - 1], now=2.0)
    fills_before = len(engine.fills.fills)
    last = ready(engine, orders[COHORT - 1 : COHORT], now=3.0)
    # Assert: plain tasks, no fill until m are ready, then one fill of exactly those m
    assert len(orders) == CONCURRENCY and all(o.fill_id is None for o in orders)
    assert early == [] and fills_before == 0
    assert len(last) == COHORT and len({o.fill_id for o in last}) == 1
    assert {o.task_id for o in last} == {o.task_id for o in orders[:COHORT]}
    (fill,) = engine.fills.fills.values()
    assert fill.fill_id == last[0].fill_id and engine.tasks[last[0].task_id].fill_id == fill.fill_id


def test_devices_waiting_for_their_cohort_free_their_training_slot() -> None:
    # Prepare: the strategy's concurrency is all in flight
    engine = arrival_engine()
    enrol(engine, CONCURRENCY + 3)
    orders = engine.dispatch(now=1.0)
    full = engine.dispatch(now=1.5)
    # Execute: three say they have trained (no fill yet: 3 < m)
    ready(engine, orders[:3], now=2.0)
    more = engine.dispatch(now=2.0)
    # the other four of the cohort say so too: the fill opens, its members count again
    invited = ready(engine, orders[3:COHORT], now=3.0)
    after = engine.dispatch(now=3.0)
    # Assert: no room while all train; then three more devices train while the ready
    # three wait; once their fill runs, its members hold slots as any upload does
    assert len(orders) == CONCURRENCY and full == []
    assert len(more) == 3
    assert len(invited) == COHORT and engine.fills.waiting() == 0 and after == []


def test_a_fill_of_members_with_different_bases_merges_their_staleness_weighted_mean() -> None:
    # Prepare: a first fill merges (version 1) while a second cohort trains on version 0
    events: list[EngineEvent] = []
    engine = arrival_engine(events=events)
    enrol(engine, CONCURRENCY + COHORT)
    fleet = Fleet(engine)
    first_batch = engine.dispatch(now=1.0)
    invited = ready(engine, first_batch[:COHORT], now=2.0)
    fleet.join(invited)
    fleet.advertise()
    assert engine.version == 1
    fresh = engine.dispatch(now=fleet.now)  # devices dispatched at version 1
    stale = first_batch[COHORT:]  # still on version 0
    mixed = stale[: COHORT - 2] + fresh[:2]
    base = {n: v.astype(np.float64) for n, v in engine.params.items()}
    # Execute: the mixed cohort says it is ready; its members weight themselves
    second = ready(engine, mixed, now=fleet.now + 1.0)
    weights = {o.device_id: engine.secagg_params(o).weighting.staleness_weight for o in second}
    fleet.members.clear()
    fleet.join(second, weights=weights)
    fleet.advertise()
    # Assert: weights (1 + tau)^-0.5 in each task, the fill based on the current version,
    # and the merge equals the plaintext weighted mean applied with no extra damping
    assert {round(w, 12) for w in weights.values()} == {1.0, round(2**-0.5, 12)}
    assert sum(w == 1.0 for w in weights.values()) == 2
    opened = [e for e in events if e.kind is EventKind.FILL_OPENED]
    assert opened[-1].details["model_version"] == 1
    assert sorted(opened[-1].details["task_ids"]) == sorted(o.task_id for o in second)
    assert engine.version == 2
    survivors = list(fleet.members.values())
    expected = plaintext_merge(base, survivors, staleness=0)
    for name in SHAPES:
        np.testing.assert_allclose(engine.params[name], expected[name], atol=tolerance(survivors))


def test_the_ready_queue_is_saved_and_checked_on_load() -> None:
    # Prepare: four ready, none in a fill yet
    engine = arrival_engine()
    enrol(engine, CONCURRENCY)
    orders = engine.dispatch(now=1.0)
    ready(engine, orders[:4], now=2.0)
    state = json.loads(json.dumps(engine.state_dict()))
    twin = arrival_engine(seed=3)
    at_dispatch = make_engine(fills_in_flight=2)
    # Execute
    twin.load_state_dict(state, versions=versions_of(engine))
    invited = ready(twin, orders[4:COHORT], now=3.0)
    # Assert: the restored queue completes the cohort; a dispatch-bound engine refuses it
    assert list(twin.fills.ready) == [] and len(invited) == COHORT
    assert {o.task_id for o in invited} == {o.task_id for o in orders[:COHORT]}
    with pytest.raises(StateLoadError, match="ready tasks"):
        at_dispatch.load_state_dict(state, versions=versions_of(engine))


def test_a_ready_task_that_fails_leaves_the_queue() -> None:
    # Prepare
    engine = arrival_engine()
    enrol(engine, CONCURRENCY)
    orders = engine.dispatch(now=1.0)
    ready(engine, orders[:2], now=2.0)
    # Execute: its device went silent (the deadline sweep fails the task)
    engine.task_failed(orders[0].task_id, now=3.0, reason="deadline")
    invited = ready(engine, orders[2 : COHORT + 1], now=4.0)
    # Assert: the failed task is in no fill
    assert orders[0].task_id not in engine.fills.ready
    assert len(invited) == COHORT and orders[0].task_id not in {o.task_id for o in invited}


def test_ready_claims_that_do_not_match_a_task_in_flight_are_refused() -> None:
    # Prepare
    engine = arrival_engine()
    enrol(engine, CONCURRENCY)
    orders = engine.dispatch(now=1.0)
    ready(engine, orders[:1], now=2.0)
    mine, other = orders[1], orders[2]
    # Execute / Assert: unknown task, someone else's task, twice, and at dispatch binding
    with pytest.raises(CoordinatorError, match="not in flight"):
        engine.secagg_ready(task_id="t-nope", device_id=mine.device_id, now=3.0)
    with pytest.raises(CoordinatorError, match="not in flight"):
        engine.secagg_ready(task_id=other.task_id, device_id=mine.device_id, now=3.0)
    with pytest.raises(CoordinatorError, match="already"):
        engine.secagg_ready(task_id=orders[0].task_id, device_id=orders[0].device_id, now=3.0)
    bound = make_engine()
    enrol(bound, COHORT)
    member = bound.dispatch(now=1.0)[0]
    with pytest.raises(CoordinatorError, match="already in fill"):
        bound.secagg_ready(task_id=member.task_id, device_id=member.device_id, now=2.0)


def test_a_plain_update_for_an_arrival_task_is_refused() -> None:
    # Prepare: a device tries to send its trained update in the clear
    engine = arrival_engine()
    enrol(engine, CONCURRENCY)
    order = engine.dispatch(now=1.0)[0]
    delta = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    update = ClientUpdate(
        task_id=order.task_id,
        device_id=order.device_id,
        subset_id=order.subset.subset_id,
        base_version=order.model_version,
        delta=delta,
        num_samples=8,
    )
    # Execute
    outcome = engine.submit(update, now=2.0)
    # Assert
    assert not outcome.accepted and engine.version == 0


def test_a_training_budget_with_arrival_binding_is_refused_by_name() -> None:
    with pytest.raises(SecAggPolicyError, match="training_budget"):
        SecAggPolicy(buffer_size=4, training_budget=20, cohort_binding=CohortBinding.ARRIVAL)


def test_a_live_study_bound_at_arrival_is_a_422_over_http(settings, service, token) -> None:
    # Prepare: a real HTTP client; the live edge agent cannot say "trained" yet
    small = {"width": 4, "window": 64, "concurrency": 2, "buffer_size": 2, "strategy": "fedbuff"}
    secagg = {"enabled": True, "cohort_binding": "arrival"}
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings, service=service)) as client:
        # Execute
        answer = client.post(
            "/v1/studies",
            json={"spec": {**small, "secagg": secagg}, "study_id": "sa"},
            headers=auth,
        )
        listed = client.get("/v1/studies", headers=auth).json()
    # Assert: refused with what to change; nothing created
    assert answer.status_code == 422, answer.text
    assert "cohort_binding" in answer.text and "dispatch" in answer.text
    assert listed == []
