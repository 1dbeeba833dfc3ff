"""The coordinator's audit log across stops, crashes and broken studies.

* ``fedward coordinator serve`` stopped with SIGTERM (how Kubernetes stops a
  pod) closes the service: the last entries are covered by a final signed head;
  ``fedward audit verify --record`` beside it verifies read-only, no traceback.
* Tree heads are signed on a timer, and the newest can be fetched.
* A torn last audit line no longer stops a restart: it is cut off and audited.
* The database defaults inside the data dir: two coordinators started from one
  folder with different data dirs do not share one.
* A study that cannot be restored is failed and audited; the others serve.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fedward.cli import app
from fedward.compliance import (
    Actor,
    ActorKind,
    AuditAction,
    AuditLog,
    Outcome,
    latest_tree_head,
    load_or_create_signing_key,
    verify_log,
)
from fedward.coordinator.service import StudyRestoreFailed, StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.protocol.messages import AckStatus

ROOT = Path(__file__).resolve().parents[2]


def entries(settings: CoordinatorSettings) -> list[dict]:
    return [json.loads(line) for line in settings.audit_log_path.read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 120  # a shared 2-core machine: generous, not a timing claim
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve never became healthy")


# -- SIGTERM -----------------------------------------------------------------------
def test_sigterm_closes_serve_with_a_final_signed_head(tmp_path, token) -> None:
    # Prepare: a data dir whose log ends in an entry no head signs yet
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True, mode=0o700)
    (data / "audit").mkdir(mode=0o700)
    key = load_or_create_signing_key(data / "keys" / "audit-signing-key.pem")
    log_path = data / "audit" / "coordinator.jsonl"
    with AuditLog.open(log_path, signing_key=key, clock=time.time, sign_on_close=False) as log:
        log.append(
            actor=Actor(kind=ActorKind.OPERATOR, id="alice"),
            action=AuditAction.LOG_VERIFIED,
            outcome=Outcome.SUCCESS,
        )
    assert verify_log(log_path, key.public_key()).unsigned_entries == 1
    token_file = tmp_path / "token"
    token_file.write_text(token)
    port = free_port()
    env = {**os.environ, "FEDWARD_AUDIT_SIGN_INTERVAL_S": "0"}  # only the stop may sign
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "fedward"), "coordinator", "serve", "--no-bridge"]
        + ["--data-dir", str(data), "--port", str(port), "--operator-token-file", str(token_file)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_healthy(proc, port)
        # Execute: an auditor verifies (and asks to record) beside the running coordinator
        beside = CliRunner().invoke(app, ["audit", "verify", "--data-dir", str(data), "--record"])
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = verify_log(log_path, key.public_key())
    # Assert: verified read-only, refused to record with a message, no traceback
    assert beside.exception is None or isinstance(beside.exception, SystemExit)
    assert beside.exit_code == 3 and "intact" in beside.output and "not recorded" in beside.output
    # ... and the stop was graceful: exit 0, every entry under a signed head
    assert proc.returncode == 0, stderr
    assert report.ok and report.unsigned_entries == 0 and report.entries >= 1
    assert report.latest_tree_head is not None
    assert report.latest_tree_head.tree_size == report.entries
    assert not (tmp_path / "fedward-data").exists()  # the database went into the data dir
    assert (data / "coordinator.db").is_file()


# -- timer and the latest head ----------------------------------------------------
def test_tree_heads_are_signed_on_a_timer_and_the_latest_can_be_fetched(
    tmp_path, clock, start_study, token
) -> None:
    # Prepare
    settings = CoordinatorSettings(
        data_dir=tmp_path / "data", operator_token=token, audit_sign_interval_s=0.05
    )
    service = StudyService.open(settings, clock=clock, seed=7)
    try:
        # Execute: a study's entries, then wait for the timer (no entry count reached)
        start_study(service, devices=2)
        written = len(entries(settings))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            head = service.latest_tree_head
            if head is not None and head.tree_size == written:
                break
            time.sleep(0.05)
        fetched = latest_tree_head(settings.audit_log_path, service.audit_public_key)
        cli = CliRunner().invoke(app, ["audit", "head", "--data-dir", str(settings.data_dir)])
    finally:
        service.close()
    # Assert: the timer signed every entry; library and CLI fetch that head
    assert head is not None and head.tree_size == written > 0
    assert fetched == head
    assert cli.exit_code == 0 and json.loads(cli.output)["root_hash"] == head.root_hash


# -- a torn last line --------------------------------------------------------------
def test_a_torn_last_audit_line_is_repaired_at_start_and_audited(
    service, settings, clock, start_study
) -> None:
    # Prepare: a crash halfway through an entry
    sid = start_study(service, devices=1)
    service.close()
    whole = settings.audit_log_path.read_bytes()
    fragment = b'{"action":"task_dispatched","act'
    settings.audit_log_path.write_bytes(whole + fragment)
    # Execute
    reopened = StudyService.open(settings, clock=clock, seed=7)
    try:
        status = reopened.status(sid)
    finally:
        reopened.close()
    logged = entries(settings)
    # Assert: it starts, the repair is the next entry, the log verifies
    assert status.state.value == "running"
    assert settings.audit_log_path.read_bytes().startswith(whole)
    repair = logged[len(whole.splitlines())]
    assert repair["action"] == "log_repaired" and repair["actor"]["kind"] == "coordinator"
    assert repair["details"]["removed_bytes"] == len(fragment)
    assert verify_log(settings.audit_log_path, reopened.audit_public_key).ok


# -- the database lives in the data dir -----------------------------------------------
def test_two_coordinators_from_one_folder_with_different_data_dirs_share_no_database(
    tmp_path, monkeypatch, clock, token, spec
) -> None:
    # Prepare: one working directory, two data dirs, no database URL given
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDWARD_DATABASE_URL", raising=False)
    first = StudyService.open(
        CoordinatorSettings(data_dir=Path("site-a"), operator_token=token), clock=clock, seed=7
    )
    # Execute
    try:
        first.create_study(spec, study_id="only-in-a")
        second = StudyService.open(
            CoordinatorSettings(data_dir=Path("site-b"), operator_token=token), clock=clock, seed=7
        )
        try:
            seen_by_second = [s.id for s in second.list_studies()]
        finally:
            second.close()
    finally:
        first.close()
    # Assert
    assert seen_by_second == []
    assert (tmp_path / "site-a" / "coordinator.db").is_file()
    assert (tmp_path / "site-b" / "coordinator.db").is_file()
    assert not (tmp_path / "fedward-data").exists()


# -- a study that cannot be restored -------------------------------------------------
def test_a_study_that_cannot_be_restored_is_failed_and_audited_while_the_others_serve(
    service, settings, clock, start_study, fleet, spec
) -> None:
    # Prepare: two studies (other initial models); one's blob vanishes while it is down
    broken = service.create_study(spec.model_copy(update={"model_seed": 99}), study_id="broken").id
    healthy = start_study(service, devices=2, study_id="healthy")
    sha = service.model_versions(broken)[0].sha256
    service.close()
    (settings.blob_dir / "sha256" / sha[:2] / sha).unlink()
    # Execute
    reopened = StudyService.open(settings, clock=clock, seed=7)
    try:
        acks = [reopened.submit_update(healthy, fleet.train(o)) for o in reopened.dispatch(healthy)]
        served = [s.id for s in reopened.list_studies()]
        failed = reopened.failed_studies()
        with pytest.raises(StudyRestoreFailed, match="BlobNotFound"):
            reopened.dispatch(broken)
        kept = reopened.repository.study(broken)
    finally:
        reopened.close()
    logged = entries(settings)
    # Assert: the healthy study merged; the broken one is failed, audited, untouched
    assert [a.status for a in acks] == [AckStatus.BUFFERED, AckStatus.MERGED]
    assert served == [healthy] and set(failed) == {broken}
    restore = [e for e in logged if e["action"] == "study_restore_failed"]
    assert [(e["study_id"], e["outcome"], e["details"]["error"]) for e in restore] == [
        (broken, "failure", "BlobNotFound")
    ]
    assert kept is not None  # its rows are left for a later start
    assert verify_log(settings.audit_log_path, reopened.audit_public_key).ok


def test_migrate_puts_the_default_database_in_the_data_dir(tmp_path, monkeypatch) -> None:
    # Prepare
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDWARD_DATABASE_URL", raising=False)
    # Execute
    result = CliRunner().invoke(app, ["coordinator", "migrate", "--data-dir", "site-c"])
    # Assert
    assert result.exit_code == 0, result.output
    assert (tmp_path / "site-c" / "coordinator.db").is_file()
    assert not (tmp_path / "fedward-data").exists()
