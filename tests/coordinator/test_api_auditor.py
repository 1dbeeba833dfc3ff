"""The auditor's workflow end to end, over real HTTP: fetch the signed tree head,
events and proofs from the audit API with an auditor token, verify them offline
with the public key only (held out of band), keep the head, come back later and
check the log only grew (consistency). A server that lies is caught."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedward.cli import app as cli
from fedward.commands.audit_remote import fetch_evidence
from fedward.compliance import SignedTreeHead, load_signing_key, public_key_raw
from fedward.compliance.query import check_fetched
from fedward.coordinator.api import create_app
from fedward.coordinator.service import StudyService
from tests.coordinator.api_helpers import SMALL, bearer, enrol_body
from tests.coordinator.api_server import serving


@pytest.fixture
def base(settings, service: StudyService) -> Iterator[str]:
    with serving(create_app(settings, service=service)) as url:
        yield url


@pytest.fixture
def held_key(settings):
    """The public key the auditor got out of band (from the operator, not the API)."""
    return load_signing_key(settings.signing_key_path).public_key()


def _token(base: str, admin: str, role: str) -> str:
    r = httpx.post(
        f"{base}/v1/tokens", json={"role": role, "name": role}, headers=bearer(admin), timeout=60
    )
    r.raise_for_status()
    return str(r.json()["token"])


def _activity(base: str, admin: str, study_id: str) -> None:
    r = httpx.post(
        f"{base}/v1/studies",
        json={"spec": SMALL, "study_id": study_id},
        headers=bearer(admin),
        timeout=120,
    )
    r.raise_for_status()
    for i in range(2):
        httpx.post(
            f"{base}/v1/studies/{study_id}/devices",
            json=enrol_body(i),
            headers=bearer(admin),
            timeout=60,
        ).raise_for_status()


def test_an_auditor_verifies_head_and_proofs_offline_with_the_public_key(
    base, token, held_key
) -> None:
    # Prepare: activity, then an auditor token
    _activity(base, token, "s1")
    auditor = _token(base, token, "auditor")
    with httpx.Client(base_url=base, headers=bearer(auditor), timeout=60) as client:
        # Execute: first visit (fresh head), more activity, second visit against the kept head
        first = fetch_evidence(client, held=None, fresh=True)
        _activity(base, token, "s2")
        second = fetch_evidence(client, held=first.head, fresh=True)
    verdict_first = check_fetched(
        public_key=held_key, head=first.head, events=first.events, inclusion=first.inclusion
    )
    verdict_second = check_fetched(
        public_key=held_key,
        head=second.head,
        events=second.events,
        inclusion=second.inclusion,
        held=first.head,
        consistency=second.consistency,
    )
    # Assert
    assert verdict_first.ok, verdict_first.problems
    assert verdict_first.events_checked == first.head.tree_size >= 4
    assert verdict_second.ok, verdict_second.problems
    assert verdict_second.consistent_with_held is True
    assert second.head.tree_size > first.head.tree_size
    assert first.served_public_key_hex == public_key_raw(held_key).hex()
    actions = {e["entry"]["action"] for e in second.events}
    assert {"study_created", "device_enrolled", "token_issued"} <= actions


def test_a_lying_server_is_caught(base, token, held_key, settings) -> None:
    # Prepare
    _activity(base, token, "s1")
    auditor = _token(base, token, "auditor")
    with httpx.Client(base_url=base, headers=bearer(auditor), timeout=60) as client:
        got = fetch_evidence(client, held=None, fresh=True)
    forged_events = json.loads(json.dumps(got.events))
    forged_events[0]["entry"]["details"]["strategy"] = "fedavg"  # rewrite what happened
    impostor = SignedTreeHead.sign(
        Ed25519PrivateKey.generate(),
        tree_size=got.head.tree_size,
        root_hash=got.head.root_hash,
        timestamp=got.head.timestamp,
    )
    # a head the coordinator signed over a longer log before it was cut
    bigger_before = SignedTreeHead.sign(
        load_signing_key(settings.signing_key_path),
        tree_size=got.head.tree_size + 5,
        root_hash=got.head.root_hash,
        timestamp=got.head.timestamp,
    )
    # Execute
    forged = check_fetched(
        public_key=held_key, head=got.head, events=forged_events, inclusion=got.inclusion
    )
    wrong_key = check_fetched(
        public_key=held_key, head=impostor, events=got.events, inclusion=got.inclusion
    )
    shrunk = check_fetched(
        public_key=held_key,
        head=got.head,
        events=[],
        inclusion={},
        held=bigger_before,
    )
    # Assert
    assert not forged.ok and any("does not hash to its leaf" in p for p in forged.problems)
    assert not wrong_key.ok and "signature" in wrong_key.problems[0]
    assert not shrunk.ok and "shrank" in shrunk.problems[0]


def test_fedward_audit_check_against_the_api(base, token, held_key, tmp_path) -> None:
    # Prepare
    _activity(base, token, "s1")
    token_file = tmp_path / "auditor.token"
    token_file.write_text(_token(base, token, "auditor"))
    key_hex = public_key_raw(held_key).hex()
    kept = tmp_path / "head.json"
    runner = CliRunner()
    args = ["audit", "check", "--url", base, "--public-key", key_hex]
    args += ["--token-file", str(token_file)]
    # Execute
    first = runner.invoke(cli, [*args, "--save-head", str(kept)])
    _activity(base, token, "s2")
    second = runner.invoke(cli, [*args, "--held-head", str(kept)])
    wrong = runner.invoke(cli, ["audit", "check", "--url", base, "--public-key", "00" * 32,
                                "--token-file", str(token_file)])  # fmt: skip
    # Assert
    assert first.exit_code == 0, first.output
    assert kept.exists() and "intact" in first.output
    assert second.exit_code == 0, second.output
    assert "True" in second.output
    assert wrong.exit_code == 1
