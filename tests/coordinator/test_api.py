"""The REST API through FastAPI's TestClient: auth, 404/409/422, the flow, probes, OpenAPI."""

from __future__ import annotations

import base64
import hashlib
import warnings
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from fedward.coordinator.api import create_app
from fedward.coordinator.service import StudyService
from fedward.protocol.messages import ModelDownload, decode_frame

with warnings.catch_warnings():  # starlette's note about httpx2; the client works as is
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SMALL = {"width": 4, "window": 64, "concurrency": 2, "buffer_size": 2}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def client(settings, service: StudyService) -> Iterator[TestClient]:
    with TestClient(create_app(settings, service=service)) as c:
        yield c


@pytest.fixture
def auth(token) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create(client: TestClient, auth: dict[str, str], study_id: str = "s1") -> dict:
    r = client.post("/v1/studies", json={"spec": SMALL, "study_id": study_id}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()


def enrol_body(index: int, *, key: bytes | None = None) -> dict:
    return {
        "device_id": f"dev-{index:03d}",
        "device_class": "phone",
        "memory_bytes": 20_000,
        "public_key": b64(key if key is not None else bytes([index + 1]) * 32),
    }


# -- auth ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": "Basic abc"}],
    ids=["missing", "wrong", "basic"],
)
def test_operator_endpoints_need_the_bearer_token(client, headers) -> None:
    # Execute
    responses = [
        client.get("/v1/studies", headers=headers),
        client.post("/v1/studies", json={"spec": SMALL}, headers=headers),
        client.get("/v1/studies/s1/models/0", headers=headers),
    ]
    # Assert
    for r in responses:
        assert r.status_code == 401
        assert r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"


def test_probes_need_no_token(client) -> None:
    # Execute / Assert
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/metrics").status_code == 200


# -- the operator flow ---------------------------------------------------------
def test_create_enrol_start_and_inspect(client, auth, service, fleet) -> None:
    # Prepare
    created = create(client, auth)
    # Execute
    enrolled = [
        client.post("/v1/studies/s1/devices", json=enrol_body(i), headers=auth) for i in range(2)
    ]
    started = client.post("/v1/studies/s1/start", headers=auth)
    for out in service.dispatch("s1"):  # devices answer through the service (as the bridge does)
        service.submit_update("s1", fleet.train(out))
    status = client.get("/v1/studies/s1/status", headers=auth)
    versions = client.get("/v1/studies/s1/models", headers=auth)
    download = client.get("/v1/studies/s1/models/1", headers=auth)
    # Assert
    assert created["state"] == "draft" and created["spec"]["width"] == 4
    assert [r.status_code for r in enrolled] == [201, 201]
    assert enrolled[0].json()["public_key"] == (b"\x01" * 32).hex()
    assert started.json()["state"] == "running"
    body = status.json()
    assert (body["model_version"], body["merges"], body["updates_accepted"]) == (1, 1, 2)
    assert body["devices_by_state"] == {"idle": 2}
    assert [v["version"] for v in versions.json()] == [0, 1]
    assert download.headers["content-type"] == "application/octet-stream"
    header, tensors = decode_frame(download.content, max_bytes=1 << 24)
    assert isinstance(header, ModelDownload) and header.model_version == 1
    payload = download.content[-len(service.model_blob("s1", 1)) :]
    assert hashlib.sha256(payload).hexdigest() == download.headers["x-content-sha256"]
    assert download.headers["x-content-sha256"] == versions.json()[1]["sha256"]
    assert set(tensors) == set(header.names)


def test_lifecycle_conflicts_are_409(client, auth) -> None:
    # Prepare
    create(client, auth)
    # Execute
    again = client.post("/v1/studies", json={"spec": SMALL, "study_id": "s1"}, headers=auth)
    resume = client.post("/v1/studies/s1/resume", headers=auth)
    client.post("/v1/studies/s1/stop", headers=auth)
    start = client.post("/v1/studies/s1/start", headers=auth)
    # Assert
    assert again.status_code == 409 and again.json()["error"] == "study_exists"
    assert resume.status_code == 409 and resume.json()["error"] == "invalid_transition"
    assert start.status_code == 409


def test_enrol_refusals_are_409_and_revocation_works(client, auth) -> None:
    # Prepare
    create(client, auth)
    client.post("/v1/studies/s1/devices", json=enrol_body(0), headers=auth)
    # Execute
    same = client.post("/v1/studies/s1/devices", json=enrol_body(0), headers=auth)
    other = client.post(
        "/v1/studies/s1/devices", json=enrol_body(0, key=b"\x09" * 32), headers=auth
    )
    revoked = client.post("/v1/studies/s1/devices/dev-000/revoke", headers=auth)
    listed = client.get("/v1/studies/s1/devices", headers=auth)
    # Assert
    assert same.status_code == 201
    assert other.status_code == 409 and other.json()["error"] == "enrol_refused"
    assert revoked.json()["state"] == "revoked" and revoked.json()["revoked"] is True
    assert [d["state"] for d in listed.json()] == ["revoked"]


