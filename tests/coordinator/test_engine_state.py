"""Engine.state_dict / load_state_dict: a round trip, the checks on load, the
envelopes inside (strategy, wrapper, buffer) and the store's snapshot of them."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest

from fedward.coordinator.engine import ENGINE_STATE_FORMAT, DeviceState, Engine
from fedward.coordinator.errors import StateLoadError
from fedward.coordinator.store.snapshot import engine_snapshot, restore_engine
from fedward.coordinator.strategies import ClientUpdate, NormBounded, StrategyName
from fedward.coordinator.strategies.base import STRATEGY_KIND
from fedward.coordinator.strategies.wrapper import WRAPPER_KIND
from fedward.coordinator.study_spec import build_engine
from tests.coordinator.engine_helpers import update_for


def fedavg_engine(spec, *, seed: int = 3) -> Engine:
    return build_engine(
        spec.model_copy(update={"strategy": StrategyName.FEDAVG}), rng=random.Random(seed)
    )


def open_round(spec) -> Engine:
    """A FedAvg engine whose round of two has one update buffered, one in flight."""
    engine = fedavg_engine(spec)
    for i in range(3):
        engine.enrol(f"dev-{i}", device_class="phone", memory_bytes=1 << 22, now=0.0)
    first, _ = engine.dispatch(now=1.0)
    assert engine.submit(update_for(engine, first), now=2.0).accepted
    return engine


def strategy_payload(state: dict) -> dict:
    """The strategy's payload inside an engine state (through any wrappers)."""
    node = state["payload"]["strategy"]
    while node["kind"] == WRAPPER_KIND:
        node = node["payload"]["inner"]
    assert node["kind"] == STRATEGY_KIND
    return node["payload"]


def buffered(state: dict) -> list[dict]:
    return strategy_payload(state)["buffer"]["payload"]["updates"]


def versions_of(engine: Engine) -> dict[int, dict[str, np.ndarray]]:
    return {v: engine.base_params(v) for v in engine.live_versions()}


def test_an_open_round_survives_state_dict_and_load(spec) -> None:
    # Prepare
    engine = open_round(spec)
    state = engine.state_dict()
    twin = fedavg_engine(spec, seed=99)
    # Execute
    twin.load_state_dict(state, versions=versions_of(engine))
    (left,) = engine.tasks.values()
    merges = [e.submit(update_for(e, left), now=3.0).merge for e in (engine, twin)]
    # Assert: no tensors in the state; the round closes the same way on both
    assert "params" not in state["payload"] and state["format_version"] == ENGINE_STATE_FORMAT
    first = buffered(state)[0]["task_id"]
    assert strategy_payload(state)["round"] == {
        "number": 1,
        "cohort": sorted([first, left.task_id]),
        "dropped": [],
    }
    assert all(m is not None for m in merges)
    assert all(np.array_equal(merges[0].params[n], merges[1].params[n]) for n in engine.params)
    assert twin.state_dict().keys() == engine.state_dict().keys()
    assert twin.rng.getstate() == engine.rng.getstate()


def _broken(state: dict, case: str) -> dict:
    whole = copy.deepcopy(state)
    state = whole["payload"]
    busy = next(d for d in state["devices"] if d["state"] == DeviceState.BUSY.value)
    idle = next(d for d in state["devices"] if d["state"] == DeviceState.IDLE.value)
    if case == "format":
        whole["format_version"] = 99
    elif case == "kind":
        whole["kind"] = "fedward.coordinator.something_else"
    elif case == "task_on_unknown_device":
        state["tasks"][0]["device_id"] = "ghost"
    elif case == "task_on_idle_device":
        busy["state"] = DeviceState.IDLE.value
    elif case == "busy_without_task":
        idle["state"] = DeviceState.BUSY.value
    elif case == "two_tasks_one_device":
        state["tasks"].append({**state["tasks"][0], "task_id": "t9999999"})
    elif case == "task_outside_cohort":
        saved_round = strategy_payload(whole)["round"]
        saved_round["cohort"] = [
            t for t in saved_round["cohort"] if t != state["tasks"][0]["task_id"]
        ]
    elif case == "cohort_member_nowhere":  # the round could never close
        strategy_payload(whole)["round"]["cohort"].append("t7777777")
    elif case == "open_round_numbered_0":
        strategy_payload(whole)["round"]["number"] = 0
    elif case == "buffer_kind":
        strategy_payload(whole)["buffer"]["kind"] = "fedward.coordinator.strategy"
    elif case == "duplicate_device":
        state["devices"].append(dict(idle))
    elif case == "unknown_tensor":
        state["tasks"][0]["download"] = ["no.such.tensor"]
    elif case == "missing_live_version":
        state["live_versions"] = [0, 5]
    elif case == "bad_state":
        idle["state"] = "sleepy"
    return whole


