"""Study files carry FTTE's server optimiser, energy normaliser and the int8 encoding, and refuse them where
the strategy would silently ignore them."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedward.coordinator.strategies.ftte import EnergyNormaliser, ServerOptimizer
from fedward.protocol.messages import UpdateEncoding
from fedward.simulation.studyfile import StudyFileError, load_study_file, parse_study_file


def test_the_options_reach_the_study_spec(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "s.yaml"
    path.write_text(
        "strategy: {name: ftte_nested, server_optimizer: adam, server_adam_lr: 0.003,"
        " update_encoding: int8, energy_normaliser: heaviest}\n"
    )
    # Execute
    scenario, run = load_study_file(path)
    spec = scenario.study_spec(run)
    # Assert
    assert spec.server_optimizer is ServerOptimizer.ADAM and spec.server_adam_lr == 0.003
    assert spec.update_encoding is UpdateEncoding.INT8
    assert spec.energy_normaliser is EnergyNormaliser.HEAVIEST


@pytest.mark.parametrize(
    ("strategy", "says"),
    [
        ("{name: fedbuff, server_optimizer: adam}", "runs only with the ftte strategies"),
        ("{name: ftte+secagg, update_encoding: int8}", "does not apply to secure aggregation"),
        ("{name: ftte, server_adam_lr: 0.5}", "only with server_optimizer adam"),
        ("{name: fedbuff, energy_normaliser: heaviest}", "energy_normaliser heaviest applies"),
        ("{name: ftte+secagg, energy_normaliser: undamped}", "without secure aggregation"),
    ],
)
def test_options_the_strategy_would_ignore_are_refused(
    tmp_path: Path, strategy: str, says: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"strategy: {strategy}\n")
    with pytest.raises(StudyFileError, match=says):
        parse_study_file(path)
