"""Opacus is imported only where DP runs: a plain study or benchmark never pays for it.

Importing Opacus costs seconds per process (the CLI, and every simulator
worker), so the modules a study without DP loads must not import it.
"""

from __future__ import annotations

import subprocess
import sys

PLAIN_PATH = (
    "fedward.cli",
    "fedward.simulation.bench",
    "fedward.simulation.study",
    "fedward.edge.local",
    "fedward.coordinator.study_spec",
)


def test_the_modules_of_a_plain_study_do_not_import_opacus() -> None:
    # Prepare
    probe = (
        f"import sys; import {', '.join(PLAIN_PATH)}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'opacus'))"
    )

    # Execute
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )

    # Assert
    assert out.stdout.strip() == "[]"


def test_dp_training_still_imports_it_and_reexports_its_settings() -> None:
    # Prepare / Execute
    from fedward.edge import dp_config, dp_training

    # Assert: the old import path keeps working
    assert dp_training.DPTrainConfig is dp_config.DPTrainConfig
    assert dp_training.DPTrainResult is dp_config.DPTrainResult
    assert "opacus" in sys.modules
