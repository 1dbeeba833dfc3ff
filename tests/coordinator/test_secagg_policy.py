"""SecAggPolicy sizing and validation, cohort grouping, the energy reference and the
audit entries of fill events (issue 11)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from fedward.compliance import ActorKind, AuditAction, Outcome
from fedward.compliance.events import check_details
from fedward.coordinator import audit
from fedward.coordinator.engine import EngineEvent, EventKind
from fedward.coordinator.secagg import (
    SecAggPolicy,
    SecAggPolicyError,
    energy_counts,
    form_cohorts,
    reference_from_histogram,
)
from fedward.privacy.secagg import threshold_floor
from fedward.privacy.secagg.ddp import DistributedDp
from fedward.tinytrain.subsets import SubsetSpec


@pytest.mark.parametrize(
    ("buffer_size", "dropout", "colluders", "cohort", "threshold"),
    [(4, 0.34, 1, 7, 5), (10, 0.2, 1, 13, 10), (2, 0.0, 1, 3, 3), (12, 0.5, 3, 24, 14)],
)
def test_the_cohort_holds_the_buffer_plus_dropouts_and_the_threshold_defeats_colluders(
    buffer_size: int, dropout: float, colluders: int, cohort: int, threshold: int
) -> None:
    # Prepare / Execute
    policy = SecAggPolicy(
        buffer_size=buffer_size,
        expected_dropout=dropout,
        max_colluders=colluders,
        min_cohort=max(3, colluders + 2),
    )
    # Assert: m and t as documented; t >= K and 2t > m + c
    assert (policy.cohort_size, policy.threshold) == (cohort, threshold)
    assert policy.threshold >= buffer_size
    assert policy.threshold >= threshold_floor(cohort, max_colluders=colluders)
    assert 2 * policy.threshold > policy.cohort_size + colluders


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"buffer_size": 0}, "buffer_size"),
        ({"expected_dropout": 1.0}, "expected_dropout"),
        ({"expected_dropout": math.nan}, "expected_dropout"),
        ({"max_colluders": 2, "min_cohort": 3}, "min_cohort"),
        ({"modulus_bits": 16}, "modulus_bits"),
        ({"scale": 0.0}, "scale"),
        ({"clip": -1.0}, "clip"),
        ({"phase_timeout_s": 0}, "phase_timeout_s"),
        ({"energy_bins": (1.0, 1.0)}, "energy_bins"),
        ({"energy_bins": [1.0, 2.0]}, "energy_bins"),
        ({"fills_in_flight": 0}, "fills_in_flight"),
        ({"ddp": {"l2_clip": 1.0}}, "ddp"),
        ({"norm_bound": 0.0}, "norm_bound"),
        ({"scale": 2.0**40, "modulus_bits": 32}, "cannot run"),  # the sum overflows 32 bits
    ],
)
def test_a_policy_that_cannot_run_is_refused_naming_the_field(change: dict, field: str) -> None:
    # Prepare
    settings = {"buffer_size": 4, **change}
    # Execute / Assert
    with pytest.raises(SecAggPolicyError, match=field):
        SecAggPolicy(**settings)


def test_distributed_dp_needs_its_noise_from_honest_survivors_and_sets_the_encoding() -> None:
    # Prepare: t = 5, c = 1: at most 4 honest devices are guaranteed in a released sum
    def ddp(min_survivors: int) -> DistributedDp:
        return DistributedDp(
            l2_clip=1.0, noise_multiplier=1.0, bits=20, scale=2.0**8, min_survivors=min_survivors
        )

    # Execute
    policy = SecAggPolicy(buffer_size=4, expected_dropout=0.34, ddp=ddp(4), energy_bins=(0.0,))
    # Assert
    with pytest.raises(SecAggPolicyError, match="min_survivors"):
        SecAggPolicy(buffer_size=4, expected_dropout=0.34, ddp=ddp(5))
    config = policy.config(threshold=policy.threshold)
    assert config.scale == 2.0**8 and config.clip == ddp(4).coordinate_bound
    assert not policy.histogram and policy.count_words == 1  # no histogram under DDP


def test_the_energy_reference_is_the_median_bins_representative() -> None:
    # Prepare
    edges = (-6.0, -4.0, -2.0)
    # Execute / Assert: inner bins give their geometric midpoint, open bins their edge
    assert reference_from_histogram((0, 0, 0, 0), edges) is None
    assert reference_from_histogram((0, 1, 3, 0), edges) == pytest.approx(math.exp(-3.0))
    assert reference_from_histogram((3, 1, 0, 0), edges) == pytest.approx(math.exp(-6.0))
    assert reference_from_histogram((0, 0, 1, 5), edges) == pytest.approx(math.exp(-2.0))
    assert reference_from_histogram((2, 0, 0, 2), edges) == pytest.approx(math.exp(-6.0))
    assert energy_counts(math.exp(-5.0), edges) == (0, 1, 0, 0)
    assert energy_counts(0.0, edges) == (1, 0, 0, 0)
    assert energy_counts(1.0, ()) == (1,)
    with pytest.raises(ValueError, match="bins"):
        reference_from_histogram((1, 2), edges)


@dataclass
class Dev:
    device_id: str
    device_class: str
    memory: int


SMALL = SubsetSpec(names=("b",), tier=1)
LARGE = SubsetSpec(names=("a", "b"), tier=2)


def test_cohorts_share_a_subset_and_prefer_one_device_class() -> None:
    # Prepare: 5 watches (small subset), 4 phones and 2 tablets (large subset)
    idle = (
        [Dev(f"w{i}", "watch", 1) for i in range(5)]
        + [Dev(f"p{i}", "phone", 2) for i in range(4)]
        + [Dev(f"t{i}", "tablet", 2) for i in range(2)]
    )

    def subset_of(d: Dev) -> SubsetSpec:
        return SMALL if d.memory == 1 else LARGE

    # Execute
    cohorts = form_cohorts(idle, subset_of=subset_of, size=3, room=5, rng=random.Random(0))
    # Assert: one subset per cohort; whole-class cohorts first, a mixed one only from leftovers
    assert len(cohorts) == 3
    for subset, members in cohorts:
        assert {subset_of(d) for d in members} == {subset} and len(members) == 3
    classes = sorted(sorted({d.device_class for d in m}) for _, m in cohorts)
    assert classes == [["phone"], ["phone", "tablet"], ["watch"]]
    ids = [d.device_id for _, m in cohorts for d in m]
    assert len(ids) == len(set(ids))
    assert form_cohorts(idle, subset_of=subset_of, size=3, room=0, rng=random.Random(0)) == []


def _event(kind: EventKind, **details) -> EngineEvent:
    return EngineEvent(kind=kind, at=1.0, details=details)


def test_fill_events_become_secagg_round_audit_entries_the_log_accepts() -> None:
    # Prepare: one event of each kind, one with a cohort longer than a log list
    cohort = [f"dev-{i:03d}" for i in range(70)]
    events = [
        _event(
            EventKind.FILL_OPENED,
            fill_id="fill-0000001",
            cohort=cohort,
            cohort_size=70,
            threshold=37,
            model_version=3,
            subset_id="s1",
            phase="advertise",
            deadline=31.0,
        ),
        _event(
            EventKind.FILL_PHASE,
            fill_id="fill-0000001",
            threshold=37,
            phase="shares",
            next_phase="masked_input",
            arrived=cohort[:60],
            missing=cohort[60:],
            live=60,
            timed_out=True,
        ),
        _event(
            EventKind.FILL_MERGED,
            fill_id="fill-0000001",
            threshold=37,
            version=4,
            parent=3,
            base_version=3,
            staleness=0,
            survivors=cohort[:60],
            dropouts=cohort[60:],
            task_ids=["t1"],
        ),
        _event(
            EventKind.FILL_ABORTED,
            fill_id="fill-0000002",
            threshold=5,
            phase="masked_input",
            reason="too_few_masked_input",
            arrived=["dev-1"],
            missing=["dev-2"],
            survivors=["dev-1"],
            dropouts=["dev-2"],
            timed_out=True,
        ),
        _event(
            EventKind.FILL_REFUSED,
            fill_id="fill-0000002",
            threshold=5,
            device_id="dev-2",
            task_id="t9",
            phase="shares",
            open_phase="masked_input",
            reason="declared_dropped",
            dropped_in="shares",
        ),
    ]
    # Execute
    entries = [audit.engine_entry(e) for e in events]
    # Assert: SECAGG_ROUND with the step; the log's guard accepts every entry
    assert all(e is not None and e.action is AuditAction.SECAGG_ROUND for e in entries)
    assert [e.details["step"] for e in entries] == [
        "opened",
        "phase",
        "merged",
        "aborted",
        "refused",
    ]
    assert [e.outcome for e in entries][3:] == [Outcome.FAILURE, Outcome.DENIED]
    assert entries[4].actor is ActorKind.DEVICE and entries[4].actor_id == "dev-2"
    assert entries[0].actor is ActorKind.COORDINATOR
    assert len(entries[0].details["cohort"]) == 64 and entries[0].details["cohort_count"] == 70
    for entry in entries:
        check_details(entry.details)


def test_every_idle_device_has_about_the_same_chance_of_the_next_fill_whatever_its_class() -> None:
    # Prepare: 60 wearables, 30 phones, 10 gateways sharing one subset; cohorts of 5.
    # (The rule before always took the smallest class able to fill a cohort: the
    # wearables were never drawn while phones or gateways were idle.)
    idle = (
        [Dev(f"w{i}", "wearable", 1) for i in range(60)]
        + [Dev(f"p{i}", "phone", 1) for i in range(30)]
        + [Dev(f"g{i}", "gateway", 1) for i in range(10)]
    )
    rng = random.Random(7)
    drawn: dict[str, int] = {"wearable": 0, "phone": 0, "gateway": 0}
    # Execute: the next fill, 2,000 times over the same idle fleet
    for _ in range(2000):
        ((_, members),) = form_cohorts(idle, subset_of=lambda d: SMALL, size=5, room=1, rng=rng)
        drawn[members[0].device_class] += 1
    # Assert: each class's share of fills within 4 points of its share of idle devices
    assert abs(drawn["wearable"] / 2000 - 0.6) < 0.04
    assert abs(drawn["phone"] / 2000 - 0.3) < 0.04
    assert abs(drawn["gateway"] / 2000 - 0.1) < 0.04
