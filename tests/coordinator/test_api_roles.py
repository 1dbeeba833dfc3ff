"""Roles and tokens on the REST API: the matrix is enforced on every route (a test
generated from the route table), tokens are hashed, shown once, expire and revoke,
every request's audit entries name its token and role, failed logins are
aggregated in the audit log and rate-limited."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from fedward.coordinator.access import MATRIX, Role
from fedward.coordinator.api import create_app
from fedward.coordinator.api.access import RouteTable
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from tests.coordinator.api_helpers import (
    SMALL,
    TestClient,
    audit_entries,
    bearer,
    enrol_body,
    issue,
)


@pytest.fixture
def api(settings, service: StudyService, clock) -> Iterator[TestClient]:
    with TestClient(create_app(settings, service=service, clock=clock)) as c:
        yield c


@pytest.fixture
def admin(token) -> dict[str, str]:
    return bearer(token)


def _route_table(api: TestClient) -> RouteTable:
    return api.app.state.route_table  # type: ignore[attr-defined]


def _concrete(path: str) -> str:
    return (
        path.replace("{study_id}", "s1")
        .replace("{device_id}", "dev-000")
        .replace("{version}", "0")
        .replace("{token_id}", "tk-000000000000")
    )


# -- the route table -----------------------------------------------------------------
def test_every_v1_route_declares_exactly_one_permission(api) -> None:
    # Prepare
    table = _route_table(api)
    # Execute
    declared = {(e.path, m): e.permissions for e in table.entries for m in e.methods}
    # Assert
    assert declared, "the route table is empty"
    for (path, method), permissions in declared.items():
        if path.startswith("/v1"):
            assert len(permissions) == 1, (method, path, permissions)
        else:
            assert permissions == frozenset(), (method, path)


@pytest.mark.parametrize("role", list(Role))
def test_no_role_can_call_more_than_its_row_of_the_matrix(api, admin, role) -> None:
    # Prepare: one study to address, and a token of the role
    api.post("/v1/studies", json={"spec": SMALL, "study_id": "s1"}, headers=admin)
    headers = bearer(issue(api, admin, role.value))
    table = _route_table(api)
    # Execute: every operation of the table, with an empty body (refusals come first)
    outcomes = {}
    for entry in table.entries:
        if not entry.path.startswith("/v1"):
            continue
        (permission,) = entry.permissions
        for method in sorted(entry.methods - {"HEAD"}):
            r = api.request(method, _concrete(entry.path), headers=headers, json={})
            outcomes[(method, entry.path)] = (permission, r.status_code)
    # Assert: 403 exactly where the matrix withholds the permission
    for (method, path), (permission, status) in outcomes.items():
        allowed = permission in MATRIX[role]
        assert (status == 403) == (not allowed), (role, method, path, status)
        assert status != 401, (method, path)


def test_a_denied_call_is_refused_before_its_body_and_audited(api, admin, settings) -> None:
    # Prepare
    auditor = bearer(issue(api, admin, "auditor", "ann"))
    # Execute: malformed JSON that a route would answer with 422
    r = api.post(
        "/v1/studies", content=b"{not json", headers={**auditor, "Content-Type": "application/json"}
    )
    # Assert
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    denied = [
        e for e in audit_entries(settings.audit_log_path) if e["action"] == "api_access_denied"
    ]
    assert len(denied) == 1
    assert denied[0]["actor"]["id"].startswith("auditor:tk-")
    assert denied[0]["details"]["permission"] == "studies:write"


# -- tokens ----------------------------------------------------------------------------
def test_tokens_are_shown_once_and_stored_only_as_hashes(api, admin, service) -> None:
    # Execute
    r = api.post("/v1/tokens", json={"role": "researcher", "name": "rita"}, headers=admin)
    listed = api.get("/v1/tokens", headers=admin).json()
    # Assert
    body = r.json()
    token = body["token"]
    assert r.status_code == 201 and token.startswith(f"fwt_{body['id']}_")
    assert [t["id"] for t in listed] == [body["id"]] and "token" not in listed[0]
    with service.repository.engine.connect() as conn:
        rows = [tuple(map(str, row)) for row in conn.execute(text("SELECT * FROM api_tokens"))]
    assert not any(token in cell or token.split("_")[-1] in cell for row in rows for cell in row)
    assert api.get("/v1/studies", headers=bearer(token)).status_code == 200


def test_a_revoked_token_is_refused(api, admin, settings) -> None:
    # Prepare
    r = api.post("/v1/tokens", json={"role": "researcher", "name": "rob"}, headers=admin)
    token, token_id = r.json()["token"], r.json()["id"]
    # Execute
    revoked = api.post(f"/v1/tokens/{token_id}/revoke", headers=admin)
    after = api.get("/v1/studies", headers=bearer(token))
    # Assert
    assert (
        revoked.json()["state"] == "revoked" and revoked.json()["revoked_by"] == "admin:bootstrap"
    )
    assert after.status_code == 401
    actions = [e["action"] for e in audit_entries(settings.audit_log_path)]
    assert actions.count("token_issued") == 1 and actions.count("token_revoked") == 1


def test_a_token_expires(api, admin, clock) -> None:
    # Prepare
    r = api.post(
        "/v1/tokens", json={"role": "auditor", "name": "brief", "lifetime_s": 120}, headers=admin
    )
    token = bearer(r.json()["token"])
    before = api.get("/v1/audit/public-key", headers=token).status_code
    # Execute
    clock.advance(121)
    after = api.get("/v1/audit/public-key", headers=token)
    # Assert
    assert before == 200
    assert after.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"role": "device", "name": "x"},
        {"role": "admin", "name": "../x"},
        {"role": "admin", "name": "x", "lifetime_s": 10},
        {"role": "admin", "name": "x", "lifetime_s": 1e12},
        {"role": "admin", "name": "x", "lifetime_s": True},
    ],
)
def test_malformed_token_requests_are_422(api, admin, body) -> None:
    # Execute
    r = api.post("/v1/tokens", json=body, headers=admin)
    # Assert
    assert r.status_code == 422, r.text


# -- attribution -------------------------------------------------------------------------
def test_every_entry_a_request_causes_names_its_token_and_role(
    api, admin, service, fleet, settings
) -> None:
    # Prepare
    researcher = bearer(issue(api, admin, "researcher", "rita"))
    # Execute
    api.post("/v1/studies", json={"spec": SMALL, "study_id": "s1"}, headers=researcher)
    for i in range(2):
        api.post("/v1/studies/s1/devices", json=enrol_body(i), headers=admin)
    api.post("/v1/studies/s1/start", headers=researcher)
    for out in service.dispatch("s1"):
        service.submit_update("s1", fleet.train(out))
    api.get("/v1/studies/s1/models/1", headers=researcher)
    api.post("/v1/studies/s1/evaluations", json={"version": 1, "accuracy": 0.5}, headers=researcher)
    # Assert
    entries = audit_entries(settings.audit_log_path)
    by_action: dict[str, list[dict]] = {}
    for e in entries:
        by_action.setdefault(e["action"], []).append(e)
    rita = by_action["study_created"][0]["actor"]
    assert rita["kind"] == "operator" and rita["id"].startswith("researcher:tk-")
    for action in ("study_started", "model_downloaded", "evaluation_reported"):
        assert [e["actor"] for e in by_action[action]] == [rita], action
    enrolled = by_action["device_enrolled"]
    assert [e["actor"] for e in enrolled] == [{"kind": "operator", "id": "admin:bootstrap"}] * 2
    assert by_action["model_downloaded"][0]["details"]["model_version"] == 1
    assert by_action["evaluation_reported"][0]["details"]["accuracy"] == 0.5


# -- failed logins -------------------------------------------------------------------------
@pytest.fixture
def strict_settings(sqlite_url, tmp_path) -> CoordinatorSettings:
    return CoordinatorSettings(
        database_url=sqlite_url,
        data_dir=tmp_path / "data",
        operator_token="t0k3n-For-Tests-9f8e7d6c5b4a",
        auth_max_failures=20,
        auth_interval_s=60,
        auth_lockout_s=300,
    )


def test_failed_logins_are_rate_limited_and_audited_in_aggregate(strict_settings, clock) -> None:
    # Prepare
    service = StudyService.open(strict_settings, clock=clock, seed=7)
    admin = bearer("t0k3n-For-Tests-9f8e7d6c5b4a")
    try:
        with TestClient(create_app(strict_settings, service=service, clock=clock)) as api:
            # Execute: 2,000 wrong tokens in a row from one source
            codes = [
                api.get("/v1/studies", headers=bearer(f"wrong-{i:05d}-guess")).status_code
                for i in range(2_000)
            ]
            locked_admin = api.get("/v1/studies", headers=admin)
            clock.advance(301)
            later_admin = api.get("/v1/studies", headers=admin)
            api.get("/v1/studies", headers=bearer("one-more-wrong-guess"))
            metrics = api.get("/metrics").text
    finally:
        service.close()
    # Assert
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
    assert locked_admin.status_code == 429 and int(locked_admin.headers["retry-after"]) > 0
    assert later_admin.status_code == 200
    failed = [
        e for e in audit_entries(strict_settings.audit_log_path) if e["action"] == "api_auth_failed"
    ]
    notes = [(e["details"]["note"], e["details"]["failures"]) for e in failed]
    assert notes == [
        ("first_failure", 1),
        ("source_locked", 20),
        ("interval_summary", 2_001),
        ("first_failure", 1),
    ]
    assert {e["details"]["source"] for e in failed} == {"testclient"}
    assert "fedward_api_auth_failures_total 21.0" in metrics  # tokens checked and wrong
    assert "fedward_api_locked_out_total 1981.0" in metrics  # refused unread while locked


def test_a_missing_token_is_401_without_counting_as_a_guess(api, settings) -> None:
    # Execute
    codes = {api.get("/v1/studies").status_code for _ in range(30)}
    # Assert
    assert codes == {401}
    assert not [
        e for e in audit_entries(settings.audit_log_path) if e["action"] == "api_auth_failed"
    ]


# -- metrics ---------------------------------------------------------------------------------
def test_metrics_list_study_ids_only_to_a_token_allowed_to_read_them(api, admin) -> None:
    # Prepare
    api.post("/v1/studies", json={"spec": SMALL, "study_id": "secret-study"}, headers=admin)
    auditor = bearer(issue(api, admin, "auditor"))
    researcher = bearer(issue(api, admin, "researcher"))
    # Execute
    anonymous = api.get("/metrics").text
    as_auditor = api.get("/metrics", headers=auditor).text
    as_researcher = api.get("/metrics", headers=researcher).text
    wrong = api.get("/metrics", headers=bearer("not-a-real-token-at-all"))
    # Assert
    assert "secret-study" not in anonymous and "secret-study" not in as_auditor
    assert 'study="secret-study"' in as_researcher
    assert wrong.status_code == 401


@pytest.mark.postgres
def test_tokens_issue_check_and_revoke_on_postgresql(pg_url, tmp_path, clock) -> None:
    # Prepare
    settings = CoordinatorSettings(
        database_url=pg_url,
        data_dir=tmp_path / "data",
        operator_token="t0k3n-For-Tests-9f8e7d6c5b4a",
    )
    service = StudyService.open(settings, clock=clock, seed=7)
    admin = bearer("t0k3n-For-Tests-9f8e7d6c5b4a")
    try:
        with TestClient(create_app(settings, service=service, clock=clock)) as api:
            # Execute
            r = api.post("/v1/tokens", json={"role": "researcher", "name": "pg"}, headers=admin)
            token, token_id = r.json()["token"], r.json()["id"]
            before = api.get("/v1/studies", headers=bearer(token)).status_code
            api.post(f"/v1/tokens/{token_id}/revoke", headers=admin)
            after = api.get("/v1/studies", headers=bearer(token)).status_code
            again = api.post(f"/v1/tokens/{token_id}/revoke", headers=admin)
            missing = api.post("/v1/tokens/tk-000000000000/revoke", headers=admin)
    finally:
        service.close()
    # Assert
    assert (before, after) == (200, 401)
    assert again.status_code == 200 and again.json()["state"] == "revoked"
    assert missing.status_code == 404 and missing.json()["error"] == "token_not_found"