@pytest.mark.parametrize(
    "case",
    [
        "format",
        "kind",
        "task_on_unknown_device",
        "task_on_idle_device",
        "busy_without_task",
        "two_tasks_one_device",
        "task_outside_cohort",
        "open_round_numbered_0",
        "cohort_member_nowhere",
        "buffer_kind",
        "duplicate_device",
        "unknown_tensor",
        "missing_live_version",
        "bad_state",
    ],
)
def test_load_refuses_a_state_the_engine_could_not_have_written(spec, case) -> None:
    # Prepare
    engine = open_round(spec)
    state = _broken(engine.state_dict(), case)
    # Execute / Assert
    with pytest.raises(StateLoadError):
        fedavg_engine(spec).load_state_dict(state, versions=versions_of(engine))


def test_a_failed_load_leaves_the_engine_as_it_was(spec) -> None:
    # Prepare: an engine with its own open round; a state whose round cannot close
    engine = open_round(spec)
    bad = _broken(open_round(spec).state_dict(), "cohort_member_nowhere")
    before = engine.state_dict()
    # Execute
    with pytest.raises(StateLoadError):
        engine.load_state_dict(bad, versions=versions_of(engine))
    # Assert: nothing half-restored; the engine goes on as before
    after = engine.state_dict()
    assert json.dumps(after["payload"]["devices"]) == json.dumps(before["payload"]["devices"])
    assert strategy_payload(after)["round"] == strategy_payload(before)["round"]
    (left,) = engine.tasks.values()
    assert engine.submit(update_for(engine, left), now=3.0).merge is not None


def test_load_refuses_tensors_of_another_shape(spec) -> None:
    # Prepare
    engine = open_round(spec)
    versions = versions_of(engine)
    name = next(iter(versions[0]))
    versions[0] = {**versions[0], name: np.zeros((1, 2, 3), np.float32)}
    # Execute / Assert
    with pytest.raises(StateLoadError, match="does not match"):
        fedavg_engine(spec).load_state_dict(engine.state_dict(), versions=versions)


@pytest.mark.parametrize("old_format", [1, 2])
def test_a_snapshot_from_before_the_envelope_is_refused_clearly(spec, old_format) -> None:
    # Prepare: the flat layout of engine formats 1 and 2
    engine = open_round(spec)
    flat = {"format": old_format, **engine.state_dict()["payload"]}
    # Execute / Assert
    with pytest.raises(StateLoadError, match="older fedward"):
        restore_engine(
            fedavg_engine(spec),
            flat,
            load_params=engine.base_params,
            load_delta=lambda sha: {},
        )


