"""The device's SecAgg storage over real files: restore-and-ask-again, older states, replays."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fedward.edge.secagg import SecAggParticipant
from fedward.edge.secagg_store import JOURNAL_FILE, SecAggStore
from fedward.privacy.secagg import (
    ClientStage,
    ProtocolViolation,
    StateError,
    UnmaskRequest,
)
from fedward.privacy.secagg.layout import VectorLayout
from fedward.privacy.secagg.wire import encode_message
from tests.edge.secagg_helpers import SHAPES, SUBSET, deltas, make_fill, run_to_masked


def test_after_a_restore_from_disk_a_different_unmask_request_is_refused_and_the_same_gets_the_same_bytes(
    tmp_path,
) -> None:
    # Prepare: every member masked and answered request A (all survivors)
    fill = make_fill(tmp_path)
    request_a = run_to_masked(fill, deltas(1, fill.cohort))
    answers = {d: encode_message(p.on_unmask(request_a)) for d, p in fill.members.items()}
    victim = fill.cohort[-1]
    request_b = UnmaskRequest(
        request_a.session_id,
        request_a.round_index,
        survivors=tuple(d for d in fill.cohort if d != victim),
        dropped=(victim,),
    )
    for dev in fill.cohort[:-1]:
        # Execute: the device restarts from its files alone
        restored = fill.reopen(dev)
        # Assert: B (the victim's key shares) refused; A re-sent byte for byte
        assert restored.stage is ClientStage.DONE
        with pytest.raises(ProtocolViolation, match="already answered a different request"):
            restored.on_unmask(request_b)
        assert encode_message(restored.on_unmask(request_a)) == answers[dev]
        assert encode_message(restored.last_released()) == answers[dev]


def test_the_aggregate_over_restored_members_is_the_plain_sum(tmp_path) -> None:
    # Prepare
    fill = make_fill(tmp_path)
    updates = deltas(2, fill.cohort)
    request = run_to_masked(fill, updates)
    # Execute: every member restarts between masking and answering
    for dev in fill.cohort:
        fill.server.receive_unmask_response(fill.reopen(dev).on_unmask(request))
    result = fill.server.finalize()
    # Assert: within fixed-point rounding of the plain sum (n * 1/scale)
    layout = VectorLayout.for_subset(SHAPES, SUBSET)
    plain = sum(layout.flatten(updates[d]) for d in fill.cohort)
    assert np.max(np.abs(result.weighted_sum - plain)) <= len(fill.cohort) / 2.0**16
    assert result.weight_sum == pytest.approx(5.0, abs=1e-4)
    assert result.count_sums == (5,)


def test_an_earlier_state_file_put_back_is_refused(tmp_path) -> None:
    # Prepare: keep a copy of a member's state file from before it masked
    fill = make_fill(tmp_path)
    dev = fill.cohort[0]
    p = fill.members[dev]
    fill.server.receive_advertisement(p.advertise())
    for other in fill.cohort[1:]:
        fill.server.receive_advertisement(fill.members[other].advertise())
    roster = fill.server.close_advertisements()
    for member in fill.members.values():
        fill.server.receive_share_bundle(member.on_roster(roster))
    deliveries = fill.server.close_shares()
    sessions = tmp_path / dev / "sessions"
    before_mask = tmp_path / "before-mask"
    shutil.copytree(sessions, before_mask)
    p.on_delivery(deliveries[dev])
    assert p.mask(deltas(3, (dev,))[dev], energy=0.1) is not None
    # Execute: the older state file is put back and the device restarts
    shutil.rmtree(sessions)
    shutil.copytree(before_mask, sessions)
    # Assert: the journal is at MASKED, the state at SHARED: refused (it would mask twice)
    with pytest.raises(StateError, match="older than"):
        fill.reopen(dev)


def test_a_journal_behind_the_saved_state_is_refused_at_open(tmp_path) -> None:
    # Prepare: a member advertised (journal and state at ADVERTISED); keep the older journal
    fill = make_fill(tmp_path)
    dev = fill.cohort[0]
    journal = tmp_path / dev / JOURNAL_FILE
    empty_journal = journal.read_bytes()  # header only: before the session
    fill.members[dev].advertise()
    # Execute: the journal is rolled back to the older copy
    journal.write_bytes(empty_journal)
    # Assert
    with pytest.raises(StateError, match="behind the saved state"):
        SecAggStore(tmp_path / dev, device_id=dev)


def test_a_replayed_session_id_cannot_start_again(tmp_path) -> None:
    # Prepare: a member took part (advertised, then the fill aborted) and restarted
    fill = make_fill(tmp_path)
    dev = fill.cohort[0]
    fill.members[dev].advertise()
    fill.members[dev].on_abort()
    store = SecAggStore(tmp_path / dev, device_id=dev)
    fill.stores[dev] = store
    store.discard_state(fill.server.session.session_id)  # even without its state file
    # Execute: the coordinator (or a replayer) sends the same session again
    again = fill.participant(dev)
    # Assert
    with pytest.raises(ProtocolViolation, match="session id is used once"):
        again.advertise()


def test_a_torn_last_journal_line_is_dropped_and_a_damaged_middle_line_refused(tmp_path) -> None:
    # Prepare: two sessions journalled
    store = SecAggStore(tmp_path, device_id="dev-0")
    store.journal.record(b"s" * 32, stage="ADVERTISED", request=b"r", released=b"x")
    store.journal.record(b"t" * 32, stage="ADVERTISED", request=b"r", released=b"y")
    path = tmp_path / JOURNAL_FILE
    whole = path.read_bytes()
    # Execute / Assert: a crash mid-append (half of the last line) loses only that line
    path.write_bytes(whole[:-20])
    reopened = SecAggStore(tmp_path, device_id="dev-0")
    assert b"s" * 32 in reopened.journal and b"t" * 32 not in reopened.journal
    assert path.read_bytes() == whole[: whole.rindex(b"\n", 0, len(whole) - 1) + 1]
    # a damaged line with an intact one after it is corruption
    lines = whole.splitlines(keepends=True)
    lines[1] = lines[1].replace(b"ADVERTISED", b"DONE")
    path.write_bytes(b"".join(lines))
    with pytest.raises(StateError, match="corruption"):
        SecAggStore(tmp_path, device_id="dev-0")


def test_the_journal_is_appended_not_rewritten_and_files_are_private(tmp_path) -> None:
    # Prepare
    fill = make_fill(tmp_path)
    dev = fill.cohort[0]
    path = tmp_path / dev / JOURNAL_FILE
    before = path.read_bytes()
    # Execute
    fill.members[dev].advertise()
    # Assert: the old bytes are a prefix (append-only); state and journal are 0600
    after = path.read_bytes()
    assert after.startswith(before) and len(after.splitlines()) == len(before.splitlines()) + 1
    state_files = list((tmp_path / dev / "sessions").iterdir())
    assert len(state_files) == 1
    for f in (path, *state_files):
        assert f.stat().st_mode & 0o077 == 0
    assert (tmp_path / dev).stat().st_mode & 0o077 == 0


def test_a_crash_between_journal_and_state_write_burns_the_session(tmp_path) -> None:
    # Prepare: the journal records MASKED, but the state write never happens (crash)
    fill = make_fill(tmp_path)
    dev = fill.cohort[0]
    original = fill.stores[dev].save_state

    def crash_on_masked(session_id, state, *, stage):
        if stage == "MASKED":
            raise OSError("power lost")
        original(session_id, state, stage=stage)

    fill.stores[dev].save_state = crash_on_masked  # type: ignore[method-assign]
    with pytest.raises(OSError):
        run_to_masked(fill, deltas(4, fill.cohort))
    sid = fill.server.session.session_id
    # Execute: restart; the state (SHARED) is behind the journal (MASKED)
    store = SecAggStore(tmp_path / dev, device_id=dev)
    with pytest.raises(StateError):
        SecAggParticipant.restore(store, sid, model_shapes=SHAPES)
    burnt = SecAggParticipant.abort_stored(store, sid, model_shapes=SHAPES)
    # Assert: nothing was released for MASKED, the session is ABORTED for good
    assert burnt
    assert store.journal.get(sid).stage == "ABORTED"
    assert store.stored_stage(sid) == "ABORTED"
