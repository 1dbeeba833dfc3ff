"""``fedward tokens``: issue (printed once), list, revoke from the host; audited;
refused while the coordinator holds the audit log."""

from __future__ import annotations

from typer.testing import CliRunner

from fedward.cli import app as cli
from fedward.coordinator.api import create_app
from fedward.coordinator.service import StudyService
from tests.coordinator.api_helpers import TestClient, audit_entries, bearer


def test_issue_list_and_revoke_from_the_host(settings) -> None:
    # Prepare
    runner = CliRunner()
    where = ["--database-url", settings.database_url, "--data-dir", str(settings.data_dir)]
    # Execute
    issued = runner.invoke(cli, ["tokens", "issue", "--role", "auditor", "--name", "ann", *where])
    token = issued.stdout.strip().splitlines()[-1]
    token_id = token.split("_")[1]
    service = StudyService.open(settings)
    try:
        with TestClient(create_app(settings, service=service)) as api:
            before = api.get("/v1/audit/public-key", headers=bearer(token)).status_code
    finally:
        service.close()
    listed = runner.invoke(cli, ["tokens", "list", *where])
    revoked = runner.invoke(cli, ["tokens", "revoke", token_id, *where])
    service = StudyService.open(settings)
    try:
        with TestClient(create_app(settings, service=service)) as api:
            after = api.get("/v1/audit/public-key", headers=bearer(token)).status_code
    finally:
        service.close()
    # Assert
    assert issued.exit_code == 0, issued.output
    assert token.startswith("fwt_tk-")
    assert before == 200 and after == 401
    assert token_id in listed.stdout and token not in listed.stdout
    assert revoked.exit_code == 0, revoked.output
    actions = [
        (e["action"], e["actor"]["id"].split("@")[0])
        for e in audit_entries(settings.audit_log_path)
    ]
    assert ("token_issued", "admin:cli") in actions and ("token_revoked", "admin:cli") in actions


def test_refused_while_the_coordinator_holds_the_log(settings, service) -> None:
    # Prepare: the service fixture holds the audit log open, as a running coordinator does
    runner = CliRunner()
    where = ["--database-url", settings.database_url, "--data-dir", str(settings.data_dir)]
    # Execute
    r = runner.invoke(cli, ["tokens", "issue", "--role", "admin", "--name", "eve", *where])
    # Assert
    assert r.exit_code == 3
    assert "POST /v1/tokens" in r.output
