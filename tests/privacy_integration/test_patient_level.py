"""Patient-level DP: client-level DP per device, accounted per patient across the study.

A ``client_dp`` study with a per-patient budget gets a privacy guard whose ledger
charges one Gaussian mechanism (noise multiplier z against the merge's 2C/K
sensitivity, no sampling amplification) per task a device is dispatched; the
device is never dispatched past its budget, and the budget report and the
privacy API say that each epsilon protects a patient.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedward.coordinator.engine import DeviceState
from fedward.coordinator.privacy.guard import privacy_guard_of
from fedward.coordinator.privacy.ledger_store import privacy_report, report_from_guard_state
from fedward.coordinator.strategies import ClientUpdate
from fedward.coordinator.study_spec import StudySpec, build_engine
from fedward.privacy.accounting import Accountant, epsilon_for
from fedward.privacy.budget import PrivacyUnit
from fedward.privacy.central import patient_level_step

BUDGET, Z = 8.0, 1.0
SPEC = StudySpec(
    name="patient-dp",
    strategy="client_dp",
    client_dp={"clip_norm": 1.0, "noise_multiplier": Z, "epsilon": BUDGET, "delta": 1e-5},
    width=4,
    window=64,
    concurrency=3,
    buffer_size=3,
)


def _update(engine, order) -> ClientUpdate:
    shapes = {n: v.shape for n, v in engine.params.items()}
    return ClientUpdate(
        device_id=order.device_id,
        task_id=order.task_id,
        base_version=order.model_version,
        subset_id=order.subset.subset_id,
        delta={n: np.full(shapes[n], 0.01, np.float32) for n in order.subset.names},
        num_samples=1,
    )


def _run(devices: int = 3, rounds: int = 60):
    engine = build_engine(SPEC, rng=random.Random(0))
    for i in range(devices):
        engine.enrol(f"p-{i}", device_class="wearable", memory_bytes=20_000, now=0.0)
    now = 1.0
    for _ in range(rounds):
        for order in engine.dispatch(now=now):
            engine.submit(_update(engine, order), now=now + 0.5)
        now += 1.0
    return engine


def test_each_patient_is_charged_per_participation_and_stopped_at_the_budget():
    # Prepare
    one = patient_level_step(noise_multiplier=Z, participations=1)
    affordable = 0
    while epsilon_for([one] * (affordable + 1), delta=1e-5, accountant=Accountant.RDP) <= BUDGET:
        affordable += 1

    # Execute
    engine = _run()

    # Assert
    guard = privacy_guard_of(engine)
    assert guard is not None and guard.unit is PrivacyUnit.PATIENT
    assert guard.task_dp(next(iter(engine.tasks.values()), None)) is None  # no DP-SGD on device
    for device in ("p-0", "p-1", "p-2"):
        assert guard.ledger.history(device) == [one] * affordable
        assert guard.ledger.spent(device) <= BUDGET
        assert engine.devices[device].state is DeviceState.EXHAUSTED
    assert engine.stats.merges == affordable  # three patients, buffer of three


def test_the_report_and_the_privacy_api_say_each_epsilon_protects_a_patient():
    # Prepare
    engine = _run(rounds=3)
    guard = privacy_guard_of(engine)

    # Execute
    live = privacy_report(engine, study_id="patient-dp")
    offline = report_from_guard_state(guard.state_dict(), study_id="patient-dp")

    # Assert
    assert live is not None and live.unit is PrivacyUnit.PATIENT
    assert offline.unit is PrivacyUnit.PATIENT
    assert offline.devices == live.devices
    assert live.devices[0].epsilon_spent == pytest.approx(guard.ledger.spent("p-0"))


def test_a_sample_level_report_says_each_epsilon_protects_a_window():
    # Prepare
    from tests.privacy_integration.budget_helpers import make_dp_study

    study = make_dp_study(devices=1)

    # Execute
    report = privacy_report(study.engine, study_id="dp-unit")

    # Assert
    assert report is not None and report.unit is PrivacyUnit.WINDOW


def test_fedward_budget_report_says_what_each_epsilon_protects(tmp_path):
    # Prepare: a patient-level study's ledger, persisted as the simulator and export do
    import json

    from typer.testing import CliRunner

    from fedward.commands.budget import app as budget_app
    from fedward.coordinator.privacy.ledger_store import ledger_file, save_guard_state

    engine = _run(rounds=3)
    save_guard_state(privacy_guard_of(engine), ledger_file(tmp_path, "patient-dp"))
    out_json = tmp_path / "out.json"

    # Execute
    run = CliRunner().invoke(
        budget_app,
        ["report", "--study", "patient-dp", "--data-dir", str(tmp_path), "--json", str(out_json)],
    )

    # Assert
    assert run.exit_code == 0, run.output
    assert "each epsilon protects a patient" in " ".join(run.output.split())
    assert json.loads(out_json.read_text())["unit"] == "patient"