def test_a_norm_bounded_fedavg_runs_rounds_and_bounds_the_outlier(spec) -> None:
    # Prepare: FedAvg wrapped in NormBounded (the wrapper drives rounds through the
    # hooks); a cohort of three, so the median of the first two judges the third
    bounded = spec.model_copy(
        update={"strategy": StrategyName.FEDAVG, "norm_bound_tolerance": 10.0, "concurrency": 3}
    )
    engine = build_engine(bounded, rng=random.Random(3))
    for i in range(3):
        engine.enrol(f"dev-{i}", device_class="phone", memory_bytes=1 << 22, now=0.0)
    cohort = engine.dispatch(now=1.0)
    # Execute: a second dispatch while the round is open issues nothing; one huge update
    again = engine.dispatch(now=1.5)
    outcomes = []
    for i, order in enumerate(cohort):
        update = update_for(engine, order)
        if i == len(cohort) - 1:
            update = ClientUpdate(
                **{**update.__dict__, "delta": {n: v * 1e3 for n, v in update.delta.items()}}
            )
        outcomes.append(engine.submit(update, now=2.0 + i))
    # Assert
    assert isinstance(engine.strategy, NormBounded)
    assert again == [] and {o.round_id for o in cohort} == {1}
    assert all(o.accepted for o in outcomes) and outcomes[-1].merge is not None
    assert engine.strategy.clipped == 1 and engine.version == 1
    assert {o.round_id for o in engine.dispatch(now=9.0)} == {2}


def test_a_norm_bounded_engine_saves_its_window_with_the_inner_buffer(spec) -> None:
    # Prepare: FedBuff wrapped in NormBounded, one update buffered
    bounded = spec.model_copy(
        update={"strategy": StrategyName.FEDBUFF, "norm_bound_tolerance": 10.0, "buffer_size": 4}
    )
    engine = build_engine(bounded, rng=random.Random(3))
    for i in range(2):
        engine.enrol(f"dev-{i}", device_class="phone", memory_bytes=1 << 22, now=0.0)
    first, second = engine.dispatch(now=1.0)
    assert engine.submit(update_for(engine, first), now=2.0).accepted
    # Execute: through the store's snapshot (JSON, buffered deltas by reference)
    deltas: dict[str, dict] = {}

    def delta_ref(task_id: str, delta: dict) -> str:
        deltas[task_id] = delta
        return task_id

    state = json.loads(json.dumps(engine_snapshot(engine, delta_ref=delta_ref)))
    twin = build_engine(bounded, rng=random.Random(4))
    kept = versions_of(engine)
    restore_engine(twin, state, load_params=kept.__getitem__, load_delta=deltas.__getitem__)
    # Assert
    assert isinstance(twin.strategy, NormBounded)
    wrapper = state["payload"]["strategy"]
    assert wrapper["kind"] == WRAPPER_KIND and wrapper["payload"]["wrapper"] == "norm_bounded"
    assert wrapper["payload"]["own"]["energies"] == [pytest.approx(1e-4)]
    assert buffered(state)[0]["task_id"] == first.task_id
    assert "delta" not in buffered(state)[0] and buffered(state)[0]["delta_sha256"]
    assert twin.strategy.pending == 1


def test_a_stored_snapshot_from_before_fills_restores_through_the_store(spec) -> None:
    # Prepare: a FedBuff snapshot written as format 3 (no fills, no task fill ids)
    buffered_spec = spec.model_copy(update={"strategy": StrategyName.FEDBUFF, "buffer_size": 4})
    engine = build_engine(buffered_spec, rng=random.Random(3))
    for i in range(2):
        engine.enrol(f"dev-{i}", device_class="phone", memory_bytes=1 << 22, now=0.0)
    first, _ = engine.dispatch(now=1.0)
    assert engine.submit(update_for(engine, first), now=2.0).accepted
    deltas: dict[str, dict] = {}

    def delta_ref(task_id: str, delta: dict) -> str:
        deltas[task_id] = delta
        return task_id

    state = json.loads(json.dumps(engine_snapshot(engine, delta_ref=delta_ref)))
    state["format_version"] = 3
    del state["payload"]["fills"]
    for task in state["payload"]["tasks"]:
        del task["fill_id"]
    twin = build_engine(buffered_spec, rng=random.Random(4))
    # Execute
    restore_engine(
        twin, state, load_params=versions_of(engine).__getitem__, load_delta=deltas.__getitem__
    )
    # Assert
    assert twin.strategy.pending == 1 and set(twin.tasks) == set(engine.tasks)
    assert all(t.fill_id is None for t in twin.tasks.values())
