"""AuditLog behaviour on healthy logs: receipts, tree heads, proofs, restart,
concurrency, refusals."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.compliance import (
    Actor,
    AuditAction,
    AuditIntegrityError,
    AuditLog,
    AuditReceipt,
    AuditStoreBusy,
    ForbiddenAuditContent,
    JsonlAuditStore,
    MemoryAuditStore,
    Outcome,
    verify_log,
)
from fedward.compliance.merkle import MerkleTree, leaf_hash
from fedward.compliance.verify import GENESIS_PREV_HASH

Append = Callable[..., list[AuditReceipt]]


def test_receipts_count_up_and_commit_to_the_tree(
    signing_key: Ed25519PrivateKey, clock: Callable[[], datetime], append_updates: Append
) -> None:
    # Prepare
    store = MemoryAuditStore()
    log = AuditLog(store, signing_key=signing_key, clock=clock)
    # Execute
    receipts = append_updates(log, count=7)
    # Assert
    assert [r.seq for r in receipts] == list(range(7))
    assert [r.tree_size for r in receipts] == list(range(1, 8))
    bodies = [rec[:-1] for rec in store.entry_records]
    assert [r.leaf_hash for r in receipts] == [leaf_hash(b).hex() for b in bodies]
    tree = MerkleTree(leaf_hash(b) for b in bodies)
    assert [r.root_hash for r in receipts] == [tree.root(tree_size=n).hex() for n in range(1, 8)]


def test_entries_are_canonical_json_lines_chained_by_leaf_hash(
    signing_key: Ed25519PrivateKey, clock: Callable[[], datetime], append_updates: Append
) -> None:
    # Prepare
    store = MemoryAuditStore()
    log = AuditLog(store, signing_key=signing_key, clock=clock)
    # Execute
    receipts = append_updates(log, count=3)
    # Assert
    entries = [json.loads(rec) for rec in store.entry_records]
    assert entries[0]["prev_hash"] == GENESIS_PREV_HASH
    assert [e["prev_hash"] for e in entries[1:]] == [r.leaf_hash for r in receipts[:-1]]
    for rec in store.entry_records:
        body = rec[:-1]
        assert (
            body
            == json.dumps(
                json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
        )
    assert entries[0]["ts"] == "2026-11-02T08:00:01.000000Z"


def test_an_old_receipt_is_provably_included_in_the_current_tree(
    signing_key: Ed25519PrivateKey, clock: Callable[[], datetime], append_updates: Append
) -> None:
    # Prepare
    log = AuditLog(MemoryAuditStore(), signing_key=signing_key, clock=clock)
    receipts = append_updates(log, count=21)
    # Execute
    at_append = log.prove_inclusion(seq=4, tree_size=receipts[4].tree_size)
    now = log.prove_inclusion(seq=4)
    grown = log.prove_consistency(old_size=receipts[4].tree_size)
    # Assert
    assert at_append.verify() and at_append.root_hash == receipts[4].root_hash
    assert now.verify() and now.leaf_hash == receipts[4].leaf_hash
    assert grown.verify() and grown.old_root == receipts[4].root_hash
    assert grown.new_root == log.state.root_hash


def test_tree_heads_are_signed_every_n_entries_on_demand_and_on_close(
    signing_key: Ed25519PrivateKey, clock: Callable[[], datetime], append_updates: Append
) -> None:
    # Prepare
    store = MemoryAuditStore()
    log = AuditLog(store, signing_key=signing_key, clock=clock, sth_interval=4)
    # Execute
    append_updates(log, count=9)
    on_demand = log.sign_tree_head()
    append_updates(log, count=2, start=9)
    log.close()
    # Assert
    sizes = [json.loads(r)["tree_size"] for r in store.tree_head_records]
    assert sizes == [4, 8, 9, 11]
    assert on_demand.verify_signature(signing_key.public_key())
    report = verify_log(store, signing_key.public_key())
    assert report.ok and report.sth_checked == 4 and report.unsigned_entries == 0


def test_restart_reverifies_and_continues_the_chain(
    tmp_path: Path,
    signing_key: Ed25519PrivateKey,
    clock: Callable[[], datetime],
    append_updates: Append,
) -> None:
    # Prepare
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, signing_key=signing_key, clock=clock, sth_interval=5) as log:
        first = append_updates(log, count=7)
        before = log.state
    # Execute
    with AuditLog.open(path, signing_key=signing_key, clock=clock, sth_interval=5) as log:
        after_restart = log.state
        second = append_updates(log, count=6, start=7)
    # Assert
    assert after_restart.next_seq == 7
    assert after_restart.root_hash == before.root_hash
    assert after_restart.last_leaf_hash == first[-1].leaf_hash
    assert [r.seq for r in second] == list(range(7, 13))
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[7])["prev_hash"] == first[-1].leaf_hash
    report = verify_log(path, signing_key.public_key())
    assert report.ok and report.entries == 13 and report.unsigned_entries == 0


def test_a_memory_store_can_be_reopened_too(
    signing_key: Ed25519PrivateKey, clock: Callable[[], datetime], append_updates: Append
) -> None:
    # Prepare
    store = MemoryAuditStore()
    append_updates(AuditLog(store, signing_key=signing_key, clock=clock), count=3)
    # Execute
    log = AuditLog(store, signing_key=signing_key, clock=clock)
    receipt = append_updates(log, count=1, start=3)[0]
    # Assert
    assert receipt.seq == 3
    assert verify_log(store, signing_key.public_key()).ok


def test_reopening_with_another_key_is_refused(
    signing_key: Ed25519PrivateKey, clock: Callable[[], datetime], append_updates: Append
) -> None:
    # Prepare
    store = MemoryAuditStore()
    log = AuditLog(store, signing_key=signing_key, clock=clock)
    append_updates(log, count=2)
    log.close()
    # Execute / Assert
    with pytest.raises(AuditIntegrityError, match="signature"):
        AuditLog(store, signing_key=Ed25519PrivateKey.generate(), clock=clock)


def test_a_second_writer_on_the_same_file_is_refused(
    tmp_path: Path, signing_key: Ed25519PrivateKey, clock: Callable[[], datetime]
) -> None:
    # Prepare
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path, signing_key=signing_key, clock=clock)
    # Execute / Assert
    with pytest.raises(AuditStoreBusy):
        AuditLog.open(path, signing_key=signing_key, clock=clock)
    log.close()
    AuditLog.open(path, signing_key=signing_key, clock=clock).close()  # free again


def test_files_are_private_and_fsync_mode_works(
    tmp_path: Path,
    signing_key: Ed25519PrivateKey,
    clock: Callable[[], datetime],
    append_updates: Append,
) -> None:
    # Prepare
    path = tmp_path / "audit.jsonl"
    # Execute
    with AuditLog.open(path, signing_key=signing_key, clock=clock, fsync=True) as log:
        append_updates(log, count=2)
    # Assert
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "audit.jsonl.sth").stat().st_mode & 0o777 == 0o600
    assert verify_log(path, signing_key.public_key()).ok


def test_concurrent_appends_get_unique_seqs_and_a_valid_chain(
    signing_key: Ed25519PrivateKey, clock: Callable[[], datetime], device: Actor
) -> None:
    # Prepare
    store = MemoryAuditStore()
    log = AuditLog(store, signing_key=signing_key, clock=clock, sth_interval=16)
    seqs: list[int] = []
    seqs_lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(40):
            r = log.append(
                actor=device,
                action=AuditAction.TASK_DISPATCHED,
                outcome=Outcome.SUCCESS,
                details={"task_id": f"t-{w}-{i}"},
            )
            with seqs_lock:
                seqs.append(r.seq)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    # Execute
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    # Assert
    assert sorted(seqs) == list(range(320))
    report = verify_log(store, signing_key.public_key())
    assert report.ok and report.entries == 320 and report.sth_checked == 20


def test_forbidden_content_writes_nothing_and_consumes_no_seq(
    signing_key: Ed25519PrivateKey,
    clock: Callable[[], datetime],
    device: Actor,
    append_updates: Append,
) -> None:
    # Prepare
    store = MemoryAuditStore()
    log = AuditLog(store, signing_key=signing_key, clock=clock)
    append_updates(log, count=2)
    # Execute
    with pytest.raises(ForbiddenAuditContent):
        log.append(
            actor=device,
            action=AuditAction.UPDATE_REJECTED,
            outcome=Outcome.DENIED,
            details={"ecg": list(range(500))},
        )
    receipt = append_updates(log, count=1, start=2)[0]
    # Assert
    assert receipt.seq == 2 and len(store.entry_records) == 3
    assert verify_log(store, signing_key.public_key()).ok


def test_a_naive_clock_is_refused_before_anything_is_written(
    signing_key: Ed25519PrivateKey, device: Actor
) -> None:
    # Prepare
    store = MemoryAuditStore()
    log = AuditLog(store, signing_key=signing_key, clock=lambda: datetime(2026, 1, 1))
    # Execute / Assert
    with pytest.raises(ValueError, match="naive"):
        log.append(actor=device, action=AuditAction.STUDY_STARTED, outcome=Outcome.SUCCESS)
    assert store.entry_records == []


def test_a_clock_in_posix_seconds_is_accepted(
    signing_key: Ed25519PrivateKey, device: Actor
) -> None:
    # Prepare
    store = MemoryAuditStore()
    log = AuditLog(store, signing_key=signing_key, clock=lambda: 1_800_000_000.25)
    # Execute
    log.append(actor=device, action=AuditAction.STUDY_STARTED, outcome=Outcome.SUCCESS)
    # Assert
    assert json.loads(store.entry_records[0])["ts"] == "2027-01-15T08:00:00.250000Z"


def test_a_failed_write_stops_the_log_until_it_is_reopened(
    signing_key: Ed25519PrivateKey,
    clock: Callable[[], datetime],
    device: Actor,
    append_updates: Append,
) -> None:
    # Prepare: a store whose disk fills up once
    class FlakyStore(MemoryAuditStore):
        fail = False

        def append_entry_record(self, record: bytes) -> None:
            if self.fail:
                raise OSError(28, "No space left on device")
            super().append_entry_record(record)

    store = FlakyStore()
    log = AuditLog(store, signing_key=signing_key, clock=clock)
    append_updates(log, count=2)
    store.fail = True
    # Execute
    with pytest.raises(OSError):
        append_updates(log, count=1, start=2)
    store.fail = False
    # Assert
    with pytest.raises(AuditIntegrityError, match="reopen"):
        append_updates(log, count=1, start=2)
    reopened = AuditLog(store, signing_key=signing_key, clock=clock)
    assert append_updates(reopened, count=1, start=2)[0].seq == 2


def test_closed_logs_refuse_appends(
    signing_key: Ed25519PrivateKey, clock: Callable[[], datetime], append_updates: Append
) -> None:
    # Prepare
    log = AuditLog(MemoryAuditStore(), signing_key=signing_key, clock=clock)
    log.close()
    log.close()  # idempotent
    # Execute / Assert
    with pytest.raises(AuditIntegrityError, match="closed"):
        append_updates(log, count=1)


def test_verification_is_recorded_as_a_log_verified_event(
    tmp_path: Path,
    signing_key: Ed25519PrivateKey,
    clock: Callable[[], datetime],
    operator: Actor,
    append_updates: Append,
) -> None:
    # Prepare
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, signing_key=signing_key, clock=clock) as log:
        append_updates(log, count=5)
    report = verify_log(path, signing_key.public_key())
    # Execute
    with AuditLog.open(path, signing_key=signing_key, clock=clock) as log:
        receipt = log.record_verification(report, actor=operator)
    # Assert
    last = json.loads(path.read_bytes().splitlines()[-1])
    assert receipt.seq == 5
    assert last["action"] == "log_verified" and last["outcome"] == "success"
    assert last["details"]["verified_root"] == report.root
    assert last["actor"] == {"kind": "operator", "id": "alice@site-a"}
    assert verify_log(path, signing_key.public_key()).ok


def test_a_store_refuses_records_that_are_not_single_lines() -> None:
    # Prepare
    store = MemoryAuditStore()
    # Execute / Assert
    with pytest.raises(Exception, match="one line"):
        store.append_entry_record(b'{"a":1}')
    with pytest.raises(Exception, match="one line"):
        store.append_entry_record(b'{"a":1}\n{"b":2}\n')


def test_read_only_jsonl_store_takes_no_lock_and_refuses_writes(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "audit.jsonl"
    writer = JsonlAuditStore(path)
    # Execute
    reader = JsonlAuditStore(path, read_only=True)
    # Assert
    assert reader.read_entry_records() == []
    with pytest.raises(Exception, match="read-only"):
        reader.append_entry_record(b"{}\n")
    writer.close()


def test_verify_log_needs_an_existing_file(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    # Execute / Assert
    with pytest.raises(FileNotFoundError):
        verify_log(tmp_path / "missing.jsonl", signing_key.public_key())
    with pytest.raises(TypeError):
        verify_log(MemoryAuditStore(), b"short")
