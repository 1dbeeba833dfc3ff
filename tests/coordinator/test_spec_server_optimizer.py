"""FTTE's server optimiser from the study spec (issue 14 item 6: the lever `fedward bench` can run)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedward.coordinator.strategies import FTTE
from fedward.coordinator.strategies.ftte import EnergyNormaliser, ServerOptimizer
from fedward.coordinator.study_spec import StudySpec, build_strategy
from fedward.simulation.scenario import PRESETS, StrategyRun

SHAPES = {"head.weight": (4, 3), "head.bias": (4,)}


def _ftte(strategy: object) -> FTTE:
    inner = getattr(strategy, "inner", strategy)  # NormBounded wraps buffered strategies
    if not isinstance(inner, FTTE):
        raise TypeError(f"not FTTE: {type(inner).__name__}")
    return inner


def test_the_spec_builds_ftte_with_its_server_optimiser() -> None:
    # Prepare
    spec = StudySpec(strategy="ftte", server_optimizer="adam", server_adam_lr=0.003)
    # Execute
    ftte = _ftte(build_strategy(spec, SHAPES))
    # Assert
    assert ftte.server_optimizer is ServerOptimizer.ADAM and ftte.server_adam_lr == 0.003
    assert _ftte(build_strategy(StudySpec(strategy="ftte"), SHAPES)).server_optimizer is (
        ServerOptimizer.SGD
    )


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"strategy": "fedbuff", "server_optimizer": "adam"}, "only with strategy ftte"),
        ({"strategy": "ftte", "server_optimizer": "rmsprop"}, "server_optimizer"),
        ({"strategy": "ftte", "server_adam_lr": 0.0}, "server_adam_lr"),
    ],
)
def test_a_server_optimiser_it_would_ignore_or_cannot_run_is_refused(
    changes: dict[str, object], says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        StudySpec(**changes)


def test_the_scenario_gives_it_to_the_ftte_rows_only() -> None:  # secagg ftte rows too
    # Prepare
    scenario = PRESETS["quick"].model_copy(
        update={"server_optimizer": ServerOptimizer.ADAM, "server_adam_lr": 0.003}
    )
    # Execute / Assert
    assert scenario.study_spec(StrategyRun.FTTE).server_optimizer is ServerOptimizer.ADAM
    assert scenario.study_spec(StrategyRun.FTTE).server_adam_lr == 0.003
    assert scenario.study_spec(StrategyRun.FTTE_SECAGG).server_optimizer is ServerOptimizer.ADAM
    for run in (StrategyRun.FEDBUFF, StrategyRun.FEDAVG):
        assert scenario.study_spec(run).server_optimizer is ServerOptimizer.SGD


def test_the_spec_builds_ftte_with_its_energy_normaliser_and_refuses_it_elsewhere() -> None:
    # Prepare
    spec = StudySpec(strategy="ftte", energy_normaliser="undamped")
    # Execute
    ftte = _ftte(build_strategy(spec, SHAPES))
    # Assert
    assert ftte.energy_normaliser is EnergyNormaliser.UNDAMPED
    for changes in (
        {"strategy": "fedbuff", "energy_normaliser": "undamped"},
        {"strategy": "ftte", "energy_normaliser": "undamped", "secagg": {"enabled": True}},
    ):
        with pytest.raises(ValidationError, match="energy_normaliser undamped applies only"):
            StudySpec(**changes)


def test_the_scenario_gives_the_energy_normaliser_to_plain_ftte_rows_only() -> None:
    # Prepare
    scenario = PRESETS["quick"].model_copy(update={"energy_normaliser": EnergyNormaliser.UNDAMPED})
    # Execute / Assert
    for run in (StrategyRun.FTTE, StrategyRun.FTTE_NESTED):
        assert scenario.study_spec(run).energy_normaliser is EnergyNormaliser.UNDAMPED
    for run in (StrategyRun.FEDBUFF, StrategyRun.FTTE_SECAGG):
        assert scenario.study_spec(run).energy_normaliser is EnergyNormaliser.CONTRIBUTORS
