"""A scenario with FTTE's energy term under its former names is refused, by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedward.coordinator.study_spec import RENAMED_KEYS
from fedward.simulation.scenario import Scenario, StrategyRun, load_scenario


def test_a_scenario_file_with_a_former_key_is_refused_naming_the_new_one(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"devices": 12, "variance_tolerance": 5.0}))
    # Execute / Assert
    with pytest.raises(ValueError, match="variance_tolerance is now energy_tolerance"):
        load_scenario(str(path))


def test_the_energy_keys_reach_the_study_spec() -> None:
    # Prepare
    scenario = Scenario(energy_beta=2.0, energy_tolerance=5.0, energy_window=7)
    # Execute
    ftte = scenario.study_spec(StrategyRun.FTTE)
    bounded = scenario.study_spec(StrategyRun.FEDBUFF_NORM_BOUNDED)
    # Assert: FTTE's term, and the norm bound at the same tolerance and window
    assert (ftte.energy_beta, ftte.energy_tolerance, ftte.energy_window) == (2.0, 5.0, 7)
    assert (bounded.norm_bound_tolerance, bounded.norm_bound_window) == (5.0, 7)
    assert not set(RENAMED_KEYS) & set(ftte.model_dump())
