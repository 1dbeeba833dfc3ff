"""Fills that do not wait for their slowest member (issue 11: time to target).

Two parts, tested apart and together: cohorts grouped by each device's measured
task time (``form_cohorts`` with ``speed_of``; the engine measures
``Device.task_seconds``), and the masked-input phase closing a ``straggler_grace``
after the threshold's inputs are in (``Fill``), dropping members still training
as SecAgg dropouts, whose late inputs are then refused.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedward.coordinator.engine import EngineEvent, EventKind
from fedward.coordinator.secagg import form_cohorts
from fedward.coordinator.secagg.policy import SecAggPolicy, SecAggPolicyError
from fedward.protocol.messages import SecAggPhase
from fedward.tinytrain.subsets import SubsetSpec
from tests.coordinator.test_secagg_engine import (
    COHORT,
    SHAPES,
    THRESHOLD,
    Fleet,
    enrol,
    make_engine,
    open_fill,
    plaintext_merge,
    tolerance,
    versions_of,
)

SUBSET = SubsetSpec(names=("layer.weight",), tier=0, ladder_version=1)


@dataclass(frozen=True)
class Dev:
    device_id: str
    device_class: str
    seconds: float | None


def _fleet(speeds: dict[str, tuple[str, float | None]]) -> list[Dev]:
    return [Dev(d, c, s) for d, (c, s) in speeds.items()]


def _cohorts(devices: list[Dev], *, size: int, room: int, seed: int) -> list[list[Dev]]:
    return [
        members
        for _subset, members in form_cohorts(
            devices,
            subset_of=lambda d: SUBSET,
            size=size,
            room=room,
            rng=random.Random(seed),
            speed_of=lambda d: d.seconds,
        )
    ]


@pytest.mark.parametrize("seed", range(5))
def test_measured_devices_are_grouped_with_devices_of_their_speed(seed: int) -> None:
    # Prepare: one class, three speed bands a decade apart, 10 devices each
    speeds = {f"d{i:02d}": ("phone", 10.0 ** (i // 10) * (1 + 0.01 * i)) for i in range(30)}
    # Execute
    cohorts = _cohorts(_fleet(speeds), size=10, room=3, seed=seed)
    # Assert: three cohorts, each one band, every device in exactly one
    bands = [{int(d.device_id[1:]) // 10 for d in members} for members in cohorts]
    assert len(cohorts) == 3 and all(len(b) == 1 for b in bands)
    assert sorted(d.device_id for m in cohorts for d in m) == sorted(speeds)


def test_every_idle_device_has_about_the_same_chance_of_the_next_fill() -> None:
    # Prepare: 5 fast and 45 slow devices (the benchmark's 90% stragglers)
    speeds = {f"d{i:02d}": ("watch", 1.0 if i < 5 else 20.0 + i) for i in range(50)}
    devices = _fleet(speeds)
    # Execute: the first cohort of 5, drawn 2,000 times
    seen: Counter[str] = Counter()
    for seed in range(2000):
        for members in _cohorts(devices, size=5, room=1, seed=seed):
            seen.update(d.device_id for d in members)
    # Assert: nobody starves, nobody dominates (expected 200 each; grouping shifts it
    # towards the middle of a speed band, not to zero)
    assert set(seen) == set(speeds)
    assert min(seen.values()) > 50 and max(seen.values()) < 600
    fast = sum(seen[f"d{i:02d}"] for i in range(5))
    assert 0.05 < fast / sum(seen.values()) < 0.2  # about their 10% share


def test_unmeasured_devices_keep_to_their_class_and_take_its_measured_median() -> None:
    # Prepare: 7 unmeasured watches, 7 phones of which 3 measured fast, 4 unmeasured
    speeds: dict[str, tuple[str, float | None]] = {f"w{i}": ("watch", None) for i in range(7)}
    speeds |= {f"p{i}": ("phone", 2.0 if i < 3 else None) for i in range(7)}
    # Execute
    cohorts = _cohorts(_fleet(speeds), size=7, room=2, seed=3)
    # Assert: one cohort per class (unmeasured phones sit at the phones' median)
    classes = [{d.device_class for d in members} for members in cohorts]
    assert sorted(map(sorted, classes)) == [["phone"], ["watch"]]


def _speeds_per_fill(*, group_by_speed: bool) -> list[set[float]]:
    """The measured speeds in each of two fills drawn from 14 phones, 7 measured at
    5 s and 7 at 500 s (interleaved ids)."""
    engine = make_engine(fills_in_flight=2)
    engine.fills.policy = dataclasses.replace(engine.fills.policy, group_by_speed=group_by_speed)
    enrol(engine, 2 * COHORT)
    for i, device in enumerate(engine.devices.values()):
        device.task_seconds = 5.0 if i % 2 else 500.0
    speeds: dict[str, set[float]] = {}
    for order in engine.dispatch(now=1.0):
        speeds.setdefault(order.fill_id, set()).add(engine.devices[order.device_id].task_seconds)
    return list(speeds.values())


def test_the_engine_groups_cohorts_by_the_task_times_it_measured() -> None:
    # Prepare / Execute
    speeds = _speeds_per_fill(group_by_speed=True)
    # Assert: each fill holds one speed only
    assert len(speeds) == 2 and all(len(s) == 1 for s in speeds)


def _slow_fill(grace: float | None) -> tuple[object, Fleet, list, dict, list[str]]:
    """A fill opened at t=1 whose 5 fast members mask at t=11 and 2 still train."""
    events: list[EngineEvent] = []
    engine = make_engine(events=events, straggler_grace=grace)
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    slow = sorted(o.device_id for o in orders)[: COHORT - THRESHOLD]
    fleet.silent = dict.fromkeys(slow, SecAggPhase.MASKED_INPUT)
    base = {n: v.astype(np.float64) for n, v in engine.params.items()}
    fleet.now = 11.0
    fleet.advertise()  # key phases at once; the fast 5 mask at t = 11
    return engine, fleet, events, base, slow


def _mask_now(fleet: Fleet, device_id: str) -> None:
    member = next(m for m in fleet.members.values() if m.order.device_id == device_id)
    del fleet.silent[device_id]
    masked = member.client.mask_input(
        member.last[SecAggPhase.DELIVERY],
        update=member.update,
        weight=member.weight,
        counts=member.counts,
    )
    fleet.send(member, SecAggPhase.MASKED_INPUT, masked)


def test_a_fill_closes_a_grace_after_its_threshold_and_refuses_the_straggler() -> None:
    # Prepare: grace 0.5: the threshold was in 10 s after opening, so the phase
    # closes at 11 + 5 = 16; one slow member masks at 14, the other at 18
    engine, fleet, events, base, (late, later) = _slow_fill(0.5)
    fleet.deaf = {later}  # its ABORT is still on the way when it masks
    (fill,) = engine.fills.fills.values()
    # Execute
    fleet.tick(3.0)  # t = 14
    open_at_14 = fill.phase is SecAggPhase.MASKED_INPUT
    _mask_now(fleet, late)
    fleet.tick(3.0)  # t = 17: past the grace, long before the 30 s timer
    _mask_now(fleet, later)  # t = 17, after being dropped
    # Assert: merged the 6 that masked in time, the seventh refused as a dropout
    assert open_at_14 and len(fleet.merges) == 1
    assert set(fleet.merges[0].device_ids) == set(engine.devices) - {later}
    survivors = [m for m in fleet.members.values() if m.order.device_id != later]
    expected = plaintext_merge(base, survivors)
    for name in SHAPES:
        np.testing.assert_allclose(engine.params[name], expected[name], atol=tolerance(survivors))
    refused = [e.details for e in events if e.kind is EventKind.FILL_REFUSED]
    assert [(r["device_id"], r["reason"]) for r in refused] == [(later, "declared_dropped")]
    # the engine measured each member: 10 s, 13 s, and at least 16 s for the dropout
    seconds = {d: engine.devices[d].task_seconds for d in engine.devices}
    assert seconds[late] == pytest.approx(13.0) and seconds[later] == pytest.approx(16.0)
    assert sorted(seconds.values())[:THRESHOLD] == pytest.approx([10.0] * THRESHOLD)


def test_without_a_grace_the_fill_waits_for_its_slowest_member() -> None:
    # Prepare
    engine, fleet, _events, _base, (late, later) = _slow_fill(None)
    (fill,) = engine.fills.fills.values()
    # Execute: same clock as above
    fleet.tick(3.0)
    _mask_now(fleet, late)
    fleet.tick(3.0)
    # Assert: still collecting at t = 17, with the straggler live
    assert fill.phase is SecAggPhase.MASKED_INPUT and later in fill.live
    assert not fleet.merges


def test_the_grace_and_task_times_survive_a_restore_without_dropping_anyone() -> None:
    # Prepare: the threshold is in (early deadline t = 16); snapshot at t = 12
    engine, fleet, _events, _base, _slow = _slow_fill(0.5)
    fleet.now = 12.0
    state = engine.state_dict()
    twin = make_engine(straggler_grace=0.5)
    # Execute
    twin.load_state_dict(state, versions=versions_of(engine))
    # Assert: task times restored; the restored fill has no early deadline (it asks
    # its members again: who answered is not saved), so nobody is dropped at t = 16
    assert {d: v.task_seconds for d, v in twin.devices.items()} == {
        d: v.task_seconds for d, v in engine.devices.items()
    }
    (restored,) = twin.fills.fills.values()
    assert restored.early_deadline is None
    step = twin.secagg_tick(now=17.0)
    assert restored.phase is SecAggPhase.MASKED_INPUT and len(restored.live) == COHORT
    assert {o.phase for o in step.outbound} == {SecAggPhase.DELIVERY}  # asked again


def test_a_negative_grace_is_refused_with_its_name() -> None:
    with pytest.raises(SecAggPolicyError, match="straggler_grace"):
        SecAggPolicy(buffer_size=4, straggler_grace=-0.1)


def test_with_grouping_off_cohorts_ignore_measured_speeds() -> None:
    # Prepare / Execute: the same phones, grouping switched off in the policy
    speeds = _speeds_per_fill(group_by_speed=False)
    # Assert: drawn at random within the class, so the speeds mix
    assert len(speeds) == 2 and any(len(s) == 2 for s in speeds)


def test_a_lever_is_read_or_refused_with_what_to_write() -> None:
    from fedward.bench.secagg_levers import LeverError, parse_lever

    assert parse_lever("default") == {}
    assert parse_lever("grace=none,grouping=off") == {
        "secagg_straggler_grace": None,
        "secagg_group_by_speed": False,
    }
    assert parse_lever("dropout=0.05,staleness=0") == {
        "secagg_expected_dropout": 0.05,
        "staleness_exponent": 0.0,
    }
    assert parse_lever("budget=50,fills=10") == {
        "secagg_training_budget": 50,
        "secagg_fills_in_flight": 10,
    }
    assert parse_lever("budget=none") == {"secagg_training_budget": None}
    assert parse_lever("binding=arrival") == {"secagg_cohort_binding": "arrival"}
    assert parse_lever("buffer=5,adam_lr=0.0015") == {"buffer_size": 5, "server_adam_lr": 0.0015}
    assert parse_lever("protocol=free") == {"secagg_phase_cost": "free"}
    assert parse_lever("prior=oracle") == {"secagg_speed_prior": "oracle"}
    bad_levers = ("grace", "speed=1", "grouping=maybe", "grace=fast", "fills=2.5", "budget=x")
    for bad in (
        *bad_levers,
        "binding=later",
        "buffer=5.5",
        "adam_lr=fast",
        "protocol=cheap",
        "prior=guess",
    ):
        with pytest.raises(LeverError):
            parse_lever(bad)


@pytest.mark.parametrize(
    ("lever", "field"),
    [
        ("buffer=0", "buffer_size"),
        ("fills=0", "secagg_fills_in_flight"),
        ("dropout=1.5", "dropout"),
    ],
)
def test_a_lever_value_the_scenario_refuses_stops_the_run_before_any_row(
    lever: str, field: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedward.bench import secagg_levers

    # Prepare: a benchmark that must not start (the ftte row takes minutes on full)
    def no_row(*args: object, **kwargs: object) -> None:
        raise AssertionError("a row ran before the levers were checked")

    monkeypatch.setattr(secagg_levers, "run_benchmark", no_row)
    # Execute: a good lever first, then the bad one
    with pytest.raises(SystemExit) as exit_info:
        secagg_levers.main(["--scenario", "quick", "--lever", "buffer=5", "--lever", lever])
    # Assert: a usage error naming the lever and the field, no traceback, no row run
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert lever in err and field in err and "Traceback" not in err


def test_gain_times_read_the_first_crossing_of_each_share_of_the_references_gain() -> None:
    from fedward.bench.secagg_levers import gain_times

    # Prepare: warm start 0.5, reference final 0.9 (levels 0.70, 0.82, 0.88)
    reference = {
        "final_accuracy": 0.9,
        "series": [{"t": 0.0, "accuracy": 0.5}, {"t": 10.0, "accuracy": 0.85}],
    }
    row = [{"t": 0.0, "accuracy": 0.5}, {"t": 5.0, "accuracy": 0.71}, {"t": 30.0, "accuracy": 0.83}]
    # Execute / Assert: the row never reaches 0.88; the reference reaches 0.70 and 0.82 at 10 s
    assert gain_times(row, reference=reference) == [5.0, 30.0, None]
    assert gain_times(reference["series"], reference=reference) == [10.0, 10.0, None]


def _levers_doc(*, seed: int, reference: dict, levers: list) -> dict:
    return {"scenario": "ecg-rhythm-500", "seed": seed, "reference": reference, "levers": levers}


def test_saved_rows_are_set_against_another_runs_reference_as_one_run_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedward.bench.secagg_levers import LeverError, compare, main, retable

    # Prepare: a row (as the benchmark reports it) and two ftte references of one seed
    row = {
        "series": [
            {"t": 0.0, "accuracy": 0.5, "updates": 0, "version": 0},
            {"t": 40.0, "accuracy": 0.8, "updates": 12, "version": 2},
            {"t": 90.0, "accuracy": 0.9, "updates": 24, "version": 4},
        ],
        "final_accuracy": 0.9,
        "upload_bytes_per_update": 100.0,
        "virtual_time_s": 90.0,
        "secagg": {"dropped_by_phase": {"masked_input": 1}, "slot_share_training": 0.5},
    }
    slow = {
        "final_accuracy": 0.8,
        "series": [
            {"t": 0.0, "accuracy": 0.5, "updates": 0, "version": 0},
            {"t": 20.0, "accuracy": 0.8, "updates": 10, "version": 1},
        ],
    }
    fast = {
        "final_accuracy": 0.85,
        "series": [
            {"t": 0.0, "accuracy": 0.5, "updates": 0, "version": 0},
            {"t": 10.0, "accuracy": 0.85, "updates": 10, "version": 2},
        ],
    }
    saved = compare(row, reference=slow, overrides={"buffer_size": 5}, wall_s=3.0)
    rows_doc = _levers_doc(seed=1, reference=slow, levers=[{"lever": "buffer=5", **saved}])
    # Execute: the saved entry against the other reference, and against its own
    ((_, against_fast),) = retable(rows_doc, _levers_doc(seed=1, reference=fast, levers=[]))
    ((_, against_own),) = retable(rows_doc, rows_doc)
    # Assert: the same figures compare() gives the benchmark row against each reference
    assert against_fast == compare(row, reference=fast, overrides={"buffer_size": 5}, wall_s=3.0)
    assert against_own == saved
    assert against_fast["vs_ftte"] == pytest.approx(90.0 / 10.0)
    assert saved["vs_ftte"] == pytest.approx(40.0 / 20.0)
    assert against_fast["slot_times"]["slot_share_training"] == 0.5
    # a reference of another seed is refused, as is --retable alone
    with pytest.raises(LeverError, match="seed"):
        retable(rows_doc, _levers_doc(seed=2, reference=fast, levers=[]))
    rows_path, ref_path = tmp_path / "rows.json", tmp_path / "ref.json"
    rows_path.write_text(json.dumps(rows_doc))
    ref_path.write_text(json.dumps(_levers_doc(seed=1, reference=fast, levers=[])))
    with pytest.raises(SystemExit) as exit_info:
        main(["--retable", str(rows_path)])
    assert exit_info.value.code == 2
    out = tmp_path / "out.json"
    assert (
        main(["--retable", str(rows_path), "--reference-from", str(ref_path), "--json", str(out)])
        == 0
    )
    written = json.loads(out.read_text())
    assert written["levers"][0]["vs_ftte"] == pytest.approx(9.0)
    assert written["retabled"]["rows_from"] == str(rows_path)
    assert "| buffer=5 | 90 | 9.00 |" in capsys.readouterr().out


def test_pace_is_seconds_per_update_and_merges_per_second_against_the_reference() -> None:
    from fedward.bench.secagg_levers import pace

    # Prepare: the reference merges 100 updates in 10 merges over 50 s; the row 120 in 10
    # merges over 100 s (1/0.5 s per update vs 1/2 s: 1.67x; 0.1 vs 0.2 merges per s)
    reference = {"virtual_time_s": 50.0, "series": [{"updates": 100, "version": 10}]}
    row = {"virtual_time_s": 100.0, "series": [{"updates": 120, "version": 10}]}
    # Execute
    per_update, merge_rate = pace(row, reference=reference)
    # Assert
    assert per_update == pytest.approx((100.0 / 120) / (50.0 / 100))
    assert merge_rate == pytest.approx(0.5)
    assert pace({"series": []}, reference=reference) == (None, None)
    assert pace(row, reference={"series": [{"updates": 1, "version": 1}]}) == (None, None)
