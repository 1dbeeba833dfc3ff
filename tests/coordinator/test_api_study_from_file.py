"""A study file becomes a study on a running coordinator through the create-study route.

``fedward study spec STUDY.yaml`` prints the POST /v1/studies body; the API
(its strict schema, no coercion) must accept it unchanged and hold the same
spec, stop rule included.
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
name: from-file
fleet: {devices: 10}
model: {width: 4}
strategy: {name: fedbuff, concurrency: 2, buffer_size: 2}
stop: {updates: 40}
"""


@pytest.fixture
def client(settings, service: StudyService) -> Iterator[TestClient]:
    with TestClient(create_app(settings, service=service)) as c:
        yield c


def test_the_study_spec_command_output_creates_the_same_study(client, token, tmp_path: Path):
    # Prepare
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    printed = CliRunner().invoke(app, ["study", "spec", str(study), "--study-id", "ff-1"])
    assert printed.exit_code == 0, printed.output
    body = json.loads(printed.output)
    # Execute
    created = client.post("/v1/studies", json=body, headers={"Authorization": f"Bearer {token}"})
    # Assert
    assert created.status_code == 201, created.text
    spec = created.json()["spec"]
    assert spec["strategy"] == "fedbuff" and spec["width"] == 4
    assert spec["stop"] == {"max_updates": 40, "target_accuracy": None, "when_exhausted": True}
    assert created.json()["id"] == "ff-1"
