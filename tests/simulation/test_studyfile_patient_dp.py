"""A study file's patient-level DP (privacy.mode patient, strategy client_dp).

It maps onto the coordinator's client_dp settings (clip, merge noise, each
patient's epsilon: ``PatientPrivacy``), runs in the simulator under a privacy
guard that stops each patient at the budget, and a mistaken combination is
refused with a message naming the key and the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedward.coordinator.privacy.settings import PatientPrivacy
from fedward.simulation.executor import make_executor
from fedward.simulation.study import Study
from fedward.simulation.studyfile import (
    StudyFile,
    StudyFileError,
    load_study_file,
    parse_study_file,
)

PATIENT = (
    "name: pdp\nfleet: {devices: 8}\ndata: {min_windows: 8, max_windows: 12, test_patients: 4}\n"
    "warm_start: {patients: 0}\nmodel: {width: 4}\n"
    "strategy: {name: client_dp, concurrency: 4, buffer_size: 4}\n"
    "privacy: {mode: patient, epsilon: 4.0, delta: 1.0e-6, noise_multiplier: 2.0, "
    "clip_norm: 0.25}\nevaluation: {windows: 40, every_updates: 4}\nstop: {updates: 400}\n"
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_patient_dp_round_trips_onto_the_coordinators_client_dp(tmp_path: Path) -> None:
    # Prepare
    path = _write(tmp_path / "s.yaml", PATIENT)
    study = parse_study_file(path)
    again = _write(tmp_path / "again.yaml", yaml.safe_dump(study.model_dump(mode="json")))
    # Execute
    sc, run = load_study_file(again)
    spec = sc.study_spec(run)
    # Assert
    assert parse_study_file(again) == study
    assert (run.value, spec.strategy.value, spec.privacy) == ("client_dp", "client_dp", None)
    assert spec.client_dp is not None
    assert spec.client_dp.model_dump() == {
        "clip_norm": 0.25,
        "noise_multiplier": 2.0,
        "epsilon": 4.0,
        "delta": 1e-6,
    }
    assert isinstance(spec.client_dp.patient_privacy(), PatientPrivacy)


def test_the_simulator_stops_each_patient_at_the_budget(tmp_path: Path) -> None:
    # Prepare: epsilon 4 at z 2 buys each patient two or three participations
    sc, run = load_study_file(_write(tmp_path / "s.yaml", PATIENT))
    pool = make_executor("serial", sc.data_config(), sc.study_spec(run).model_settings())
    study = Study(sc, run, executor=pool)
    # Execute
    result = study.run()
    # Assert: the budget, not the update cap, ended it, and no patient passed epsilon
    guard = study.guard
    assert guard is not None
    spent = [guard.ledger.spent(d) for d in guard.ledger.devices()]
    assert len(spent) == 8 and max(spent) <= 4.0 + 1e-9
    assert 0 < result.updates < 400 and result.exhausted_devices == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "privacy: {mode: patient}\nstrategy: {name: ftte}\n",
            "privacy.mode patient and strategy.name client_dp go together",
        ),
        (
            "strategy: {name: client_dp}\n",
            "privacy.mode patient and strategy.name client_dp go together",
        ),
        (
            "privacy: {mode: patient, sample_rate: 0.1}\nstrategy: {name: client_dp}\n",
            "privacy: sample_rate belong(s) to mode dp_sgd",
        ),
        (
            "privacy: {mode: dp_sgd, clip_norm: 1.0}\nstrategy: {name: ftte+dp}\n",
            "privacy: clip_norm belongs to mode patient",
        ),
        (
            "privacy: {mode: patient, accountant: prv}\nstrategy: {name: client_dp}\n",
            "remove privacy.accountant or set it to rdp",
        ),
        (
            "privacy: {mode: patient, noise_multiplier: 0.05}\nstrategy: {name: client_dp}\n",
            "raise privacy.noise_multiplier",
        ),
        (
            "privacy: {mode: patient, epsilon: 500}\nstrategy: {name: client_dp}\n",
            "privacy.epsilon: Input should be less than or equal to 100",
        ),
    ],
)
def test_a_mistaken_patient_dp_section_is_refused_with_the_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    # Prepare
    path = _write(tmp_path / "bad.yaml", text)
    # Execute
    with pytest.raises(StudyFileError) as info:
        parse_study_file(path)
    # Assert
    assert message in str(info.value)


def test_the_reference_documents_the_patient_mode() -> None:
    # Prepare
    doc = (Path(__file__).resolve().parents[2] / "docs" / "study-file.md").read_text()
    # Execute
    fields = StudyFile.model_fields["privacy"].annotation.model_fields
    # Assert
    assert "clip_norm" in fields and "patient" in doc and "client_dp" in doc
