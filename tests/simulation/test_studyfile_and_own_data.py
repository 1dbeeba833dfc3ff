"""Study files and bring-your-own data: round trips, researcher-readable errors, learning.

Every error test asserts the message a researcher reads (file, line, key, fix),
through the CLI where it matters (no traceback, exit 2). The learning tests
run a tiny study on an .npz and on a CSV and require held-out accuracy above
chance by a stated margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fedward.cli import app
from fedward.simulation.datafile import DataFileError, DataFormat, FileDataConfig, load_file_data
from fedward.simulation.executor import make_executor
from fedward.simulation.study import Study
from fedward.simulation.studyfile import (
    StudyFile,
    StudyFileError,
    load_study_file,
    parse_study_file,
)
from tests.simulation.own_data_helpers import tabular_csv, two_class_windows


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_tiny(study: Path, updates: int) -> tuple[float, float]:
    sc, run = load_study_file(study)
    sc = type(sc).model_validate({**sc.model_dump(), "update_budget": updates})
    pool = make_executor("serial", sc.data_config(), sc.study_spec(run).model_settings())
    result = Study(sc, run, executor=pool).run()
    return result.series[0]["accuracy"], result.final_accuracy


# -- round trip and errors -------------------------------------------------------------


def test_a_study_file_round_trips_through_yaml(tmp_path: Path) -> None:
    # Prepare
    study = StudyFile.model_validate(
        {"name": "rt", "fleet": {"devices": 30}, "strategy": {"name": "fedbuff"}}
    )
    path = _write(tmp_path / "s.yaml", yaml.safe_dump(study.model_dump(mode="json")))
    # Execute
    again = parse_study_file(path)
    sc, run = load_study_file(path)
    # Assert
    assert again == study
    assert (sc.devices, run.value, sc.study_spec(run).strategy.value) == (30, "fedbuff", "fedbuff")


def test_errors_name_the_line_the_key_and_the_fix(tmp_path: Path) -> None:
    # Prepare
    path = _write(
        tmp_path / "bad.yaml",
        "name: demo\nfleet:\n  devices: 20\n  mixx: {wearable: 1}\nstrategy:\n"
        "  name: ftte2\n  buffer_size: many\n",
    )
    # Execute
    with pytest.raises(StudyFileError) as info:
        parse_study_file(path)
    # Assert
    text = str(info.value)
    assert f"{path}:4: fleet.mixx: unknown key; did you mean 'mix'?" in text
    assert f"{path}:6: strategy.name: not a known value (got 'ftte2'); use one of:" in text
    assert f"{path}:7: strategy.buffer_size:" in text and "write a whole number" in text


def test_the_cli_prints_the_problem_without_a_traceback(tmp_path: Path) -> None:
    # Prepare
    path = _write(tmp_path / "broken.yaml", "name: x\nfleet: [1, 2\n")
    # Execute
    out = CliRunner().invoke(app, ["simulate", str(path)], env={"COLUMNS": "200"})
    # Assert
    assert out.exit_code == 2
    assert f"{path}:3: not valid YAML" in out.output
    assert "Traceback" not in out.output


def test_dp_and_strategy_must_agree(tmp_path: Path) -> None:
    # Prepare
    path = _write(tmp_path / "dp.yaml", "privacy: {mode: dp_sgd}\nstrategy: {name: fedbuff}\n")
    # Execute
    with pytest.raises(StudyFileError) as info:
        parse_study_file(path)
    # Assert
    assert "privacy.mode dp_sgd and strategy.name ftte+dp go together" in str(info.value)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros(4, dtype=int)}, "missing X (or x); found keys ['y']"),
        (
            {"X": np.zeros((4, 40)), "y": np.zeros(4, dtype=int)},
            "X must be [n, channels, length], got shape (4, 40) (one channel: X[:, None, :])",
        ),
        (
            {"X": np.zeros((4, 1, 8), dtype=bool), "y": np.zeros(4, dtype=int)},
            "X must hold real numbers, got dtype bool",
        ),
        (
            {"X": np.zeros((4, 1, 8)), "y": np.array([0.5, 1, 0, 1])},
            "y must hold integer class labels 0..C-1, got dtype float64",
        ),
        (
            {"X": np.zeros((4, 1, 8)), "y": np.zeros(3, dtype=int)},
            "y must be [n] with n = len(X) = 4, got shape (3,)",
        ),
        (
            {"X": np.zeros((4, 1, 8)), "y": np.zeros(4, dtype=int), "patient_id": np.arange(4)},
            "y holds one class only (0); a classifier needs at least two",
        ),
        (
            {"X": np.zeros((6, 1, 8)), "y": np.array([0, 1] * 3), "patient_id": np.arange(6) // 3},
            "2 patients leave 1 for the federation after 1 held out",
        ),
        (
            {"X": np.zeros((4, 1, 8)), "y": np.array([0, 1, 0, 1])},
            "no patient_id; add patient_id [n]",
        ),
    ],
)
def test_bad_npz_files_are_explained(tmp_path: Path, arrays: dict, message: str) -> None:
    # Prepare
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    # Execute
    with pytest.raises(DataFileError) as info:
        load_file_data(FileDataConfig(path=path, format=DataFormat.NPZ))
    # Assert
    assert message in str(info.value)


def test_a_csv_with_a_bad_cell_names_line_and_column(tmp_path: Path) -> None:
    # Prepare
    path = _write(tmp_path / "v.csv", "hr,y,patient_id\n70,0,a\nfast,1,b\n")
    # Execute
    with pytest.raises(DataFileError) as info:
        load_file_data(FileDataConfig(path=path, format=DataFormat.CSV))
    # Assert
    assert "line 3, column 'hr': 'fast' is not a number" in str(info.value)


def test_normalisation_uses_the_federations_training_data_only(tmp_path: Path) -> None:
    # Prepare
    path = two_class_windows(tmp_path / "w.npz")
    # Execute
    loaded = load_file_data(FileDataConfig(path=path, format=DataFormat.NPZ))
    pooled = np.concatenate(loaded.data.device_x)
    # Assert: the devices' pooled data is standardised per channel; the held-out set is not
    # used to compute the statistics (so its mean is not exactly zero)
    assert np.allclose(pooled.mean(axis=(0, 2)), 0, atol=1e-4)
    assert np.allclose(pooled.std(axis=(0, 2)), 1, atol=1e-3)
    assert not np.allclose(loaded.data.test_x.mean(axis=(0, 2)), 0, atol=1e-4)
    assert len(loaded.data.device_x) == 10  # 12 patients, 20% (2) held out


# -- learning on your own data ------------------------------------------------------------

MARGIN = 0.25  # above chance (two classes: 0.5), i.e. held-out accuracy >= 0.75


def test_a_tiny_study_on_an_npz_learns(tmp_path: Path) -> None:
    # Prepare
    two_class_windows(tmp_path / "w.npz")
    study = _write(
        tmp_path / "s.yaml",
        "name: npz\ndata: {source: file, path: w.npz}\nwarm_start: {patients: 0}\n"
        "model: {hidden: [8, 16]}\nstrategy: {name: fedbuff, concurrency: 4, buffer_size: 3}\n"
        "evaluation: {target_accuracy: 0.8, every_updates: 6}\n",
    )
    # Execute
    _, final = run_tiny(study, updates=150)
    # Assert
    assert final >= 0.5 + MARGIN


def test_a_tiny_study_on_a_csv_learns(tmp_path: Path) -> None:
    # Prepare
    tabular_csv(tmp_path / "v.csv")
    study = _write(
        tmp_path / "s.yaml",
        "name: csv\ndata: {source: file, path: v.csv, test_patients: 3}\nwarm_start: {patients: 0}\n"
        "model: {hidden: [16]}\nstrategy: {name: fedbuff, concurrency: 4, buffer_size: 3}\n"
        "evaluation: {target_accuracy: 0.8, every_updates: 6}\n",
    )
    # Execute
    sc, _ = load_study_file(study)
    _, final = run_tiny(study, updates=90)
    # Assert: the model was built from the CSV's shape (3 features, one step, MLP)
    assert (sc.in_channels, sc.window, sc.model_kind.value) == (3, 1, "mlp")
    assert final >= 0.5 + MARGIN


def test_simulate_data_runs_your_file_with_small_defaults(tmp_path: Path) -> None:
    # Prepare
    data = two_class_windows(tmp_path / "mine.npz")
    out = tmp_path / "run"
    # Execute
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--data",
            str(data),
            "--executor",
            "serial",
            "--updates",
            "40",
            "--out",
            str(out),
        ],
        env={"COLUMNS": "200"},
    )
    # Assert: the study is named after the file, one device per patient (10 of 12)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["study"] == "mine-ftte"
    assert metrics["scenario"]["devices"] == 10
    assert (metrics["scenario"]["in_channels"], metrics["scenario"]["window"]) == (3, 40)
    assert "time to 0.9:" in result.output and "updates accepted (budget 40)" in result.output
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "accuracy.png", "report.html"}


def test_a_file_study_starts_from_scratch_unless_told_and_dirichlet_needs_no_cohort(
    tmp_path: Path,
) -> None:
    # Prepare
    two_class_windows(tmp_path / "w.npz")
    plain = _write(tmp_path / "a.yaml", "data: {source: file, path: w.npz}\n")
    cohort = _write(
        tmp_path / "b.yaml",
        "data: {source: file, path: w.npz, partition: dirichlet, devices: 4}\n"
        "warm_start: {patients: 3}\n",
    )
    # Execute
    sc, _ = load_study_file(plain)
    with pytest.raises(StudyFileError) as info:
        parse_study_file(cohort)
    # Assert: no patients taken for a warm start by default (10 of 12 become devices)
    assert (sc.pretrain_patients, sc.devices) == (0, 10)
    assert "warm_start.patients needs patient ids (data.partition: by_patient)" in str(info.value)
