"""Issue 9 items 6 and 7: privacy settings that would take the coordinator down are refused.

Each request is a schema-valid ``POST /v1/studies`` from a real HTTP client
(FastAPI's TestClient over the ASGI app). Before the fix, noise multiplier
0.02 under PRV was accepted (201) and then slowed every route to 20-60 s,
1e-200 gave a 500 from ``/privacy``, and a mechanism whose single task costs
epsilon 8.88 against a budget of 8 was accepted and ended with 0 updates.
Now each is refused with 422, within a second, saying why, and nothing is
created.

"Within a second" is what a user sees; the bug it guards against is a route
that hangs for 20-60 s. The test warms the app up first (the first privacy
check imports Opacus' accountants, over a second on a loaded 2-core machine)
and allows 5 s, far under the hang and far over a warmed refusal.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator

import pytest

from fedward.coordinator.api import create_app
from fedward.coordinator.privacy.settings import FIRST_TASK_SECONDS
from fedward.coordinator.service import StudyService

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SMALL = {"width": 4, "window": 64, "concurrency": 2, "buffer_size": 2}
PRIVACY = {
    "epsilon": 8.0,
    "delta": 1e-5,
    "noise_multiplier": 1.5,
    "max_grad_norm": 1.0,
    "sample_rate": 0.25,
    "steps_per_task": 8,
}


HANG_S = 5.0  # the refusals took 20-60 s before the fix


@pytest.fixture
def client(settings, service: StudyService, token) -> Iterator[TestClient]:
    with TestClient(create_app(settings, service=service)) as c:
        # warm-up: one refused request, untimed, so the import is not what is timed
        body = {
            "spec": {
                **SMALL,
                "privacy": {**PRIVACY, "noise_multiplier": 0.02, "accountant": "prv"},
            },
            "study_id": "warm",
        }
        c.post("/v1/studies", json=body, headers={"Authorization": f"Bearer {token}"})
        yield c


@pytest.fixture
def auth(token) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _post(client, auth, study_id: str, **privacy):
    body = {"spec": {**SMALL, "privacy": {**PRIVACY, **privacy}}, "study_id": study_id}
    started = time.monotonic()
    response = client.post("/v1/studies", json=body, headers=auth)
    return response, time.monotonic() - started


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"noise_multiplier": 0.02, "accountant": "prv"}, "noise_multiplier"),
        ({"noise_multiplier": 1e-200}, "noise_multiplier"),
        ({"noise_multiplier": 1e300}, "noise_multiplier"),
        ({"epsilon": 1e6}, "epsilon"),
        ({"steps_per_task": 10**9}, "steps_per_task"),
        ({"sample_rate": 1e-300}, "sample_rate"),
        ({"delta": 1e-300}, "delta"),
    ],
)
def test_unsafe_privacy_settings_are_refused_with_422_within_a_second(client, auth, change, says):
    # Execute
    response, took = _post(client, auth, "dp-bad", **change)

    # Assert
    assert response.status_code == 422, response.text
    assert says in response.text
    assert took < HANG_S
    assert client.get("/v1/studies", headers=auth).json() == []


def test_a_mechanism_whose_first_task_exceeds_the_budget_is_refused_with_the_figure(client, auth):
    # Prepare: one task costs epsilon 9.187 > 8: no device could ever train (item 7)
    change = {"noise_multiplier": 0.8, "sample_rate": 0.25, "steps_per_task": 8}

    # Execute
    response, took = _post(client, auth, "dp-over", **change)

    # Assert: one RDP evaluation, in the child, bounded by the limit
    assert response.status_code == 422, response.text
    assert "one task costs epsilon 9.187" in response.text and "budget 8" in response.text
    assert took < FIRST_TASK_SECONDS + 0.5
    assert client.get("/v1/studies", headers=auth).json() == []


def test_a_mechanism_whose_epsilon_overruns_the_time_limit_is_refused(client, auth):
    # Prepare: within every bound, but PRV over 10,000 steps takes tens of seconds
    change = {"accountant": "prv", "noise_multiplier": 0.5, "sample_rate": 0.5}

    # Execute
    response, took = _post(client, auth, "dp-slow", steps_per_task=10_000, **change)

    # Assert: refused after the limit (2 s), the computation stopped, nothing created
    assert response.status_code == 422, response.text
    assert "takes more than" in response.text and "RDP" in response.text
    assert took < 10.0
    assert client.get("/v1/studies", headers=auth).json() == []


def test_sound_privacy_settings_are_accepted(client, auth):
    # Execute
    response, _ = _post(client, auth, "dp-good")

    # Assert
    assert response.status_code == 201, response.text
    assert response.json()["id"] == "dp-good"
