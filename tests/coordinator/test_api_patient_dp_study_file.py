"""A study file with patient-level DP becomes a client_dp study over REST.

``fedward study spec`` prints ``client_dp`` (clip, merge noise, each patient's
epsilon); the create-study route must accept it unchanged and report the
budget as patient-level.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedward.cli import app
from fedward.coordinator.api import create_app
from fedward.coordinator.service import StudyService

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

STUDY = """
name: patient-dp
fleet: {devices: 10}
model: {width: 4}
strategy: {name: client_dp, concurrency: 4, buffer_size: 4}
privacy: {mode: patient, epsilon: 6.0, noise_multiplier: 2.0, clip_norm: 0.3}
stop: {updates: 40}
"""


@pytest.fixture
def client(settings, service: StudyService) -> Iterator[TestClient]:
    with TestClient(create_app(settings, service=service)) as c:
        yield c


def test_a_patient_dp_study_file_is_created_as_a_client_dp_study(client, token, tmp_path: Path):
    # Prepare
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    printed = CliRunner().invoke(app, ["study", "spec", str(study), "--study-id", "pdp-1"])
    assert printed.exit_code == 0, printed.output
    body = json.loads(printed.output)
    auth = {"Authorization": f"Bearer {token}"}
    # Execute
    created = client.post("/v1/studies", json=body, headers=auth)
    budgets = client.get("/v1/studies/pdp-1/privacy", headers=auth)
    # Assert
    assert created.status_code == 201, created.text
    spec = created.json()["spec"]
    assert spec["strategy"] == "client_dp" and spec["privacy"] is None
    assert spec["client_dp"] == {
        "clip_norm": 0.3,
        "noise_multiplier": 2.0,
        "epsilon": 6.0,
        "delta": 1e-5,
    }
    assert budgets.status_code == 200, budgets.text
    assert budgets.json()["unit"] == "patient" and budgets.json()["policy"]["epsilon"] == 6.0
