"""Limits before work, attacked from outside: a real uvicorn server, raw TCP and httpx.

The regression cases of the API security review (issue 12): a 500 MB body is
refused from its headers alone, a wrong token before a body is sent, a
139-byte study asking for a 2 GB model is 422 without building it,
``memory_bytes: 2**63`` is 422 (was a 500), the device id ``..`` is refused,
and a 405 names the methods the path serves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from fedward.coordinator.api import create_app
from fedward.coordinator.service import StudyService
from fedward.coordinator.study_spec import StudySpec, check_model_size
from tests.coordinator.api_helpers import SMALL, bearer, enrol_body
from tests.coordinator.api_server import raw_request, serving, status_of

HUGE_MODEL = (
    b'{"spec":{"model_kind":"mlp","in_channels":64,'
    b'"window":16384,"width":256,"batch_size":1},"study_id":"huge-model-study"}'
)


@pytest.fixture
def base(settings, service: StudyService) -> Iterator[str]:
    with serving(create_app(settings, service=service)) as url:
        yield url


@pytest.fixture
def admin(token) -> dict[str, str]:
    return bearer(token)


def _post_head(path: str, *, length: int, token: str | None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n").encode()


def test_a_500_mb_body_is_413_from_its_headers_alone(base, token) -> None:
    # Execute: announce 500 MB, send none of it
    answer = raw_request(base, _post_head("/v1/studies", length=500 * 2**20, token=token))
    # Assert
    assert status_of(answer) == 413
    assert b'"error":"body_too_large"' in answer


def test_a_wrong_token_is_401_before_the_body_is_sent(base) -> None:
    # Execute: a body within the limit is announced, never sent
    answer = raw_request(base, _post_head("/v1/studies", length=60_000, token="wrong-token-guess"))
    # Assert
    assert status_of(answer) == 401


def test_a_body_without_length_is_cut_at_the_limit(base, admin, settings) -> None:
    # Prepare: chunked transfer, no Content-Length, twice the limit
    def chunks() -> Iterator[bytes]:
        for _ in range(2 * settings.max_body_bytes // 1024):
            yield b" " * 1024

    # Execute
    r = httpx.post(
        f"{base}/v1/studies",
        content=chunks(),
        headers={**admin, "Content-Type": "application/json"},
        timeout=60,
    )
    # Assert
    assert r.status_code == 413


def test_the_139_byte_huge_model_spec_is_422_before_a_model_is_built(
    base, admin, service, settings
) -> None:
    # Prepare
    assert len(HUGE_MODEL) < 140  # the review's spec was 139 bytes
    blobs_before = sorted(settings.blob_dir.rglob("*")) if settings.blob_dir.exists() else []
    # Execute
    r = httpx.post(
        f"{base}/v1/studies",
        content=HUGE_MODEL,
        headers={**admin, "Content-Type": "application/json"},
        timeout=60,
    )
    # Assert: refused by arithmetic (its step cost, ~5e8 multiply-accumulates, or its size)
    assert r.status_code == 422, r.text
    assert "huge-model-study" not in service.study_ids()
    blobs_after = sorted(settings.blob_dir.rglob("*")) if settings.blob_dir.exists() else []
    assert blobs_after == blobs_before


def test_a_cheap_but_large_model_is_model_too_large(base, admin, service) -> None:
    # Prepare: an MLP whose first layer holds 33.5 M weights (134 MB), cheap per step
    spec = {"model_kind": "mlp", "in_channels": 64, "window": 4096, "width": 64, "batch_size": 1}
    # Execute
    r = httpx.post(
        f"{base}/v1/studies", json={"spec": spec, "study_id": "big"}, headers=admin, timeout=60
    )
    # Assert
    assert r.status_code == 422 and r.json()["error"] == "model_too_large", r.text
    assert "big" not in service.study_ids()


def test_the_model_size_limit_counts_the_real_model() -> None:
    # Prepare
    spec = StudySpec(width=24)
    # Execute
    size = check_model_size(spec, max_bytes=64 * 2**20)
    # Assert: a small model passes with its exact size; a limit just below refuses it
    assert size > 0 and size % 4 == 0
    with pytest.raises(ValueError, match="max_model_bytes"):
        check_model_size(spec, max_bytes=size - 4)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"memory_bytes": 2**63}, "memory_bytes"),
        ({"memory_bytes": 2**45}, "memory_bytes"),
        ({"device_id": ".."}, "device_id"),
        ({"device_id": "."}, "device_id"),
        ({"device_id": "-dev"}, "device_id"),
    ],
)
def test_enrolment_bounds_and_safe_ids(base, admin, change, where) -> None:
    # Prepare
    httpx.post(
        f"{base}/v1/studies", json={"spec": SMALL, "study_id": "s1"}, headers=admin, timeout=120
    )
    # Execute
    r = httpx.post(f"{base}/v1/studies/s1/devices", json={**enrol_body(0), **change}, headers=admin)
    # Assert
    assert r.status_code == 422, r.text
    assert where in json.dumps(r.json()["detail"])


@pytest.mark.parametrize(
    "spec",
    [
        {**SMALL, "name": ".."},
        {**SMALL, "name": "-x"},
        {**SMALL, "model_seed": 2**63},
        {**SMALL, "epochs": 2**70},
        {**SMALL, "window": 2**40},
        {**SMALL, "lr": 1e308},
    ],
)
def test_study_bounds_and_safe_names(base, admin, spec) -> None:
    # Execute
    r = httpx.post(f"{base}/v1/studies", json={"spec": spec}, headers=admin, timeout=60)
    # Assert
    assert r.status_code == 422, r.text


def test_a_405_names_the_methods_of_the_path(base, admin) -> None:
    # Execute
    studies = httpx.delete(f"{base}/v1/studies", headers=admin)
    health = httpx.put(f"{base}/healthz")
    # Assert
    assert studies.status_code == 405 and health.status_code == 405
    assert studies.headers["allow"] == "GET, HEAD, POST"
    assert health.headers["allow"] == "GET, HEAD"
