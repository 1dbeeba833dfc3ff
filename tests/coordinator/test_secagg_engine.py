"""The engine under a SecAggPolicy, driven by real SecAggClient devices (issue 11).

Each test dispatches whole cohorts, runs every phase of the fill through
``Engine.secagg_receive`` / ``secagg_tick`` with real ``fedward.privacy.secagg``
clients as the devices, and compares the merged model with the plaintext
weighted merge of the survivors' updates (up to fixed-point quantisation).
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pytest

from fedward.coordinator.engine import DeviceState, Engine, EngineEvent, EventKind, TaskOrder
from fedward.coordinator.engine.planning import SubsetMode, SubsetPlanner
from fedward.coordinator.errors import StateLoadError
from fedward.coordinator.secagg import FillStep, SecAggPolicy, energy_counts
from fedward.coordinator.strategies import FTTE, FedBuff, SecureAggregated
from fedward.privacy.secagg import SecAggClient, SecAggConfig, SecAggSession
from fedward.privacy.secagg import ddp as distributed
from fedward.privacy.secagg.ddp import DistributedDp
from fedward.privacy.secagg.layout import VectorLayout
from fedward.protocol.messages import SecAggPhase
from fedward.tinytrain.subsets import SubsetLadder

SHAPES = {"layer.weight": (4, 3), "layer.bias": (3,)}
BUFFER = 4
# m = ceil(4 / (1 - 0.34)) = 7 members, t = max(floor((7 + 1)/2) + 1, 4) = 5: up to 2 dropouts
DROPOUT = 0.34
COHORT, THRESHOLD = 7, 5
TIMEOUT = 30.0
SCALE = float(1 << 16)
UPLINK = (
    SecAggPhase.ADVERTISE,
    SecAggPhase.SHARES,
    SecAggPhase.MASKED_INPUT,
    SecAggPhase.UNMASK_RESPONSE,
)


def make_engine(
    *,
    fills_in_flight: int = 1,
    energy_bins: tuple[float, ...] = (),
    strategy: str = "fedbuff",
    events: list[EngineEvent] | None = None,
    seed: int = 0,
    ddp: DistributedDp | None = None,
    identity_keys=None,
    masked_input_timeout_s: float | None = None,
    straggler_grace: float | None = None,
) -> Engine:
    params = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    ladder = SubsetLadder({"layer": list(SHAPES)})
    planner = SubsetPlanner(ladder, footprint_bytes=lambda s: 1, mode=SubsetMode.FULL)
    inner = (
        FTTE(shapes=SHAPES, buffer_size=BUFFER, energy_beta=1.0, energy_tolerance=2.0)
        if strategy == "ftte"
        else FedBuff(shapes=SHAPES, buffer_size=BUFFER)
    )
    policy = SecAggPolicy(
        buffer_size=BUFFER,
        expected_dropout=DROPOUT,
        scale=SCALE,
        clip=4.0,
        phase_timeout_s=TIMEOUT,
        energy_bins=energy_bins,
        fills_in_flight=fills_in_flight,
        ddp=ddp,
        masked_input_timeout_s=masked_input_timeout_s,
        straggler_grace=straggler_grace,
    )
    engine = Engine(
        params=params,
        strategy=inner,
        planner=planner,
        concurrency=1,
        rng=random.Random(seed),
        listeners=(events.append,) if events is not None else (),
        secagg=policy,
        random_bytes=os.urandom,
        secagg_identity_keys=identity_keys,
    )
    return engine


def enrol(engine: Engine, count: int, *, device_class: str = "phone", start: int = 0) -> None:
    for i in range(start, start + count):
        engine.enrol(f"dev-{i:02d}", device_class=device_class, memory_bytes=1 << 20, now=0.0)


@dataclass
class Member:
    order: TaskOrder
    client: SecAggClient
    update: np.ndarray  # what it masks (under DDP: the prepared, rotated, noised vector)
    weight: float
    counts: tuple[int, ...]
    raw: np.ndarray | None = None  # its trained update before DDP
    last: dict[SecAggPhase, object] = field(default_factory=dict)  # downlink by phase
    sent: dict[SecAggPhase, object] = field(default_factory=dict)  # uplink by phase


class Fleet:
    """Real SecAgg clients answering an engine's fill messages; ``silent[d] = phase``
    makes device d send nothing from that phase on."""

    def __init__(self, engine: Engine, *, seed: int = 1) -> None:
        self.engine = engine
        self.members: dict[str, Member] = {}  # task id -> member
        self.silent: dict[str, SecAggPhase] = {}
        self.deaf: set[str] = set()  # devices that never get their ABORT (offline then)
        self.merges: list = []
        self.aborted: list[str] = []
        self.outbound_phases: list[SecAggPhase] = []
        self.now = 1.0
        self._rng = np.random.default_rng(seed)  # update values only (test data), never masks

    def join(
        self,
        orders: list[TaskOrder],
        *,
        weights: Mapping[str, float] | None = None,
        spread: Mapping[str, float] | None = None,
    ) -> None:
        for order in orders:
            params = self.engine.secagg_params(order)
            config = SecAggConfig.from_plain(params.config)
            session = SecAggSession.from_plain(params.session)
            client = SecAggClient(config=config, session=session, device_id=order.device_id)
            std = (spread or {}).get(order.device_id, 0.3)
            d = VectorLayout.for_subset(SHAPES, order.subset.names).vector_length
            raw = self._rng.normal(0.0, std, d)
            counts = energy_counts(float(np.mean(raw**2)), params.energy_bins)
            weight = (weights or {}).get(order.device_id, 1.0)
            update = raw
            if params.ddp is not None:  # the device's own DDP step, as the edge runs it
                ddp = DistributedDp.from_plain(params.ddp)
                update = distributed.prepare(
                    raw, ddp=ddp, session_seed=session.session_id, random_bytes=os.urandom
                )
            self.members[order.task_id] = Member(order, client, update, weight, counts, raw=raw)

    def speaks(self, member: Member, phase: SecAggPhase) -> bool:
        stop = self.silent.get(member.order.device_id)
        return stop is None or UPLINK.index(phase) < UPLINK.index(stop)

    def advertise(self, fill_id: str | None = None) -> None:
        for member in list(self.members.values()):
            if fill_id is not None and member.order.fill_id != fill_id:
                continue
            if self.speaks(member, SecAggPhase.ADVERTISE):
                self.send(member, SecAggPhase.ADVERTISE, member.client.advertise())

    def send(self, member: Member, phase: SecAggPhase, message: object) -> FillStep:
        member.sent[phase] = message
        step = self.engine.secagg_receive(
            device_id=member.order.device_id,
            task_id=member.order.task_id,
            phase=phase,
            message=message,
            now=self.now,
        )
        self.handle(step)
        return step

    def tick(self, seconds: float) -> FillStep:
        self.now += seconds
        step = self.engine.secagg_tick(now=self.now)
        self.handle(step)
        return step

    def handle(self, step: FillStep) -> None:
        self.merges.extend(step.merges)
        self.aborted.extend(step.aborted)
        for out in step.outbound:
            self.outbound_phases.append(out.phase)
            member = self.members[out.task_id]
            member.last[out.phase] = out.message
            client = member.client
            if out.phase is SecAggPhase.ABORT:
                if out.device_id not in self.deaf:
                    client.abort()
                continue
            if out.phase is SecAggPhase.ROSTER and self.speaks(member, SecAggPhase.SHARES):
                self.send(member, SecAggPhase.SHARES, client.share_keys(out.message))
            elif out.phase is SecAggPhase.DELIVERY and self.speaks(
                member, SecAggPhase.MASKED_INPUT
            ):
                masked = client.mask_input(
                    out.message, update=member.update, weight=member.weight, counts=member.counts
                )
                self.send(member, SecAggPhase.MASKED_INPUT, masked)
            elif out.phase is SecAggPhase.UNMASK_REQUEST and self.speaks(
                member, SecAggPhase.UNMASK_RESPONSE
            ):
                self.send(member, SecAggPhase.UNMASK_RESPONSE, client.unmask(out.message))

    def run(self) -> None:
        """Advertise, then let the phase timers close whatever waits on silent members."""
        self.advertise()
        for _ in range(4):
            self.tick(TIMEOUT + 1.0)

    def survivors_of(self, fill_id: str, *, dropped_before_masked: set[str]) -> list[Member]:
        return [
            m
            for m in self.members.values()
            if m.order.fill_id == fill_id and m.order.device_id not in dropped_before_masked
        ]


def plaintext_merge(
    base: Mapping[str, np.ndarray], survivors: list[Member], *, staleness: int = 0
) -> dict[str, np.ndarray]:
    """What FedBuff-under-SecAgg must produce: base + (1+tau)^-0.5 * sum w D / sum w."""
    layout = VectorLayout.for_subset(SHAPES, SHAPES)
    total = sum(m.weight * m.update for m in survivors)
    mean = layout.unflatten(total / sum(m.weight for m in survivors))
    scale = (1.0 + staleness) ** -0.5
    return {n: base[n] + scale * mean[n].astype(np.float64) for n in base}


def tolerance(survivors: list[Member]) -> float:
    """Stochastic rounding moves each encoded coordinate by < 1/scale per device."""
    return 4.0 * len(survivors) / (SCALE * sum(m.weight for m in survivors))


def open_fill(engine: Engine, fleet: Fleet, **join) -> list[TaskOrder]:
    orders = engine.dispatch(now=fleet.now)
    fleet.join(orders, **join)
    return orders


WEIGHTS = {f"dev-{i:02d}": w for i, w in enumerate([1.0, 0.5, 0.75, 0.25, 1.0, 0.6, 0.9])}


@pytest.mark.parametrize("phase", UPLINK)
@pytest.mark.parametrize("dropouts", [0, 1, COHORT - THRESHOLD])
def test_the_merged_model_is_the_plaintext_weighted_merge_with_dropouts(
    phase: SecAggPhase, dropouts: int
) -> None:
    # Prepare: one cohort of 7, `dropouts` of them silent from `phase` on
    events: list[EngineEvent] = []
    engine = make_engine(events=events)
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet, weights=WEIGHTS)
    silent = sorted(o.device_id for o in orders)[:dropouts]
    fleet.silent = dict.fromkeys(silent, phase)
    base = {n: v.astype(np.float64) for n, v in engine.params.items()}
    # Execute
    fleet.run()
    # Assert: one merge of the survivors' weighted mean (silent at unmask: still in)
    out_of_sum = set(silent) if phase is not SecAggPhase.UNMASK_RESPONSE else set()
    survivors = fleet.survivors_of(orders[0].fill_id, dropped_before_masked=out_of_sum)
    assert len(fleet.merges) == 1 and engine.version == 1
    merge = fleet.merges[0]
    assert set(merge.device_ids) == {m.order.device_id for m in survivors}
    expected = plaintext_merge(base, survivors)
    for name in SHAPES:
        np.testing.assert_allclose(engine.params[name], expected[name], atol=tolerance(survivors))
    assert not engine.tasks and engine.fills is not None and not engine.fills.fills
    assert all(d.state is DeviceState.IDLE for d in engine.devices.values())
    failed = {e.details["device_id"] for e in events if e.kind is EventKind.TASK_FAILED}
    assert failed == out_of_sum
    merged = [e for e in events if e.kind is EventKind.FILL_MERGED]
    assert len(merged) == 1 and sorted(merged[0].details["dropouts"]) == sorted(out_of_sum)


@pytest.mark.parametrize("phase", UPLINK[:3])
def test_below_threshold_the_fill_aborts_loudly_and_nothing_is_released_or_merged(
    phase: SecAggPhase,
) -> None:
    # Prepare: 3 of 7 silent leaves 4 < t = 5
    events: list[EngineEvent] = []
    engine = make_engine(events=events)
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    fleet.silent = dict.fromkeys(sorted(o.device_id for o in orders)[:3], phase)
    before = {n: v.copy() for n, v in engine.params.items()}
    # Execute
    fleet.run()
    # Assert: aborted, no unmask request ever sent, model untouched, everyone free again
    aborted = [e for e in events if e.kind is EventKind.FILL_ABORTED]
    assert fleet.aborted == [orders[0].fill_id] and len(aborted) == 1
    assert aborted[0].details["reason"] == f"too_few_{phase.value}"
    assert aborted[0].details["phase"] == phase.value
    assert SecAggPhase.UNMASK_REQUEST not in fleet.outbound_phases
    assert not fleet.merges and engine.version == 0
    assert all(np.array_equal(engine.params[n], before[n]) for n in SHAPES)
    assert not engine.tasks and engine.stats.failed == COHORT
    assert all(d.state is DeviceState.IDLE for d in engine.devices.values())
    assert engine.dispatch(now=fleet.now + 100)  # the devices form a new fill


def test_a_member_heard_from_after_being_declared_dropped_is_refused_and_named() -> None:
    # Prepare: one member silent at SHARES (dropped when the timer fires), one slow to
    # mask, so the fill is still open when the dropped one speaks again
    events: list[EngineEvent] = []
    engine = make_engine(events=events)
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    late, slow = sorted(o.device_id for o in orders)[:2]
    fleet.silent = {late: SecAggPhase.SHARES, slow: SecAggPhase.MASKED_INPUT}
    fleet.deaf = {late}  # it never got its ABORT
    fleet.advertise()
    fleet.tick(TIMEOUT + 1.0)  # SHARES closes without it
    member = next(m for m in fleet.members.values() if m.order.device_id == late)
    bundle = member.client.share_keys(member.last[SecAggPhase.ROSTER])
    # Execute: it answers now, and once more after the fill merged
    step = fleet.send(member, SecAggPhase.SHARES, bundle)
    (fill,) = engine.fills.fills.values()
    refused_in_fill = fill.refused
    fleet.tick(TIMEOUT + 1.0)
    fleet.send(member, SecAggPhase.SHARES, bundle)
    # Assert: refused both times, counted, each an event naming it; the fill merged without it
    refused = [e for e in events if e.kind is EventKind.FILL_REFUSED]
    assert [e.details["device_id"] for e in refused] == [late, late]
    assert [e.details["reason"] for e in refused] == ["declared_dropped", "declared_dropped"]
    assert [e.details["dropped_in"] for e in refused] == ["shares", "shares"]
    assert step.outbound == () and step.merge is None and refused_in_fill == 1
    assert engine.fills.refused == 2
    assert len(fleet.merges) == 1 and late not in fleet.merges[0].device_ids
    assert len(fleet.merges[0].device_ids) == COHORT - 2


def test_two_fills_in_flight_merge_in_completion_order() -> None:
    # Prepare: 14 devices, two cohorts open at once on version 0
    engine = make_engine(fills_in_flight=2)
    enrol(engine, 2 * COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    fills = sorted({o.fill_id for o in orders})
    base = {n: v.astype(np.float64) for n, v in engine.params.items()}
    # Execute: the second fill runs first
    fleet.advertise(fills[1])
    fleet.advertise(fills[0])
    # Assert: fill 2 merged as version 1 (staleness 0), fill 1 as version 2 (staleness 1)
    assert len(orders) == 2 * COHORT and len(set(o.device_id for o in orders)) == 2 * COHORT
    assert [
        m.task_ids[0] in {o.task_id for o in orders if o.fill_id == fills[1]} for m in fleet.merges
    ] == [True, False]
    assert fleet.merges[1].staleness == (1,) * COHORT and engine.version == 2
    second = fleet.survivors_of(fills[1], dropped_before_masked=set())
    first = fleet.survivors_of(fills[0], dropped_before_masked=set())
    after_second = plaintext_merge(base, second)
    expected = plaintext_merge(after_second, first, staleness=1)
    for name in SHAPES:
        np.testing.assert_allclose(
            engine.params[name], expected[name], atol=tolerance(second) + tolerance(first)
        )


def test_cohorts_share_a_device_class_and_a_device_is_in_one_fill_at_a_time() -> None:
    # Prepare: 7 phones and 7 watches, room for 2 fills
    engine = make_engine(fills_in_flight=2)
    enrol(engine, COHORT, device_class="phone")
    enrol(engine, COHORT, device_class="watch", start=COHORT)
    # Execute
    first = engine.dispatch(now=1.0)
    again = engine.dispatch(now=2.0)
    # Assert
    by_fill: dict[str, set[str]] = {}
    for order in first:
        by_fill.setdefault(order.fill_id, set()).add(engine.devices[order.device_id].device_class)
    assert len(by_fill) == 2 and all(len(classes) == 1 for classes in by_fill.values())
    assert again == []  # everyone is busy in a fill


def test_the_energy_reference_comes_from_the_fills_masked_histogram() -> None:
    # Prepare: FTTE, ln edges (-10, -5, 0, 5); three quiet members (energy ~4e-4, ln ~ -7.8:
    # bin 1), four loud ones (~0.25, ln ~ -1.4: bin 2): the median survivor is in bin 2
    edges = (-10.0, -5.0, 0.0, 5.0)
    engine = make_engine(energy_bins=edges, strategy="ftte")
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = engine.dispatch(now=fleet.now)
    devices = sorted(o.device_id for o in orders)
    fleet.join(orders, spread={d: 0.02 if i < 3 else 0.5 for i, d in enumerate(devices)})
    first_params = engine.secagg_params(orders[0])
    # Execute
    fleet.run()
    # Assert: reference = the bin's geometric midpoint, e^-2.5; later tasks carry it
    strategy = engine.strategy
    assert isinstance(strategy, SecureAggregated)
    bins = sorted(m.counts.index(1) for m in fleet.members.values())
    assert bins == [1, 1, 1, 2, 2, 2, 2]
    assert first_params.weighting.energy_reference is None
    assert first_params.energy_bins == edges and first_params.config["count_words"] == 5
    assert strategy.energy_reference == pytest.approx(math.exp(-2.5))
    later = engine.dispatch(now=fleet.now + 1)
    assert engine.secagg_params(later[0]).weighting.energy_reference == pytest.approx(
        math.exp(-2.5)
    )
    assert engine.secagg_params(later[0]).weighting.energy_beta == 1.0


def _b64_blobs(node: object) -> list[bytes]:
    if isinstance(node, dict):
        if set(node) == {"$b64"}:
            return [base64.b64decode(node["$b64"])]
        return [b for v in node.values() for b in _b64_blobs(v)]
    if isinstance(node, list):
        return [b for v in node for b in _b64_blobs(v)]
    return []


def _holds(blobs: list[bytes], needle: bytes) -> bool:
    return any(needle in blob for blob in blobs)


def test_the_state_and_events_never_hold_an_individual_masked_vector_or_update() -> None:
    # Prepare: two members never mask, the other five mask and then fall silent
    events: list[EngineEvent] = []
    engine = make_engine(events=events)
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    late = sorted(o.device_id for o in orders)[:2]
    fleet.silent = {
        o.device_id: SecAggPhase.MASKED_INPUT
        if o.device_id in late
        else SecAggPhase.UNMASK_RESPONSE
        for o in orders
    }
    # Execute: a snapshot with five masked inputs in, another with the unmask requests out
    fleet.advertise()
    in_masked_phase = json.dumps(engine.state_dict())
    fleet.tick(TIMEOUT + 1.0)
    in_unmask_phase = json.dumps(engine.state_dict())
    # Assert: no saved blob holds 32 consecutive bytes of a member's masked words,
    # nor the bytes of its update; events hold ids and numbers only
    senders = [m for m in fleet.members.values() if m.order.device_id not in late]
    assert all(SecAggPhase.MASKED_INPUT in m.sent for m in senders)
    unmask_state = json.loads(in_unmask_phase)["payload"]["fills"]["fills"][0]["server"]
    assert unmask_state["payload"]["stage"] == "COLLECTING_UNMASK_RESPONSES"
    for text in (in_masked_phase, in_unmask_phase):
        blobs = _b64_blobs(json.loads(text))
        for member in senders:
            data = member.sent[SecAggPhase.MASKED_INPUT].data
            assert not any(_holds(blobs, data[i : i + 32]) for i in range(0, len(data) - 32, 4))
            for dtype in (np.float32, np.float64):
                raw = member.update.astype(dtype).tobytes()[:32]
                assert not _holds(blobs, raw) and base64.b64encode(raw) not in text.encode()
    for event in events:
        for value in event.details.values():
            assert isinstance(value, str | int | float | bool | list | type(None))
            if isinstance(value, list):
                assert all(isinstance(v, str) for v in value)


def versions_of(engine: Engine) -> dict[int, dict[str, np.ndarray]]:
    return {v: engine.base_params(v) for v in engine.live_versions()}


def _snapshot_in_masked_phase() -> tuple[Engine, Fleet, dict, dict]:
    engine = make_engine()
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    # two members mask late: the phase stays open while five inputs are in
    fleet.silent = dict.fromkeys(sorted(o.device_id for o in orders)[:2], SecAggPhase.MASKED_INPUT)
    fleet.advertise()
    state = json.loads(json.dumps(engine.state_dict()))
    return engine, fleet, state, versions_of(engine)


def test_a_snapshot_mid_fill_resumes_in_a_new_engine_and_finishes() -> None:
    # Prepare
    engine, fleet, state, versions = _snapshot_in_masked_phase()
    base = {n: v.astype(np.float64) for n, v in engine.params.items()}
    twin = make_engine(seed=5)
    # Execute: a restarted coordinator; the late pair answers too
    twin.load_state_dict(state, versions=versions)
    fleet.engine = twin
    fleet.silent = {}
    fleet.tick(1.0)  # re-sends each live member its delivery; devices re-send the same bytes
    # Assert: the restored fill merges all seven, as the plaintext merge says
    assert len(fleet.merges) == 1 and twin.version == 1
    survivors = list(fleet.members.values())
    expected = plaintext_merge(base, survivors)
    for name in SHAPES:
        np.testing.assert_allclose(twin.params[name], expected[name], atol=tolerance(survivors))
    saved_fill = state["payload"]["fills"]["fills"][0]
    assert saved_fill["answered"] == [] and saved_fill["server"]["payload"]["masked"] == {}


def test_a_snapshot_restored_past_its_phase_deadline_aborts_cleanly() -> None:
    # Prepare
    _, fleet, state, versions = _snapshot_in_masked_phase()
    twin = make_engine(seed=5)
    events: list[EngineEvent] = []
    twin.listeners.append(events.append)
    twin.load_state_dict(state, versions=versions)
    # Execute: the first tick after the restart is past the masked phase's deadline
    step = twin.secagg_tick(now=fleet.now + TIMEOUT + 1.0)
    # Assert
    assert len(step.aborted) == 1 and step.merge is None and twin.version == 0
    assert {o.phase for o in step.outbound} == {SecAggPhase.ABORT}
    assert not twin.tasks and all(d.state is DeviceState.IDLE for d in twin.devices.values())
    assert [e.details["reason"] for e in events if e.kind is EventKind.FILL_ABORTED] == [
        "too_few_masked_input"
    ]


def test_a_state_saved_before_fills_loads_into_an_engine_without_secagg() -> None:
    # Prepare: a format-3 state (no fills, tasks without fill ids)
    plain = Engine(
        params={n: np.zeros(s, np.float32) for n, s in SHAPES.items()},
        strategy=FedBuff(shapes=SHAPES, buffer_size=2),
        planner=SubsetPlanner(
            SubsetLadder({"layer": list(SHAPES)}), footprint_bytes=lambda s: 1, mode=SubsetMode.FULL
        ),
        concurrency=2,
        rng=random.Random(0),
    )
    enrol(plain, 2)
    plain.dispatch(now=1.0)
    state = plain.state_dict()
    old = {**state, "format_version": 3, "payload": dict(state["payload"])}
    del old["payload"]["fills"]
    for task in old["payload"]["tasks"]:
        del task["fill_id"]
    # Execute
    plain.load_state_dict(old, versions=versions_of(plain))
    # Assert
    assert plain.fills is None and len(plain.tasks) == 2
    assert all(t.fill_id is None for t in plain.tasks.values())


def test_under_distributed_dp_the_merge_is_the_recovered_noisy_mean_of_clipped_updates() -> None:
    # Prepare: Skellam shares on every device, min_survivors = t - c = 4
    ddp = DistributedDp.largest_scale(
        l2_clip=1.0, noise_multiplier=0.05, bits=20, min_survivors=4, cohort_size=COHORT, d=15
    )
    engine = make_engine(ddp=ddp)
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    params = engine.secagg_params(orders[0])
    fleet.silent = {sorted(o.device_id for o in orders)[0]: SecAggPhase.MASKED_INPUT}
    base = {n: v.astype(np.float64) for n, v in engine.params.items()}
    # Execute
    fleet.run()
    # Assert: exactly recover(sum of the survivors' prepared vectors) / survivors, and
    # within 6 sigma of the noise from the plaintext mean of the clipped updates
    survivors = [m for m in fleet.members.values() if m.order.device_id not in fleet.silent]
    session = SecAggSession.from_plain(params.session)
    layout = VectorLayout.for_subset(SHAPES, SHAPES)
    summed = distributed.recover(
        sum(m.update for m in survivors), ddp=ddp, session_seed=session.session_id, d=15
    )
    exact = layout.unflatten(summed / len(survivors))
    clipped = [m.raw * min(1.0, 1.0 / float(np.linalg.norm(m.raw))) for m in survivors]
    plain_mean = layout.unflatten(sum(clipped) / len(survivors))
    sigma = 0.05 * 1.0 * math.sqrt(len(survivors) / 4) / len(survivors)
    assert params.ddp == ddp.to_plain() and params.energy_bins == ()
    assert params.weighting.energy_reference is None and session.vector_length == 16
    assert len(fleet.merges) == 1 and len(fleet.merges[0].device_ids) == COHORT - 1
    for name in SHAPES:
        np.testing.assert_allclose(engine.params[name], base[name] + exact[name], atol=1e-6)
        np.testing.assert_allclose(
            engine.params[name], base[name] + plain_mean[name], atol=6 * sigma + 1e-3
        )


def test_with_identity_keys_an_unsigned_advertisement_is_refused_and_its_member_dropped() -> None:
    # Prepare: every device has an Ed25519 identity the engine knows; one advertises unsigned
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys = {f"dev-{i:02d}": Ed25519PrivateKey.generate() for i in range(COHORT)}
    events: list[EngineEvent] = []
    engine = make_engine(events=events, identity_keys=lambda d: keys[d].public_key())
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    unsigned = sorted(o.device_id for o in orders)[0]
    for member in fleet.members.values():
        device = member.order.device_id
        member.client = SecAggClient(
            config=member.client.config,
            session=member.client.session,
            device_id=device,
            signing_key=None if device == unsigned else keys[device],
        )
    # Execute
    fleet.run()
    # Assert: refused as a protocol violation, then dropped at the timer; the rest merge
    refused = [e for e in events if e.kind is EventKind.FILL_REFUSED]
    assert [(e.details["device_id"], e.details["reason"]) for e in refused] == [
        (unsigned, "protocol_violation")
    ]
    assert len(fleet.merges) == 1 and unsigned not in fleet.merges[0].device_ids
    assert len(fleet.merges[0].device_ids) == COHORT - 1


def test_a_plaintext_update_for_a_fill_task_is_refused_and_its_member_leaves_the_fill() -> None:
    # Prepare
    from fedward.coordinator.strategies import ClientUpdate

    engine = make_engine()
    enrol(engine, COHORT)
    orders = engine.dispatch(now=1.0)
    order = orders[0]
    update = ClientUpdate(
        device_id=order.device_id,
        task_id=order.task_id,
        base_version=0,
        subset_id=order.subset.subset_id,
        delta={n: np.zeros(s, np.float32) for n, s in SHAPES.items()},
        num_samples=1,
    )
    # Execute
    outcome = engine.submit(update, now=2.0)
    step = engine.secagg_tick(now=3.0)
    # Assert: refused; the member is out of its fill and told ABORT with the next step
    (fill,) = engine.fills.fills.values()
    assert not outcome.accepted and order.task_id not in engine.tasks
    assert order.device_id not in fill.live and order.device_id in fill.dropped
    assert [(o.device_id, o.phase) for o in step.outbound] == [(order.device_id, SecAggPhase.ABORT)]


@pytest.mark.parametrize("phase", UPLINK)
def test_a_restored_fill_resumes_from_every_phase_and_merges_everyone(phase: SecAggPhase) -> None:
    # Prepare: two members hold the phase open; the state goes through JSON into a new engine
    engine = make_engine()
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    holding = sorted(o.device_id for o in orders)[:2]
    fleet.silent = dict.fromkeys(holding, phase)
    fleet.advertise()
    base = {n: v.astype(np.float64) for n, v in engine.params.items()}
    state = json.loads(json.dumps(engine.state_dict()))
    twin = make_engine(seed=9)
    twin.load_state_dict(state, versions=versions_of(engine))
    fleet.engine, fleet.silent = twin, {}
    # Execute: the restarted coordinator re-asks; the two answer now (a device advertises
    # on its own task, unasked)
    if phase is SecAggPhase.ADVERTISE:
        for member in [m for m in fleet.members.values() if m.order.device_id in holding]:
            fleet.send(member, SecAggPhase.ADVERTISE, member.client.advertise())
    fleet.tick(1.0)
    # Assert: one merge of all seven, as in the clear
    survivors = list(fleet.members.values())
    assert len(fleet.merges) == 1 and len(fleet.merges[0].device_ids) == COHORT
    expected = plaintext_merge(base, survivors)
    for name in SHAPES:
        np.testing.assert_allclose(twin.params[name], expected[name], atol=tolerance(survivors))


def test_the_masked_input_phase_waits_its_own_longer_timer_for_training() -> None:
    # Prepare: key phases wait 30 s, the masked phase 100 s; one member still trains
    engine = make_engine(masked_input_timeout_s=100.0)
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    trainee = sorted(o.device_id for o in orders)[0]
    fleet.silent = {trainee: SecAggPhase.MASKED_INPUT}
    fleet.advertise()
    (fill,) = engine.fills.fills.values()
    # Execute: past the key phases' timer, then past the masked phase's own
    fleet.tick(TIMEOUT + 1.0)
    still_open = fill.phase is SecAggPhase.MASKED_INPUT and trainee in fill.live
    fleet.tick(100.0 - TIMEOUT)
    # Assert
    assert still_open
    assert len(fleet.merges) == 1 and trainee not in fleet.merges[0].device_ids


def test_a_sum_the_server_refuses_to_release_aborts_the_fill_and_merges_nothing() -> None:
    # Prepare: the block's range check refuses the decoded sum (a device masked a
    # malformed input; simulated at the server, which raises before releasing anything)
    from fedward.privacy.secagg import RangeViolation

    events: list[EngineEvent] = []
    engine = make_engine(events=events)
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    open_fill(engine, fleet)
    (fill,) = engine.fills.fills.values()

    def refuse() -> None:
        raise RangeViolation("decoded weight sum: 1 value(s) outside the range")

    fill.server.finalize = refuse  # type: ignore[method-assign]
    # Execute
    fleet.advertise()
    # Assert
    aborted = [e for e in events if e.kind is EventKind.FILL_ABORTED]
    assert [e.details["reason"] for e in aborted] == ["RangeViolation:unmask_response"]
    assert not fleet.merges and engine.version == 0 and not engine.tasks
    assert all(d.state is DeviceState.IDLE for d in engine.devices.values())


@pytest.mark.parametrize("case", ["live_outsider", "task_of_no_fill", "server_of_another_session"])
def test_a_broken_fill_book_is_refused_and_the_engine_left_as_it_was(case: str) -> None:
    # Prepare: a fill in the masked phase, its state broken one way
    engine, fleet, state, versions = _snapshot_in_masked_phase()
    fill_state = state["payload"]["fills"]["fills"][0]
    if case == "live_outsider":
        fill_state["live"].append("dev-99")
    elif case == "task_of_no_fill":
        state["payload"]["fills"]["fills"] = []
    else:
        other = json.loads(json.dumps(make_engine_with_open_fill().state_dict()))
        fill_state["server"] = other["payload"]["fills"]["fills"][0]["server"]
    twin = make_engine(seed=5)
    enrol(twin, COHORT)
    before = twin.state_dict()
    # Execute / Assert
    with pytest.raises(StateLoadError):
        twin.load_state_dict(state, versions=versions)
    assert json.dumps(twin.state_dict()) == json.dumps(before)


def make_engine_with_open_fill() -> Engine:
    engine = make_engine()
    enrol(engine, COHORT)
    engine.dispatch(now=1.0)
    return engine
