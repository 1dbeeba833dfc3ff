"""make_executor is a public name (``fedward.make_executor``): a plain string picks the
executor it names, and a name it does not know is refused instead of falling to Ray."""

from __future__ import annotations

import pytest

from fedward.simulation.executor import ExecutorKind, SerialExecutor, make_executor
from fedward.simulation.scenario import PRESETS, StrategyRun


def test_a_string_kind_picks_its_executor_and_an_unknown_one_is_refused() -> None:
    # Prepare
    scenario = PRESETS["tiny"]
    data = scenario.data_config()
    model = scenario.study_spec(StrategyRun.FTTE).model_settings()
    # Execute
    serial = make_executor("serial", data, model)
    # Assert
    try:
        assert isinstance(serial, SerialExecutor)
    finally:
        serial.close()
    with pytest.raises(ValueError):
        make_executor("gpu-cluster", data, model)
    assert ExecutorKind("ray") is ExecutorKind.RAY
