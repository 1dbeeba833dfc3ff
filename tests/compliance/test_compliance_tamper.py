"""What an attacker (or a bad disk) can do to the files, and how the verifier
catches each one."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedward.compliance import (
    AuditIntegrityError,
    AuditLog,
    AuditReceipt,
    ProblemKind,
    SignedTreeHead,
    VerificationReport,
    public_key_raw,
    verify_log,
)
from fedward.compliance.events import canonical_json
from fedward.compliance.merkle import leaf_hash

Append = Callable[..., list[AuditReceipt]]
N_ENTRIES = 20


@pytest.fixture
def log_path(
    tmp_path: Path,
    signing_key: Ed25519PrivateKey,
    clock: Callable[[], datetime],
    append_updates: Append,
) -> Path:
    """A healthy log of 20 entries with tree heads at 5, 10, 15, 20."""
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, signing_key=signing_key, clock=clock, sth_interval=5) as log:
        append_updates(log, count=N_ENTRIES)
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _kinds(report: VerificationReport) -> set[ProblemKind]:
    return {p.kind for p in report.problems}


def test_the_untouched_log_verifies(log_path: Path, signing_key: Ed25519PrivateKey) -> None:
    # Execute
    report = verify_log(log_path, public_key_raw(signing_key))
    # Assert
    assert report.ok and report.entries == N_ENTRIES and report.sth_checked == 4
    assert report.first_bad_entry is None and report.problems == ()


def test_a_changed_value_in_an_entry_is_caught_and_located(
    log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare: outcome "success" -> "failure" keeps the line valid, canonical JSON
    lines = _lines(log_path)
    lines[7] = lines[7].replace(b'"outcome":"success"', b'"outcome":"failure"')
    log_path.write_bytes(b"".join(lines))
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert not report.ok
    assert report.first_bad_entry == 7
    assert ProblemKind.CHAIN_BROKEN in _kinds(report)
    assert ProblemKind.TREE_HEAD_INCONSISTENT in _kinds(report)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_anywhere_in_the_entries_is_caught(
    data: st.DataObject, log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare
    original = log_path.read_bytes()
    pos = data.draw(st.integers(min_value=0, max_value=len(original) - 1), label="position")
    byte = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != original[pos]))
    tampered = bytearray(original)
    tampered[pos] = byte
    log_path.write_bytes(bytes(tampered))
    try:
        # Execute
        report = verify_log(log_path, signing_key.public_key())
        # Assert
        assert not report.ok
        assert report.first_bad_entry is not None or report.problems[0].tree_head is not None
    finally:
        log_path.write_bytes(original)


def test_a_deleted_line_is_caught_where_it_was(
    log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare
    lines = _lines(log_path)
    del lines[12]
    log_path.write_bytes(b"".join(lines))
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert not report.ok
    assert report.first_bad_entry == 12
    assert {ProblemKind.SEQ_MISMATCH, ProblemKind.CHAIN_BROKEN} <= _kinds(report)


def test_swapped_lines_are_caught(log_path: Path, signing_key: Ed25519PrivateKey) -> None:
    # Prepare
    lines = _lines(log_path)
    lines[3], lines[4] = lines[4], lines[3]
    log_path.write_bytes(b"".join(lines))
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert not report.ok and report.first_bad_entry == 3
    assert ProblemKind.SEQ_MISMATCH in _kinds(report)


def test_a_line_truncated_mid_record_is_caught_and_blocks_reopening(
    log_path: Path, signing_key: Ed25519PrivateKey, clock: Callable[[], datetime]
) -> None:
    # Prepare: a torn write leaves half a line
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-40])
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert not report.ok and report.first_bad_entry == N_ENTRIES - 1
    assert ProblemKind.TRUNCATED_ENTRY in _kinds(report)
    with pytest.raises(AuditIntegrityError) as err:
        AuditLog.open(log_path, signing_key=signing_key, clock=clock)
    assert err.value.index == N_ENTRIES - 1


def test_whole_lines_cut_from_the_end_are_caught_by_the_tree_heads(
    log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare
    lines = _lines(log_path)
    log_path.write_bytes(b"".join(lines[:17]))
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert not report.ok
    assert _kinds(report) == {ProblemKind.TREE_HEAD_BEYOND_LOG}
    assert report.sth_checked == 3  # heads at 5, 10, 15 still hold


def test_a_rewrite_with_a_recomputed_chain_is_caught_by_the_signed_heads(
    log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare: change entry 3, then fix every later prev_hash, as an attacker
    # without the signing key would
    entries = [json.loads(line) for line in _lines(log_path)]
    entries[3]["details"]["staleness"] = 99
    prev = entries[0]["prev_hash"]
    rewritten = []
    for entry in entries:
        entry["prev_hash"] = prev
        body = canonical_json(entry)
        rewritten.append(body + b"\n")
        prev = leaf_hash(body).hex()
    log_path.write_bytes(b"".join(rewritten))
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert not report.ok
    assert _kinds(report) == {ProblemKind.TREE_HEAD_INCONSISTENT}
    assert report.sth_checked == 0  # every head covers entry 3


def test_a_forged_tree_head_signature_is_caught(
    log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare: flip one hex digit of the second head's signature
    sth_path = log_path.with_name(log_path.name + ".sth")
    heads = _lines(sth_path)
    head = json.loads(heads[1])
    head["signature"] = ("0" if head["signature"][0] != "0" else "1") + head["signature"][1:]
    heads[1] = canonical_json(head) + b"\n"
    sth_path.write_bytes(b"".join(heads))
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert not report.ok and _kinds(report) == {ProblemKind.BAD_SIGNATURE}
    assert report.problems[0].tree_head == 1


def test_a_tree_head_signed_by_another_key_is_caught(
    log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare: the attacker signs a head over a shortened log with their own key
    lines = _lines(log_path)
    log_path.write_bytes(b"".join(lines[:10]))
    sth_path = log_path.with_name(log_path.name + ".sth")
    heads = [json.loads(h) for h in _lines(sth_path)]
    forged = SignedTreeHead.sign(
        Ed25519PrivateKey.generate(),
        tree_size=10,
        root_hash=heads[1]["root_hash"],
        timestamp=datetime.fromisoformat(heads[-1]["timestamp"]),
    )
    sth_path.write_bytes(b"".join(_lines(sth_path)[:2]) + forged.to_line() + b"\n")
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert not report.ok and _kinds(report) == {ProblemKind.BAD_SIGNATURE}


def test_a_changed_root_in_a_tree_head_breaks_its_signature(
    log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare
    sth_path = log_path.with_name(log_path.name + ".sth")
    heads = _lines(sth_path)
    head = json.loads(heads[0])
    head["root_hash"] = "ab" * 32
    heads[0] = canonical_json(head) + b"\n"
    sth_path.write_bytes(b"".join(heads))
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert _kinds(report) == {ProblemKind.BAD_SIGNATURE}


def test_reordered_tree_heads_are_caught(log_path: Path, signing_key: Ed25519PrivateKey) -> None:
    # Prepare
    sth_path = log_path.with_name(log_path.name + ".sth")
    heads = _lines(sth_path)
    heads[0], heads[2] = heads[2], heads[0]
    sth_path.write_bytes(b"".join(heads))
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert ProblemKind.TREE_HEAD_OUT_OF_ORDER in _kinds(report)


def test_health_data_smuggled_into_the_file_is_reported_as_malformed(
    log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare
    lines = _lines(log_path)
    entry = json.loads(lines[2])
    entry["details"]["ecg"] = [1, 2, 3]
    lines[2] = canonical_json(entry) + b"\n"
    log_path.write_bytes(b"".join(lines))
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert report.first_bad_entry == 2
    assert report.problems[0].kind is ProblemKind.MALFORMED_ENTRY
    assert "ecg" in report.problems[0].message


def test_a_non_canonical_spelling_of_the_same_entry_is_caught(
    log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare: same JSON value, different bytes
    lines = _lines(log_path)
    lines[5] = json.dumps(json.loads(lines[5]), sort_keys=True).encode() + b"\n"
    log_path.write_bytes(b"".join(lines))
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert ProblemKind.NON_CANONICAL_ENTRY in _kinds(report)
    assert report.first_bad_entry == 5


def test_deleting_every_tree_head_leaves_the_chain_valid_but_unsigned(
    log_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    # Prepare: the one thing a local check cannot call tampering -- the report
    # must at least say that nothing is signed
    log_path.with_name(log_path.name + ".sth").unlink()
    # Execute
    report = verify_log(log_path, signing_key.public_key())
    # Assert
    assert report.ok
    assert report.sth_checked == 0 and report.unsigned_entries == N_ENTRIES
    assert report.latest_tree_head is None