# -- 404 and 422 -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "error"),
    [
        ("get", "/v1/studies/nope", "study_not_found"),
        ("get", "/v1/studies/nope/status", "study_not_found"),
        ("post", "/v1/studies/nope/start", "study_not_found"),
        ("get", "/v1/studies/nope/devices", "study_not_found"),
        ("post", "/v1/studies/s1/devices/ghost/revoke", "device_not_found"),
        ("get", "/v1/studies/s1/models/9", "model_version_not_found"),
        ("get", "/v1/nothing-here", "not_found"),
    ],
)
def test_missing_things_are_404(client, auth, method, path, error) -> None:
    # Prepare
    create(client, auth)
    # Execute
    r = getattr(client, method)(path, headers=auth)
    # Assert
    assert r.status_code == 404
    assert r.json()["error"] == error


@pytest.mark.parametrize(
    "body",
    [
        {"spec": {**SMALL, "width": True}},
        {"spec": {**SMALL, "width": "4"}},
        {"spec": {**SMALL, "lr": "0.1"}},
        {"spec": {**SMALL, "unknown": 1}},
        {"spec": {**SMALL, "strategy": "sgd"}},
        {"spec": {**SMALL, "window": 0}},
        {"spec": SMALL, "study_id": "../etc"},
        {"spec": SMALL, "extra": 1},
        [],
        "text",
    ],
)
def test_malformed_study_bodies_are_422(client, auth, body) -> None:
    # Execute
    r = client.post("/v1/studies", json=body, headers=auth)
    # Assert
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error"
    assert isinstance(r.json()["detail"], list)


@pytest.mark.parametrize(
    "change",
    [
        {"memory_bytes": True},
        {"memory_bytes": "20000"},
        {"memory_bytes": 0},
        {"device_class": "toaster"},
        {"public_key": "not base64!"},
        {"public_key": b64(b"short")},
        {"device_id": "has/slash"},
        {"extra": 1},
    ],
)
def test_malformed_enrol_bodies_are_422(client, auth, change) -> None:
    # Prepare
    create(client, auth)
    # Execute
    r = client.post("/v1/studies/s1/devices", json={**enrol_body(0), **change}, headers=auth)
    # Assert
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error"


def test_malformed_paths_and_raw_bodies_are_422(client, auth) -> None:
    # Prepare
    create(client, auth)
    # Execute
    responses = [
        client.get("/v1/studies/s1/models/-1", headers=auth),
        client.get("/v1/studies/s1/models/abc", headers=auth),
        client.get("/v1/studies/-bad/status", headers=auth),
        client.post(
            "/v1/studies",
            content=b"{not json",
            headers={**auth, "Content-Type": "application/json"},
        ),
        client.post(
            "/v1/studies",
            content=b"\xff\xfe\x00",
            headers={**auth, "Content-Type": "application/json"},
        ),
        client.post("/v1/studies/s1/evaluations", json={"version": 0, "accuracy": 2}, headers=auth),
        client.post(
            "/v1/studies/s1/evaluations", json={"version": 0, "accuracy": True}, headers=auth
        ),
    ]
    # Assert
    assert [r.status_code for r in responses] == [422] * len(responses)
    assert {r.json()["error"] for r in responses} == {"validation_error"}


# -- probes and metrics ----------------------------------------------------------
def test_readyz_is_503_when_the_schema_is_not_at_head(client, service) -> None:
    # Prepare
    with service.repository.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    # Execute
    r = client.get("/readyz")
    # Assert
    assert r.status_code == 503 and r.json()["error"] == "not_ready"
    assert client.get("/healthz").status_code == 200


def test_metrics_report_the_service_counters(client, auth, service, fleet) -> None:
    # Prepare
    create(client, auth)
    for i in range(2):
        client.post("/v1/studies/s1/devices", json=enrol_body(i), headers=auth)
    client.post("/v1/studies/s1/start", headers=auth)
    outs = service.dispatch("s1")
    service.submit_update("s1", fleet.train(outs[0]))
    service.submit_update("s1", b"junk")
    # Execute
    body = client.get("/metrics", headers=auth).text
    anonymous = client.get("/metrics").text
    # Assert
    assert "s1" not in anonymous  # no study ids to anyone unauthenticated
    assert "fedward_updates_accepted_total 1.0" in anonymous
    assert 'fedward_updates_rejected_total{reason="malformed"} 1.0' in anonymous
    assert 'fedward_updates_accepted_total{study="s1"} 1.0' in body
    assert 'fedward_updates_rejected_total{reason="malformed",study="s1"} 1.0' in body
    assert 'fedward_tasks_dispatched_total{study="s1"} 2.0' in body
    assert 'fedward_tasks_in_flight{study="s1"} 1.0' in body
    assert 'fedward_merges_total{study="s1"} 0.0' in body


def test_each_app_has_its_own_metrics_registry(settings, service) -> None:
    # Prepare / Execute
    first, second = create_app(settings, service=service), create_app(settings, service=service)
    # Assert
    assert first.state.metrics is not second.state.metrics


# -- OpenAPI ---------------------------------------------------------------------
def test_every_operation_documents_its_responses(client) -> None:
    # Execute
    schema = client.get("/openapi.json").json()
    # Assert
    for path, item in schema["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            ok = {"200", "201"} & codes
            assert ok, (method, path)
            content = op["responses"][ok.pop()].get("content", {})
            assert content, (method, path)
            if path.startswith("/v1"):
                assert {"401", "422"} <= codes, (method, path)
                error_schema = op["responses"]["401"]["content"]["application/json"]["schema"]
                assert error_schema["$ref"].endswith("/ErrorBody")
            if "{study_id}" in path:
                assert "404" in codes, (method, path)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
