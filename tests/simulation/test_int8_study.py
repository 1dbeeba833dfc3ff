"""A simulated int8 study: a quarter of the bytes, and the same figures for a seed every run.

A DP device's int8 frame is checked at the unit level (``tests/edge/test_int8_dp_update.py``):
the simulator builds its frames with the same functions.
"""

from __future__ import annotations

from fedward.protocol.messages import UpdateEncoding
from fedward.simulation.executor import SerialExecutor
from fedward.simulation.scenario import PRESETS, StrategyRun
from fedward.simulation.study import Study, StudyResult


def _run(encoding: UpdateEncoding) -> StudyResult:
    scenario = PRESETS["tiny"].model_copy(update={"update_encoding": encoding, "update_budget": 24})
    run = StrategyRun.FTTE
    executor = SerialExecutor(scenario.data_config(), scenario.study_spec(run).model_settings())
    return Study(scenario, run, executor=executor).run()


def test_int8_sends_under_a_third_of_the_bytes_and_is_reproducible():
    # Execute
    plain, first, again = (
        _run(UpdateEncoding.FLOAT32),
        _run(UpdateEncoding.INT8),
        _run(UpdateEncoding.INT8),
    )
    # Assert: the rounding key comes from the seed and the task, so a seed repeats exactly
    assert first.updates == plain.updates >= 24
    assert first.upload_bytes_per_update < 0.35 * plain.upload_bytes_per_update
    assert [s["accuracy"] for s in first.series] == [s["accuracy"] for s in again.series]
    assert [s.get("loss") for s in first.series] == [s.get("loss") for s in again.series]
    assert [s.get("loss") for s in first.series] != [s.get("loss") for s in plain.series]


def test_an_int8_task_is_charged_the_upload_time_of_its_int8_frame():
    # Prepare: the same first task in a float32 and an int8 study
    studies = {}
    for encoding in (UpdateEncoding.FLOAT32, UpdateEncoding.INT8):
        scenario = PRESETS["tiny"].model_copy(update={"update_encoding": encoding})
        run = StrategyRun.FTTE
        pool = SerialExecutor(scenario.data_config(), scenario.study_spec(run).model_settings())
        studies[encoding] = Study(scenario, run, executor=pool)
    # Execute
    charged = {
        encoding: study._update_bytes(study.engine.dispatch(now=0.0)[0])
        for encoding, study in studies.items()
    }
    # Assert: int8 words are a quarter of float32's, plus the header's scales
    assert charged[UpdateEncoding.INT8] < 0.35 * charged[UpdateEncoding.FLOAT32]
