"""A simulated study under secure aggregation: real fills, real SecAgg clients, virtual time.

Whole-study equality with a plaintext run is not meaningful (the fills' extra
round trips change when every later task is dispatched), so the equivalence is
per fill: every merge the engine made from a fill's masked sum equals the
plaintext weighted merge of the same survivors' trained deltas, up to the
fixed-point quantisation (Prepare / Execute / Assert).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from fedward.coordinator.engine import EngineEvent, EventKind
from fedward.edge.secagg import device_weight, l2_clip
from fedward.protocol.messages import DeviceClass, SecAggPhase
from fedward.simulation.executor import ExecutorKind, TrainJob, make_executor
from fedward.simulation.scenario import PRESETS, Scenario, StrategyRun
from fedward.simulation.secagg import (
    PhaseCost,
    PrgCalibration,
    SpeedPrior,
    one_way_up_s,
    phase_frame,
    read_frame,
)
from fedward.simulation.study import Study

CALIBRATION = PrgCalibration(chacha_bytes_per_s=1e9, machine_flops_per_s=2e10)


def _scenario(**changes: Any) -> Scenario:
    base = PRESETS["tiny"].model_dump()
    return Scenario.model_validate({**base, "update_budget": 40, **changes})


class _Recording:
    """The serial executor, keeping every trained outcome by task id."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.outcomes = inner, {}

    def submit(self, job: TrainJob) -> Any:
        handle, outcomes = self.inner.submit(job), self.outcomes

        class _Handle:
            def result(self) -> Any:
                outcome = handle.result()
                outcomes[job.task.task_id] = outcome
                return outcome

        return _Handle()

    def close(self) -> None:
        self.inner.close()


def _run(scenario: Scenario, run: StrategyRun = StrategyRun.FTTE_SECAGG) -> dict[str, Any]:
    pool = make_executor(
        ExecutorKind.SERIAL, scenario.data_config(), scenario.study_spec(run).model_settings()
    )
    executor = _Recording(pool)
    holder: dict[str, Any] = {}
    params_at: dict[int, dict[str, np.ndarray]] = {}
    events: list[EngineEvent] = []

    def listen(event: EngineEvent) -> None:
        events.append(event)
        if event.kind is EventKind.MODEL_MERGED:
            engine = holder["study"].engine
            params_at[engine.version] = {n: v.copy() for n, v in engine.params.items()}

    try:
        study = Study(
            scenario, run, executor=executor, listeners=(listen,), calibration=CALIBRATION
        )
        holder["study"] = study
        params_at[0] = {n: v.copy() for n, v in study.engine.params.items()}
        frames: list[tuple[str, Any]] = []
        push = study.fills.push

        timed: list[tuple[float, str, Any]] = []

        def recorded(at: float, kind: str, payload: Any) -> None:
            frames.append((kind, payload))
            timed.append((at, kind, payload))
            push(at, kind, payload)

        study.fills.push = recorded
        result = study.run()
    finally:
        executor.close()
    return {
        "study": study,
        "result": result,
        "outcomes": executor.outcomes,
        "params_at": params_at,
        "events": events,
        "frames": frames,
        "timed": timed,
    }


@pytest.fixture(scope="module")
def clean() -> dict[str, Any]:
    # with the masked energy histogram: devices damp their own weights from its reference
    return _run(_scenario())


@pytest.fixture(scope="module")
def lossy() -> dict[str, Any]:
    # every class drops a third of its tasks part-way: drops land in every phase
    profiles = {c: {"dropout": 0.35} for c in DeviceClass}
    return _run(_scenario(profiles=profiles, update_budget=48, secagg_energy_bins=()))


