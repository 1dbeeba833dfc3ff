"""The log after a crash, and an auditor who kept a tree head.

* A torn last line (a crash mid-write) is cut off when the writer opens the
  log, the fragment kept aside and the repair audited; a torn line is *not*
  cut when the rest of the log does not verify without it.
* An auditor holding a signed tree head detects a log truncated below it, even
  when the truncation also removed the tree heads that would show it locally.
* Verification is read-only and runs beside a writer that keeps appending.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedward.cli import app
from fedward.compliance import (
    AuditAction,
    AuditIntegrityError,
    AuditLog,
    ProblemKind,
    create_signing_key,
    latest_tree_head,
    verify_log,
)
from fedward.compliance.store import JsonlAuditStore, tree_head_path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# -- torn tail -----------------------------------------------------------------
def test_a_torn_last_line_is_cut_off_at_open_and_the_repair_audited(
    tmp_path, signing_key, clock, append_updates
) -> None:
    # Prepare: three entries, then a crash halfway through the fourth
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, signing_key=signing_key, clock=clock, sign_on_close=False) as log:
        append_updates(log, count=3)
    whole = path.read_bytes()
    fragment = b'{"action":"update_accepted","actor":{"id":"dev-00'
    path.write_bytes(whole + fragment)
    assert not verify_log(path, signing_key.public_key()).ok
    with pytest.raises(AuditIntegrityError):  # without repair the log is refused, as before
        AuditLog.open(path, signing_key=signing_key, clock=clock)
    # Execute
    log = AuditLog.open(path, signing_key=signing_key, clock=clock, repair_torn_tail=True)
    log.close()
    # Assert: the three whole entries kept, the fragment aside, the repair on record
    records = lines(path)
    assert b"".join(records[:3]) == whole
    repair = json.loads(records[3])
    assert repair["action"] == AuditAction.LOG_REPAIRED.value and repair["seq"] == 3
    assert repair["details"]["removed_bytes"] == len(fragment)
    kept = tmp_path / repair["details"]["kept_at"]
    assert kept.read_bytes() == fragment and kept.stat().st_mode & 0o777 == 0o600
    report = verify_log(path, signing_key.public_key())
    assert report.ok and report.entries == 4 and report.unsigned_entries == 0


def test_a_torn_line_is_not_cut_when_the_rest_does_not_verify(
    tmp_path, signing_key, clock, append_updates
) -> None:
    # Prepare: an edited middle entry, and a torn last line
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, signing_key=signing_key, clock=clock) as log:
        append_updates(log, count=3)
    records = lines(path)
    records[1] = records[1].replace(b"dev-0007", b"dev-0008")
    damaged = b"".join(records) + b'{"seq":3'
    path.write_bytes(damaged)
    # Execute / Assert: refused, and nothing on disk changed
    with pytest.raises(AuditIntegrityError, match="not repaired"):
        AuditLog.open(path, signing_key=signing_key, clock=clock, repair_torn_tail=True)
    assert path.read_bytes() == damaged
    assert not list(tmp_path.glob("*.torn-*"))


def test_cutting_into_a_signed_entry_is_not_repaired(
    tmp_path, signing_key, clock, append_updates
) -> None:
    # Prepare: a signed log whose last entry an attacker cut in half
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, signing_key=signing_key, clock=clock) as log:
        append_updates(log, count=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    # Execute / Assert: the signed head covers 3 entries, the repair would leave 2
    with pytest.raises(AuditIntegrityError, match="not repaired"):
        AuditLog.open(path, signing_key=signing_key, clock=clock, repair_torn_tail=True)


# -- an auditor's tree head ------------------------------------------------------
def test_an_auditor_holding_a_recent_head_detects_truncation_of_the_tail(
    tmp_path, signing_key, clock, append_updates
) -> None:
    # Prepare: the auditor fetches the head after 5 entries; the log grows to 8
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path, signing_key=signing_key, clock=clock)
    append_updates(log, count=5)
    log.sign_tree_head()
    held = latest_tree_head(path, signing_key.public_key())
    append_updates(log, count=3, start=5)
    log.close()
    # Execute: entries 3.. and every tree head over them are cut off the end
    path.write_bytes(b"".join(lines(path)[:3]))
    heads = tree_head_path(path)
    heads.write_bytes(b"".join(h for h in lines(heads) if json.loads(h)["tree_size"] <= 3))
    alone = verify_log(path, signing_key.public_key())
    with_head = verify_log(path, signing_key.public_key(), trusted_head=held)
    # Assert: the log alone looks intact; the kept head shows what is missing
    assert held is not None and held.tree_size == 5
    assert alone.ok  # the limit of any local check
    assert not with_head.ok
    assert [p.kind for p in with_head.problems] == [ProblemKind.TRUSTED_HEAD_BEYOND_LOG]


def test_a_rewrite_under_a_held_head_is_detected_and_a_forged_head_refused(
    tmp_path, signing_key, clock, append_updates
) -> None:
    # Prepare
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path, signing_key=signing_key, clock=clock)
    append_updates(log, count=4)
    held = log.sign_tree_head()
    log.close()
    other = AuditLog.open(tmp_path / "other.jsonl", signing_key=signing_key, clock=clock)
    append_updates(other, count=4, start=10)
    other_head = other.sign_tree_head()
    other.close()
    forged = held.model_copy(update={"tree_size": 2})
    # Execute
    rewritten = verify_log(tmp_path / "other.jsonl", signing_key.public_key(), trusted_head=held)
    bad_signature = verify_log(path, signing_key.public_key(), trusted_head=forged)
    fine = verify_log(tmp_path / "other.jsonl", signing_key.public_key(), trusted_head=other_head)
    # Assert
    assert [p.kind for p in rewritten.problems] == [ProblemKind.TRUSTED_HEAD_INCONSISTENT]
    assert [p.kind for p in bad_signature.problems] == [ProblemKind.TRUSTED_HEAD_INVALID]
    assert fine.ok


def test_the_cli_prints_the_head_and_verifies_against_it(tmp_path, clock, append_updates) -> None:
    # Prepare: a coordinator-shaped data dir
    data = tmp_path / "data"
    (data / "audit").mkdir(parents=True)
    (data / "keys").mkdir()
    key = create_signing_key(data / "keys" / "audit-signing-key.pem")
    path = data / "audit" / "coordinator.jsonl"
    with AuditLog.open(path, signing_key=key, clock=clock) as log:
        append_updates(log, count=4)
    runner = CliRunner()
    # Execute
    head = runner.invoke(
        app, ["audit", "head", "--data-dir", str(data), "--out", str(tmp_path / "h.json")]
    )
    path.write_bytes(b"".join(lines(path)[:2]))
    tree_head_path(path).write_bytes(b"")
    verify = runner.invoke(
        app,
        ["audit", "verify", "--data-dir", str(data), "--trusted-head", str(tmp_path / "h.json")],
    )
    # Assert
    assert head.exit_code == 0 and json.loads(head.output)["tree_size"] == 4
    assert verify.exit_code == 1 and "trusted_head_beyond_log" in verify.output


# -- beside a live writer --------------------------------------------------------
def test_read_only_verification_beside_a_writer_never_reports_a_false_problem(
    tmp_path, signing_key, clock, append_updates
) -> None:
    # Prepare: a writer appending 300 entries (a head every 7) in another thread
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path, signing_key=signing_key, clock=clock, sth_interval=7)
    append_updates(log, count=1)

    read = threading.Event()

    def write() -> None:
        for n in range(1, 300):
            append_updates(log, count=1, start=n)
            if n == 150:  # halfway, until a read has run: reads overlap writes even under load
                read.wait(timeout=60)

    writer = threading.Thread(target=write)
    writer.start()
    # Execute: verify again and again while it writes, then once after
    reports = []
    try:
        while writer.is_alive() or not reports:
            reports.append(verify_log(path, signing_key.public_key()))
            read.set()
    finally:
        writer.join()
        reports.append(verify_log(path, signing_key.public_key()))
        log.close()
    # Assert: every read saw a consistent prefix of the log, the first at most halfway
    assert [r.problems for r in reports if not r.ok] == []
    assert reports[0].entries <= 151 < reports[-1].entries == 300


def test_a_head_signed_between_the_two_reads_is_not_beyond_the_log(
    tmp_path, signing_key, clock, append_updates
) -> None:
    # Prepare: a reader that the writer overtakes right after its first file read
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(path, signing_key=signing_key, clock=clock)
    append_updates(log, count=3)
    log.sign_tree_head()

    class Overtaken(JsonlAuditStore):
        def __init__(self) -> None:
            super().__init__(path, read_only=True)
            self.reads = 0

        def _read(self, file: Path) -> list[bytes]:
            records = super()._read(file)
            self.reads += 1
            if self.reads == 1:  # the writer appends and signs between the two reads
                append_updates(log, count=2, start=3)
                log.sign_tree_head()
            return records

    # Execute
    report = verify_log(Overtaken(), signing_key.public_key())
    log.close()
    # Assert
    assert report.ok, report.problems


def test_a_line_caught_half_written_is_read_again(
    tmp_path, signing_key, clock, append_updates
) -> None:
    # Prepare: a last line completed 50 ms after the reader first sees it
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, signing_key=signing_key, clock=clock) as log:
        append_updates(log, count=2)
    whole = path.read_bytes()
    last = whole.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(whole[: last + 10])

    def complete() -> None:
        with path.open("ab") as fh:  # the writer appends the rest of its line
            fh.write(whole[last + 10 :])

    finish = threading.Timer(0.05, complete)
    # Execute
    finish.start()
    try:
        report = verify_log(path, signing_key.public_key())
    finally:
        finish.join()
    # Assert
    assert report.ok and report.entries == 2, report.problems


def test_a_torn_tree_head_line_is_cut_off_too(tmp_path, signing_key, clock, append_updates) -> None:
    # Prepare: a crash halfway through writing a tree head
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, signing_key=signing_key, clock=clock) as log:
        append_updates(log, count=2)
    heads = tree_head_path(path)
    signed = heads.read_bytes()
    heads.write_bytes(signed + b'{"root_hash":"ab')
    # Execute
    AuditLog.open(path, signing_key=signing_key, clock=clock, repair_torn_tail=True).close()
    # Assert
    repair = json.loads(lines(path)[2])
    assert repair["action"] == "log_repaired" and repair["details"]["repaired_file"] == heads.name
    assert heads.read_bytes().startswith(signed)
    assert verify_log(path, signing_key.public_key()).ok
