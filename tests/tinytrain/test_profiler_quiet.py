"""The profiler's USDT start/stop markers are dropped from stderr; anything else is kept."""

from __future__ import annotations

import os

from fedward.tinytrain.memory import measure_training_step
from fedward.tinytrain.models import ModelConfig
from fedward.tinytrain.profiler_quiet import quiet_profiler_markers


def test_markers_are_dropped_and_other_stderr_output_survives(capfd) -> None:
    # Execute: what kineto writes from C++ (straight to fd 2), plus a real error line
    with quiet_profiler_markers():
        os.write(
            2,
            b"USDT:2026-11-27 03:56:27 8612:8612 SyncActivityProfilerHandler.cpp:52] profiler_start\n",
        )
        os.write(2, b"a real error from the same window\n")
        os.write(
            2,
            b"USDT:2026-11-27 03:56:27 8612:8612 SyncActivityProfilerHandler.cpp:59] profiler_stop\n",
        )
    os.write(2, b"after\n")
    # Assert
    err = capfd.readouterr().err
    assert err == "a real error from the same window\nafter\n"


def test_a_memory_measurement_prints_no_markers(capfd) -> None:
    measure_training_step(
        ModelConfig(window=64, width=4), ("head.weight", "head.bias"), batch_size=2
    )
    assert "profiler_start" not in capfd.readouterr().err