def _expected_merge(
    run: dict[str, Any], event: EngineEvent
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The plaintext weighted merge of the fill's survivors (the device-side rules, in the
    clear), and the quantisation's bound on each coordinate's error (tensors it moved)."""
    study = run["study"]
    policy = study.spec.secagg_policy()
    members = [study.fills.members[t] for t in event.details["task_ids"]]
    parent = run["params_at"][event.details["parent"]]
    weighted, weights = None, 0.0
    for member in members:
        outcome = run["outcomes"][member.task_id]
        vector = member.participant.layout.flatten(outcome.delta).copy()
        energy = float(outcome.update_energy)
        weighting = member.participant.params.weighting
        if weighting.norm_bound is not None:
            factor = l2_clip(vector, bound=weighting.norm_bound)
            energy *= factor * factor
        w = device_weight(
            energy,
            reference=weighting.energy_reference,
            tolerance=weighting.energy_tolerance,
            beta=weighting.energy_beta,
        )
        w *= weighting.staleness_weight  # 1 unless cohorts form at arrival
        term = np.clip(w * vector, -policy.clip, policy.clip)  # the per-coordinate clip
        weighted = term if weighted is None else weighted + term
        weights += w
    step = study.engine.strategy.step_scale(staleness=event.details["staleness"])
    mean = members[0].participant.layout.unflatten(weighted / weights)
    merged = {n: parent[n] + step * mean[n] if n in mean else parent[n] for n in parent}
    # stochastic rounding moves each survivor's coordinate, and its weight, by < 1/scale:
    # the decoded sum S and weight W are each off by < k/scale for k survivors, so the
    # mean S/W is off by < (k/scale) * (1 + |S/W|) / W, times the server's step
    k = len(members) / policy.scale
    bound = {n: step * k * (1.0 + np.abs(mean[n])) / weights + 1e-6 for n in mean}
    return merged, bound


def _check_every_fill_merge(run: dict[str, Any]) -> int:
    merged = [e for e in run["events"] if e.kind is EventKind.FILL_MERGED]
    for event in merged:
        expected, bound = _expected_merge(run, event)
        got = run["params_at"][event.details["version"]]
        for name in expected:
            if name not in bound:  # not in the fill's subset: unchanged
                np.testing.assert_array_equal(got[name], expected[name])
                continue
            error = np.abs(got[name] - expected[name])
            assert np.all(error <= bound[name]), (name, float(np.max(error - bound[name])))
    return len(merged)


def test_every_fill_merges_the_plaintext_weighted_mean_of_its_survivors(clean) -> None:
    # Prepare / Execute: a tiny study, every merge a fill
    result = clean["result"]
    # Assert
    assert result.merges == result.secagg["fills_merged"] > 0
    assert clean["study"].engine.strategy.energy_reference is not None  # the histogram's
    assert _check_every_fill_merge(clean) == result.merges
    survivors = [e.details["survivors"] for e in clean["events"] if e.kind is EventKind.FILL_MERGED]
    assert result.updates == sum(len(s) for s in survivors)


def test_members_dropping_at_every_phase_leave_correct_merges_or_aborts(lossy) -> None:
    # Prepare
    result, events = lossy["result"], lossy["events"]
    threshold = lossy["study"].spec.secagg_policy().threshold
    merged = [e for e in events if e.kind is EventKind.FILL_MERGED]
    aborted = {e.details["fill_id"] for e in events if e.kind is EventKind.FILL_ABORTED}
    dropped = result.secagg["dropped_by_phase"]
    # Execute / Assert: devices went silent in more than one phase of their fills
    assert len([p for p, n in dropped.items() if n]) >= 2, dropped
    assert sum(len(e.details["dropouts"]) for e in merged) > 0
    # a merged fill held at least t survivors and equals their plaintext merge
    assert all(len(e.details["survivors"]) >= threshold for e in merged)
    assert _check_every_fill_merge(lossy) == len(merged)
    # an aborted fill released nothing: no merge carries its id
    assert not aborted & {e.details["fill_id"] for e in merged}


def test_counted_bytes_are_the_real_encodings_of_each_phase(clean) -> None:
    # Prepare
    result, frames = clean["result"], clean["frames"]
    study = clean["study"]
    up: dict[str, int] = defaultdict(int)
    down: dict[str, int] = defaultdict(int)
    # Execute: read every frame back and encode its message again
    for kind, payload in frames:
        if kind == "sa_up":
            task_id, frame = payload
        elif kind == "sa_down":
            task_id, _, frame = payload
        else:
            continue
        member = study.fills.members[task_id]
        bits = member.config.modulus_bits
        header, message = read_frame(frame, session=member.session, modulus_bits=bits)
        again = phase_frame(
            study_id=header.study_id,
            device_id=header.device_id,
            task_id=header.task_id,
            fill_id=header.fill_id,
            phase=header.phase,
            message=message,
            modulus_bits=bits,
        )
        assert again == frame
        if header.phase is SecAggPhase.MASKED_INPUT:  # binary words (b bits each), not hex
            packed = member.config.packed_bytes(member.session.total_words(member.config))
            assert packed < len(frame) < packed + 600
        (up if header.phase.uplink else down)[header.phase.value] += len(frame)
    # Assert: the study's per-phase bytes are exactly those frames, and its upload all of them
    assert dict(up) == result.secagg["bytes_up_by_phase"]
    assert dict(down) == result.secagg["bytes_down_by_phase"]
    assert result.upload_bytes == sum(up.values())
    assert set(up) == {"advertise", "shares", "masked_input", "unmask_response"}


def _masked_input_arrivals(run: dict[str, Any]) -> dict[str, tuple[float, int]]:
    """Task id -> (virtual time its masked input reached the coordinator, frame bytes)."""
    out: dict[str, tuple[float, int]] = {}
    for at, kind, payload in run["timed"]:
        if kind == "sa_up":
            member = run["study"].fills.members[payload[0]]
            header, _ = read_frame(
                payload[1], session=member.session, modulus_bits=member.config.modulus_bits
            )
            if header.phase is SecAggPhase.MASKED_INPUT:
                out[payload[0]] = (at, len(payload[1]))
    return out


def test_slot_times_are_where_each_merged_members_virtual_seconds_went(clean) -> None:
    # Prepare: the same times read back from the engine's events and the pushed events
    result, study = clean["result"], clean["study"]
    dispatched = {
        e.details["task_id"]: e.at for e in clean["events"] if e.kind is EventKind.TASK_DISPATCHED
    }
    trained = {p: at for at, kind, p in clean["timed"] if kind == "sa_trained"}
    arrived = {task_id: at for task_id, (at, _) in _masked_input_arrivals(clean).items()}
    delivered = {
        payload[0]: at
        for at, kind, payload in clean["timed"]
        if kind == "sa_down" and payload[1] is SecAggPhase.DELIVERY
    }
    merged = [e for e in clean["events"] if e.kind is EventKind.FILL_MERGED]
    # Execute: each merged member's seconds to its training's end, its input's arrival, the merge
    to_trained, to_input, slot, fills, waits = [], [], [], [], []
    for event in merged:
        for task_id in event.details["task_ids"]:
            start = dispatched[task_id]
            to_trained.append(trained[task_id] - start)
            to_input.append(arrived[task_id] - start)
            slot.append(event.at - start)
            waits.append(max(0.0, delivered[task_id] - trained[task_id]))
        fills.append(event.at - min(dispatched[t] for t in event.details["task_ids"]))
    # Assert: the study's figures are those, and each member's times come in that order
    costs = study.fills.costs
    assert sorted(costs.trained_s) == pytest.approx(sorted(to_trained))
    assert sorted(costs.input_s) == pytest.approx(sorted(to_input))
    assert sorted(costs.slot_s) == pytest.approx(sorted(slot))
    assert len(costs.fill_s) == len(merged) == result.secagg["fills_merged"]
    assert all(0 < a < b < c for a, b, c in zip(to_trained, to_input, slot, strict=True))
    share = sum(to_trained) / sum(slot)
    assert result.secagg["slot_share_training"] == pytest.approx(share)
    assert 0 < share < result.secagg["slot_share_to_input"] < 1
    assert result.secagg["member_slot_s_median"] == pytest.approx(float(np.median(slot)))
    assert sorted(costs.fill_s) == pytest.approx(sorted(fills))
    assert sorted(costs.delivery_wait_s) == pytest.approx(sorted(waits))
    wait_share = result.secagg["slot_share_delivery_wait"]
    assert wait_share == pytest.approx(sum(waits) / sum(slot))
    assert 0 <= wait_share < result.secagg["slot_share_to_input"] - share


def test_a_free_protocol_charges_only_the_masked_inputs_upload_and_merges_the_same(
    clean,
) -> None:
    # Prepare: the same tiny study with the protocol's own time taken away (an ablation)
    free = _run(_scenario(secagg_phase_cost=PhaseCost.FREE))
    study = free["study"]
    trained = {p: at for at, kind, p in free["timed"] if kind == "sa_trained"}
    # Execute: what each member waited between its training's end and its input's arrival
    arrivals = _masked_input_arrivals(free)
    spent = {
        task_id: (at - trained[task_id], nbytes)
        for task_id, (at, nbytes) in arrivals.items()
        if task_id in trained
    }
    modelled = _masked_input_arrivals(clean)
    modelled_trained = {p: at for at, kind, p in clean["timed"] if kind == "sa_trained"}
    # Assert: every merge is still the plaintext weighted mean of its survivors; an input
    # costs only its upload (no masking time, no wait for shares: keys go at dispatch),
    # where the modelled row also charged masking and the share delivery
    assert _check_every_fill_merge(free) == free["result"].merges > 0
    assert spent
    for task_id, (seconds, nbytes) in spent.items():
        device = study.fills.members[task_id].device
        assert seconds == pytest.approx(one_way_up_s(device, nbytes), rel=1e-9, abs=1e-9)
    assert free["result"].secagg["slot_share_delivery_wait"] == 0
    assert free["result"].secagg["device_prg_s_median"] is None
    assert any(
        at - modelled_trained[t] > one_way_up_s(clean["study"].fills.members[t].device, n) + 1e-9
        for t, (at, n) in modelled.items()
        if t in modelled_trained
    )


def test_at_grace_zero_a_fill_merges_when_its_threshold_is_in() -> None:
    # Prepare: no protocol time, so a fill closed at its threshold merges at that instant
    run = _run(_scenario(secagg_phase_cost=PhaseCost.FREE, secagg_straggler_grace=0.0))
    arrivals = _masked_input_arrivals(run)
    opened = {
        e.details["fill_id"]: e.details for e in run["events"] if e.kind is EventKind.FILL_OPENED
    }
    merged = [e for e in run["events"] if e.kind is EventKind.FILL_MERGED]
    # Execute: each merged fill's threshold-th masked input, among its members' arrivals
    lags, extra = [], []
    for event in merged:
        fill = opened[event.details["fill_id"]]
        times = sorted(arrivals[t][0] for t in fill["task_ids"] if t in arrivals)
        threshold = fill["threshold"]
        lags.append(event.at - times[threshold - 1])
        extra.append(len(event.details["survivors"]) - threshold)
    # Assert: merged just past it (the timer tick), not at a later tick or its last member
    assert merged and run["result"].merges == len(merged)
    assert max(lags) < 1e-3
    assert sum(extra) <= len(merged) // 4  # only inputs landing at that same instant join
    assert _check_every_fill_merge(run) == len(merged)


def _first_cohort(run: dict[str, Any]) -> list[str]:
    opened = next(e for e in run["events"] if e.kind is EventKind.FILL_OPENED)
    return list(opened.details["cohort"])


def test_an_oracle_speed_prior_groups_even_the_first_cohorts_by_task_time(clean) -> None:
    # Prepare: every device's modelled task time, as the ablation primes it before any task
    scenario = _scenario(secagg_speed_prior=SpeedPrior.ORACLE)
    pool = make_executor(
        ExecutorKind.SERIAL,
        scenario.data_config(),
        scenario.study_spec(StrategyRun.FTTE_SECAGG).model_settings(),
    )
    try:
        primed = Study(scenario, StrategyRun.FTTE_SECAGG, executor=pool, calibration=CALIBRATION)
        prior = {i: d.task_seconds for i, d in primed.engine.devices.items()}
    finally:
        pool.close()
    # Execute: the first cohort of the oracle row and of the measured row (class only)
    oracle = _run(scenario)
    spread = {
        name: max(prior[d] for d in cohort) / min(prior[d] for d in cohort)
        for name, cohort in (("oracle", _first_cohort(oracle)), ("measured", _first_cohort(clean)))
    }
    # Assert: every device had a time before its first task, and the first oracle cohort
    # is closer in task time than the class-only one
    assert all(seconds is not None and seconds > 0 for seconds in prior.values())
    assert spread["oracle"] < spread["measured"]


def test_distributed_dp_row_keeps_every_device_within_the_dp_budget() -> None:
    # Prepare: a budget of about two fills per device, so the cap binds within the study
    scenario = _scenario(dp_epsilon=2.5, ddp_noise_multiplier=3.0, update_budget=24)
    # Execute
    run = _run(scenario, StrategyRun.FTTE_SECAGG_DDP)
    study, result = run["study"], run["result"]
    ddp = study.engine.fills.policy.ddp
    cap = study.ddp_fill_cap
    # Assert: the cap is the last fill count within the budget, nobody joined more,
    # and every device's epsilon over the fills it survived is within the budget
    d = study._fill_length()
    assert ddp.epsilon(d, fills=cap, delta=scenario.dp_delta) <= scenario.dp_epsilon
    assert ddp.epsilon(d, fills=cap + 1, delta=scenario.dp_delta) > scenario.dp_epsilon
    assert max(study.fills_joined.values()) == cap  # it bound, and nobody went past it
    assert 0 < result.privacy["epsilon_max"] <= scenario.dp_epsilon
    assert result.merges > 0 and result.secagg["fills_merged"] == result.merges


@pytest.fixture(scope="module")
def arrival() -> dict[str, Any]:
    # cohorts bound at arrival: devices train plain tasks, the first m ready form a fill
    return _run(_scenario(secagg_cohort_binding="arrival"))


def test_fills_formed_at_arrival_merge_the_staleness_weighted_plaintext_mean(arrival) -> None:
    # Prepare / Execute: a tiny study whose cohorts form from devices that have trained
    result, study = arrival["result"], arrival["study"]
    members = study.fills.members.values()
    weights = {m.participant.params.weighting.staleness_weight for m in members}
    # Assert: every merge is a fill, equal to the plaintext merge with each member's
    # public staleness weight; some members were stale when their fill opened
    assert result.merges == result.secagg["fills_merged"] > 0
    assert _check_every_fill_merge(arrival) == result.merges
    assert result.secagg["ready_frames"] >= result.updates
    assert any(w < 1.0 for w in weights) and max(weights) == 1.0
