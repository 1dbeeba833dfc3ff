"""The on-disk outbox: durable until acknowledged, safe across restarts."""

from __future__ import annotations

import stat

import pytest

from fedward.edge.outbox import Outbox, OutboxError


def test_put_survives_reopening_and_remove_forgets(tmp_path):
    # Prepare
    box = Outbox(tmp_path / "outbox")
    # Execute
    box.put("t0000001", b"frame-1")
    box.put("t0000002", b"frame-2")
    reopened = Outbox(tmp_path / "outbox")
    # Assert
    assert [t for t, _ in reopened.pending()] == ["t0000001", "t0000002"]
    assert reopened.get("t0000002") == b"frame-2"
    assert reopened.remove("t0000001") is True
    assert reopened.remove("t0000001") is False
    assert "t0000001" not in reopened and len(reopened) == 1


def test_entries_are_private_files(tmp_path):
    # Prepare
    box = Outbox(tmp_path / "outbox")
    # Execute
    box.put("t1", b"x")
    # Assert: a frame is derived from health data, owner-only
    mode = stat.S_IMODE((tmp_path / "outbox" / "t1.frame").stat().st_mode)
    assert mode == 0o600


def test_a_write_interrupted_before_rename_is_discarded(tmp_path):
    # Prepare: a temp file left by a crash between write and rename
    directory = tmp_path / "outbox"
    Outbox(directory)
    (directory / "t9.frame.tmp").write_bytes(b"half")
    # Execute
    box = Outbox(directory)
    # Assert
    assert box.pending() == []
    assert not (directory / "t9.frame.tmp").exists()


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", "x" * 65])
def test_task_ids_that_are_not_protocol_ids_are_refused(tmp_path, bad):
    box = Outbox(tmp_path)
    with pytest.raises(OutboxError):
        box.put(bad, b"x")
