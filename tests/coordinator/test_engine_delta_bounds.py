"""Engine.submit bounds every delta itself, not only ingest (defence in depth).

A caller that hands the engine a ``ClientUpdate`` directly (a library user, a
future transport) must not be able to overflow the model: one 3e38 coordinate
made the merged model inf before ``max_delta_abs`` existed. A tensor of the
wrong shape is refused too, with its name.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from fedward.coordinator.engine import Engine
from fedward.coordinator.errors import RejectReason
from fedward.coordinator.study_spec import StudySpec, build_engine
from tests.coordinator.engine_helpers import update_for


def _engine(spec: StudySpec) -> Engine:
    engine = build_engine(spec, rng=random.Random(5))
    for i in range(2):
        engine.enrol(f"dev-{i}", device_class="phone", memory_bytes=1 << 22, now=0.0)
    return engine


def _forged(engine: Engine, value: float | None = None, *, shape_change: bool = False):
    order = engine.dispatch(now=1.0)[0]
    honest = update_for(engine, order)
    name = next(iter(honest.delta))
    tensor = honest.delta[name].copy()
    if value is not None:
        tensor.flat[0] = value
    if shape_change:
        tensor = np.zeros(tensor.size + 1, np.float32)
    return dataclasses.replace(honest, delta={**honest.delta, name: tensor})


@pytest.mark.parametrize("value", [3e38, -2e3])
def test_a_coordinate_beyond_the_bound_is_refused_and_the_model_kept(spec, value) -> None:
    # Prepare
    engine = _engine(spec)
    before = {n: v.copy() for n, v in engine.params.items()}
    forged = _forged(engine, value)
    # Execute
    outcome = engine.submit(forged, now=2.0)
    # Assert
    assert not outcome.accepted and outcome.reason is RejectReason.OUT_OF_RANGE
    assert engine.stats.rejected[RejectReason.OUT_OF_RANGE] == 1
    assert forged.task_id not in engine.tasks  # its task is closed, the device freed
    for name, value_ in engine.params.items():
        np.testing.assert_array_equal(value_, before[name])


def test_a_tensor_of_the_wrong_shape_is_refused_as_malformed(spec) -> None:
    # Prepare
    engine = _engine(spec)
    # Execute
    outcome = engine.submit(_forged(engine, shape_change=True), now=2.0)
    # Assert
    assert not outcome.accepted and outcome.reason is RejectReason.MALFORMED


def test_a_delta_within_the_bound_is_accepted(spec) -> None:
    # Prepare
    engine = _engine(spec)
    # Execute: exactly at the bound is inside it
    outcome = engine.submit(_forged(engine, spec.max_delta_abs), now=2.0)
    # Assert
    assert outcome.accepted


def test_a_bound_that_is_no_positive_finite_number_is_refused(spec) -> None:
    engine = _engine(spec)
    with pytest.raises(ValueError, match="max_delta_abs"):
        Engine(
            params=engine.params,
            strategy=engine.strategy,
            planner=engine.planner,
            concurrency=1,
            rng=random.Random(0),
            max_delta_abs=float("inf"),
        )
