"""A study file on windows shorter than 64 samples (or tabular rows) is created over REST.

The models build from one sample up (``fedward.tinytrain.models``), so the
create-study route admits what ``fedward simulate`` and ``fedward up`` run;
its cost caps, not a window floor, stop an abusive spec.
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
from tests.simulation.own_data_helpers import tabular_csv, two_class_windows

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def client(settings, service: StudyService) -> Iterator[TestClient]:
    with TestClient(create_app(settings, service=service)) as c:
        yield c


def _study(tmp_path: Path, data: Path) -> Path:
    study = tmp_path / "study.yaml"
    study.write_text(
        f"name: short\ndata: {{source: file, path: {data}}}\nmodel: {{width: 4}}\n"
        "strategy: {name: fedbuff, concurrency: 2, buffer_size: 2}\nstop: {updates: 20}\n"
    )
    return study


@pytest.mark.parametrize(
    ("make_data", "window"),
    [(lambda d: two_class_windows(d / "w.npz"), 40), (lambda d: tabular_csv(d / "t.csv"), 1)],
    ids=["window-40", "tabular"],
)
def test_a_short_window_study_spec_is_created_over_rest(
    client, token, tmp_path: Path, make_data, window: int
):
    # Prepare
    study = _study(tmp_path, make_data(tmp_path))
    printed = CliRunner().invoke(app, ["study", "spec", str(study), "--study-id", "short-1"])
    assert printed.exit_code == 0, printed.output
    assert "note:" not in printed.output  # no warning that the API would refuse it
    body = json.loads(printed.output)
    assert body["spec"]["window"] == window
    # Execute
    created = client.post("/v1/studies", json=body, headers={"Authorization": f"Bearer {token}"})
    # Assert
    assert created.status_code == 201, created.text
    assert created.json()["spec"]["window"] == window


def test_a_zero_window_is_still_refused(client, token, tmp_path: Path):
    # Prepare
    body = {"spec": {"width": 4, "window": 0, "concurrency": 2, "buffer_size": 2}}
    # Execute
    refused = client.post("/v1/studies", json=body, headers={"Authorization": f"Bearer {token}"})
    # Assert
    assert refused.status_code == 422, refused.text
    assert "window" in refused.text
