"""Model lineage: recording rules, ancestry, and checked persistence."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.compliance import (
    Actor,
    ActorKind,
    AuditAction,
    AuditLog,
    LineageError,
    LineageStateError,
    MemoryAuditStore,
    ModelLineage,
    Outcome,
    sha256_hex,
    verify_log,
)
from fedward.compliance.lineage import (
    LINEAGE_FORMAT,
    LINEAGE_STATE_FORMAT,
    LINEAGE_STATE_KIND,
    record_hash,
)


def _h(tag: str) -> str:
    return sha256_hex(tag.encode())


@pytest.fixture
def lineage(clock: Callable[[], datetime]) -> ModelLineage:
    """v0 -> v1 -> v2, and v3 merging v1 and v2 (a DAG, as a buffered merge
    from two bases would record)."""
    lin = ModelLineage(clock=clock)
    lin.record(version=0, parents=(), content_hash=_h("w0"), strategy="init")
    lin.record(version=1, parents=(0,), content_hash=_h("w1"), strategy="ftte",
               update_hashes=[_h("u1"), _h("u2")])  # fmt: skip
    lin.record(version=2, parents=(1,), content_hash=_h("w2"), strategy="ftte")
    lin.record(version=3, parents=(1, 2), content_hash=_h("w3"), strategy="fedbuff")
    return lin


def test_ancestry_walks_back_to_the_initial_model(lineage: ModelLineage) -> None:
    # Execute / Assert
    assert lineage.ancestry(3) == (2, 1, 0)
    assert lineage.ancestry(1) == (0,)
    assert lineage.ancestry(0) == ()
    assert lineage.latest is not None and lineage.latest.version == 3
    assert len(lineage) == 4 and 2 in lineage and 9 not in lineage
    lineage.verify()


def test_a_record_hash_commits_to_its_ancestors(clock: Callable[[], datetime]) -> None:
    # Prepare: two lineages that differ only in v0's content
    def build(first: str) -> ModelLineage:
        lin = ModelLineage(clock=clock)
        lin.record(version=0, parents=(), content_hash=_h(first), strategy="init")
        lin.record(version=1, parents=(0,), content_hash=_h("same"), strategy="ftte")
        return lin

    # Execute
    a, b = build("w0"), build("other")
    # Assert
    assert a.get(1).content_hash == b.get(1).content_hash
    assert a.get(1).record_hash != b.get(1).record_hash


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"version": 4, "parents": (7,)}, "unknown parent"),
        ({"version": 4, "parents": (2, 2)}, "twice"),
        ({"version": 3, "parents": (2,)}, "does not increase"),
        ({"version": 2, "parents": (1,)}, "does not increase"),
        ({"version": 4, "parents": (1,), "content_hash": "not-hex"}, "invalid"),
        ({"version": 4, "parents": (1,), "update_hashes": ["zz"]}, "invalid"),
    ],
)
def test_records_breaking_the_rules_are_refused(
    lineage: ModelLineage, fields: dict[str, Any], message: str
) -> None:
    # Prepare
    args: dict[str, Any] = {"content_hash": _h("w4"), "strategy": "ftte"} | fields
    # Execute / Assert
    with pytest.raises(LineageError, match=message):
        lineage.record(**args)
    assert len(lineage) == 4


def test_unknown_versions_raise_lineage_errors(lineage: ModelLineage) -> None:
    # Execute / Assert
    with pytest.raises(LineageError):
        lineage.get(42)
    with pytest.raises(LineageError):
        lineage.ancestry(42)


def test_state_round_trips_through_json(
    lineage: ModelLineage, clock: Callable[[], datetime]
) -> None:
    # Prepare
    state = json.loads(json.dumps(lineage.state_dict()))
    restored = ModelLineage(clock=clock)
    # Execute
    restored.load_state_dict(state)
    # Assert
    assert restored.versions() == lineage.versions()
    assert state["kind"] == LINEAGE_STATE_KIND
    assert state["format_version"] == LINEAGE_STATE_FORMAT


def _tamper(state: dict[str, Any], how: str) -> dict[str, Any]:
    bad = copy.deepcopy(state)
    versions = bad["payload"]["versions"]
    if how == "content":
        versions[1]["content_hash"] = _h("evil")
    elif how == "record_hash":
        versions[2]["record_hash"] = _h("evil")
    elif how == "ancestor":  # rewrite v1 and its hash; v2 and v3 still commit to the old one
        versions[1]["strategy"] = "fedavg"
    elif how == "ancestor_rehashed":  # ... even with v1's own hash recomputed
        v1 = versions[1]
        v1["strategy"] = "fedavg"
        v1["record_hash"] = record_hash(
            version=1,
            parents=v1["parents"],
            parent_record_hashes=[versions[0]["record_hash"]],
            content_hash=v1["content_hash"],
            strategy=v1["strategy"],
            update_hashes=v1["update_hashes"],
            created=datetime.fromisoformat(v1["created"]),
        )
    elif how == "reorder":
        versions[1], versions[2] = versions[2], versions[1]
    elif how == "drop_parent":
        del versions[1]
    elif how == "format":
        bad["format_version"] = 1
    elif how == "kind":
        bad["kind"] = "fedward.privacy.ledger"
    elif how == "flat":  # the pre-envelope layout
        bad = {"format": LINEAGE_FORMAT, "versions": bad["payload"]["versions"]}
    elif how == "extra":
        bad["extra"] = 1
    elif how == "type":
        versions[0]["version"] = "0"
    return bad


@pytest.mark.parametrize(
    "how",
    [
        "content",
        "record_hash",
        "ancestor",
        "ancestor_rehashed",
        "reorder",
        "drop_parent",
        "format",
        "kind",
        "flat",
        "extra",
        "type",
    ],
)
def test_loading_a_tampered_state_fails_and_changes_nothing(
    lineage: ModelLineage, clock: Callable[[], datetime], how: str
) -> None:
    # Prepare
    target = ModelLineage(clock=clock)
    target.record(version=0, parents=(), content_hash=_h("mine"), strategy="init")
    before = target.versions()
    # Execute / Assert
    with pytest.raises(LineageStateError):  # a LineageError and a SavedStateError
        target.load_state_dict(_tamper(lineage.state_dict(), how))
    assert target.versions() == before


def test_merge_details_fit_the_audit_guard(
    lineage: ModelLineage, signing_key: Ed25519PrivateKey, clock: Callable[[], datetime]
) -> None:
    # Prepare: a merge of 100 updates is summarised by count and digest
    big = lineage.record(
        version=4,
        parents=(3,),
        content_hash=_h("w4"),
        strategy="ftte",
        update_hashes=[_h(f"u{i}") for i in range(100)],
    )
    store = MemoryAuditStore()
    log = AuditLog(store, signing_key=signing_key, clock=clock)
    coordinator = Actor(kind=ActorKind.COORDINATOR, id="coord-1")
    # Execute
    for version in (lineage.get(1), big):
        log.append(
            actor=coordinator,
            action=AuditAction.MODEL_MERGED,
            outcome=Outcome.SUCCESS,
            study_id="sleep-apnea-01",
            details=version.audit_details(),
        )
    # Assert
    small, large = (json.loads(r)["details"] for r in store.entry_records)
    assert small["update_hashes"] == [_h("u1"), _h("u2")] and small["parent_versions"] == [0]
    assert "update_hashes" not in large and large["update_count"] == 100
    assert verify_log(store, signing_key.public_key()).ok
