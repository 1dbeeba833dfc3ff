"""fedward.coordinator.audit is the one place that formats audit content.

Each builder says who acted (device, operator or coordinator), the action and
the outcome, and keeps health data out (the log's own guard accepts every
entry). A scan checks that no other coordinator module writes to the trail
with details of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedward.compliance import ActorKind, AuditAction, Outcome, check_details
from fedward.coordinator import audit
from fedward.coordinator.engine import EngineEvent, EventKind

COORDINATOR = Path(audit.__file__).resolve().parent


@pytest.mark.parametrize(
    ("entry", "action", "outcome", "actor", "actor_id"),
    [
        (
            audit.study_created(
                by="alice",
                spec_summary={"study_name": "s", "strategy": "ftte"},
                spec_sha256="a" * 64,
                content_hash="b" * 64,
                record_hash="c" * 64,
                warm_start=False,
            ),
            AuditAction.STUDY_CREATED,
            Outcome.SUCCESS,
            ActorKind.OPERATOR,
            "alice",
        ),
        (
            audit.study_transition(
                AuditAction.STUDY_PAUSED, by="bob", previous="running", state="paused"
            ),
            AuditAction.STUDY_PAUSED,
            Outcome.SUCCESS,
            ActorKind.OPERATOR,
            "bob",
        ),
        (
            audit.device_enrolment(
                device_id="dev-1",
                device_class="wearable",
                memory_bytes=1024,
                key_sha256="d" * 64,
                refusal="device id is enrolled under another key",
                impersonation=True,
            ),
            AuditAction.DEVICE_AUTH_FAILED,
            Outcome.DENIED,
            ActorKind.DEVICE,
            "dev-1",
        ),
        (
            audit.device_enrolment(
                device_id="dev-1",
                device_class="wearable",
                memory_bytes=1024,
                key_sha256="d" * 64,
                refusal=None,
            ),
            AuditAction.DEVICE_ENROLLED,
            Outcome.SUCCESS,
            ActorKind.DEVICE,
            "dev-1",
        ),
        (
            audit.device_revoked("dev-1", by="carol"),
            AuditAction.DEVICE_REVOKED,
            Outcome.SUCCESS,
            ActorKind.OPERATOR,
            "carol",
        ),
        (
            audit.transport_rejected(
                device_id=None, reason="malformed", detail="bad frame", authentication=False
            ),
            AuditAction.UPDATE_REJECTED,
            Outcome.DENIED,
            ActorKind.COORDINATOR,
            None,
        ),
        (
            audit.task_not_its_own("dev-2", "t0000001"),
            AuditAction.DEVICE_AUTH_FAILED,
            Outcome.DENIED,
            ActorKind.DEVICE,
            "dev-2",
        ),
        (
            audit.update_refused_early(reason="unknown_study", detail=None, update_sha256="e" * 64),
            AuditAction.UPDATE_REJECTED,
            Outcome.DENIED,
            ActorKind.COORDINATOR,
            None,
        ),
    ],
)
def test_service_entries_name_the_actor_and_pass_the_logs_guard(
    entry: audit.AuditRecord,
    action: AuditAction,
    outcome: Outcome,
    actor: ActorKind,
    actor_id: str | None,
) -> None:
    # Execute
    checked = check_details(dict(entry.details))
    # Assert
    assert (entry.action, entry.outcome, entry.actor, entry.actor_id) == (
        action,
        outcome,
        actor,
        actor_id,
    )
    assert checked  # the log would accept it as it is


def test_engine_entries_carry_hashes_not_tensors() -> None:
    # Prepare
    accepted = EngineEvent(
        kind=EventKind.UPDATE_ACCEPTED,
        at=1.0,
        details={
            "task_id": "t1",
            "device_id": "dev-1",
            "base_version": 0,
            "staleness": 0,
            "num_samples": 37,
        },
    )
    state = EngineEvent(kind=EventKind.DEVICE_STATE, at=1.0, details={"device_id": "dev-1"})
    # Execute
    entry = audit.engine_entry(accepted, update_sha256="f" * 64)
    # Assert: the device acted; the sample count (a side channel) stays out
    assert entry is not None and entry.actor is ActorKind.DEVICE and entry.actor_id == "dev-1"
    assert "num_samples" not in entry.details and entry.details["update_sha256"] == "f" * 64
    assert audit.engine_entry(state) is None  # saved by diff, not audited


def test_no_other_coordinator_module_formats_audit_content() -> None:
    # Prepare: calls that write to the trail or build privacy details
    offenders = []
    for path in sorted(COORDINATOR.rglob("*.py")):
        if path.name == "audit.py" and path.parent == COORDINATOR:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                if name == "privacy_details" or (
                    name == "record" and path.name != "audit_trail.py" and _is_trail(node)
                ):
                    offenders.append(f"{path.relative_to(COORDINATOR)}:{node.lineno}")
    # Assert
    assert offenders == []


def _is_trail(node: ast.Call) -> bool:
    target = node.func.value if isinstance(node.func, ast.Attribute) else None
    return isinstance(target, ast.Attribute) and target.attr == "_trail"
