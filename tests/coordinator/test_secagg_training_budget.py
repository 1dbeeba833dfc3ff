"""A training budget for fills (issue 11: time to target).

With ``SecAggPolicy.training_budget`` the engine counts the fill members still
training (live, masked input not yet sent) and opens the next cohort as soon as
it fits under the budget, so members waiting for their fill's unmask phase do
not hold back the next fill; a device is still in one fill at a time.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from fedward.coordinator.api import create_app
from fedward.coordinator.secagg.policy import SecAggPolicy, SecAggPolicyError
from fedward.protocol.messages import SecAggPhase
from tests.coordinator.test_secagg_engine import (
    COHORT,
    THRESHOLD,
    Fleet,
    enrol,
    make_engine,
    open_fill,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

STRAGGLERS = COHORT - THRESHOLD  # members of the first fill still training after the others mask


def _first_fill_waiting(*, budget: int | None, fills_in_flight: int = 3):
    """An engine with 3 cohorts' worth of phones and one open fill whose fast members
    have masked while ``STRAGGLERS`` of them still train."""
    engine = make_engine(fills_in_flight=fills_in_flight)
    engine.fills.policy = dataclasses.replace(engine.fills.policy, training_budget=budget)
    enrol(engine, 3 * COHORT)
    fleet = Fleet(engine)
    first = open_fill(engine, fleet)
    slow = sorted(o.device_id for o in first)[:STRAGGLERS]
    fleet.silent = dict.fromkeys(slow, SecAggPhase.MASKED_INPUT)
    return engine, fleet, first


def test_a_fill_counts_as_training_only_the_members_yet_to_mask() -> None:
    # Prepare: budget for one cohort and a bit (first dispatch opens exactly one fill)
    engine, fleet, first = _first_fill_waiting(budget=2 * COHORT - STRAGGLERS)
    (fill,) = engine.fills.fills.values()
    before = fill.training
    # Execute: keys exchanged, the fast members mask
    fleet.advertise()
    # Assert: all 7 trained before, the 2 stragglers now
    assert len(first) == COHORT
    assert before == COHORT
    assert fill.phase is SecAggPhase.MASKED_INPUT and fill.training == STRAGGLERS


def test_members_that_masked_free_room_for_the_next_cohort() -> None:
    # Prepare: the budget holds one cohort plus the first fill's stragglers
    engine, fleet, first = _first_fill_waiting(budget=COHORT + STRAGGLERS)
    at_first = engine.dispatch(now=fleet.now)  # the first fill still trains: no room
    fleet.advertise()
    # Execute
    second = engine.dispatch(now=fleet.now)
    third = engine.dispatch(now=fleet.now)
    # Assert: a second whole cohort of other devices, then no room for a third
    assert at_first == []
    assert len(second) == COHORT and len({o.fill_id for o in second}) == 1
    assert not {o.device_id for o in second} & {o.device_id for o in first}
    assert third == [] and len(engine.fills.fills) == 2


def test_without_a_budget_the_fill_count_alone_bounds_the_fills() -> None:
    # Prepare: one fill in flight, no budget
    engine, fleet, _first = _first_fill_waiting(budget=None, fills_in_flight=1)
    fleet.advertise()
    # Execute
    more = engine.dispatch(now=fleet.now)
    # Assert
    assert more == [] and len(engine.fills.fills) == 1


def test_fills_in_flight_still_caps_the_fills_under_a_budget() -> None:
    # Prepare: a budget large enough for everyone, but at most 2 fills
    engine, fleet, _first = _first_fill_waiting(budget=10 * COHORT, fills_in_flight=2)
    # Execute: the first dispatch already opened 2 fills (3 cohorts were idle)
    more = engine.dispatch(now=fleet.now)
    # Assert
    assert more == [] and len(engine.fills.fills) == 2


@pytest.mark.parametrize("budget", [0, -3, True, 2.5, COHORT - 1])
def test_a_budget_that_could_never_open_a_fill_is_refused_by_name(budget: object) -> None:
    with pytest.raises(SecAggPolicyError, match="training_budget"):
        SecAggPolicy(buffer_size=4, expected_dropout=0.34, training_budget=budget)  # type: ignore[arg-type]


def test_an_unbuildable_secagg_policy_is_a_422_over_http_not_a_500(settings, service, token):
    # Prepare: a real HTTP client against the app; a budget under the cohort, and a
    # ring too small for the cohort's sum (both refused only when the policy is built;
    # both were a 500 with a traceback in the log before)
    small = {"width": 4, "window": 64, "concurrency": 2, "buffer_size": 2, "strategy": "fedbuff"}
    bad = [({"training_budget": 2}, "training_budget"), ({"modulus_bits": 8}, "secagg")]
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings, service=service)) as client:
        # Execute
        answers = [
            client.post(
                "/v1/studies",
                json={"spec": {**small, "secagg": {"enabled": True, **sec}}, "study_id": "sa"},
                headers=auth,
            )
            for sec, _says in bad
        ]
        listed = client.get("/v1/studies", headers=auth).json()
    # Assert: refused with what to change, and nothing created
    for answer, (_sec, says) in zip(answers, bad, strict=True):
        assert answer.status_code == 422, answer.text
        assert says in answer.text
    assert listed == []


def test_a_scenario_budget_alone_lifts_the_default_fill_cap() -> None:
    from fedward.simulation.scenario import PRESETS, Scenario, StrategyRun

    # Prepare: the full scenario (cohort 12, 50 tasks at work, 500 devices)
    full = PRESETS["full"]

    def fills(**change: object) -> int:
        scenario = Scenario.model_validate({**full.model_dump(), **change})
        return scenario.secagg_settings(StrategyRun.FTTE_SECAGG).fills_in_flight

    # Execute / Assert: 50 // 12 fills by default; the budget bounds them instead
    # (500 // 12 as the cap); an explicit cap wins either way
    assert fills() == 4
    assert fills(secagg_training_budget=50) == 41
    assert fills(secagg_training_budget=50, secagg_fills_in_flight=6) == 6
