"""kill -9 between the durable write and the publish: the restarted device re-sends the same bytes.

A real child process holds one member of the fill; the parent drives the real
SecAggServer and the other members. The child is killed with SIGKILL where the
agent would hand the masked input to the transport (after the journal and the
state write), and after the journal write but before the state write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedward.edge.secagg import SecAggParticipant
from fedward.edge.secagg_store import SecAggStore
from fedward.privacy.secagg import MaskedInput, ShareDelivery, StateError
from fedward.privacy.secagg import state as secagg_state
from fedward.privacy.secagg.layout import VectorLayout
from fedward.privacy.secagg.wire import decode_message, encode_message
from tests.edge.secagg_helpers import SHAPES, SUBSET, deltas, make_fill

REPO = Path(__file__).resolve().parents[2]


def child(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.edge.secagg_child", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_at(proc: subprocess.Popen, tag: str) -> None:
    line = proc.stdout.readline().strip()
    if line != tag:
        proc.kill()
        raise AssertionError(f"child said {line!r}, stderr: {proc.stderr.read()[-2000:]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def prepared_fill(tmp_path: Path):
    """A 5-member fill through DELIVERY; dev-0's files ready for its child process."""
    fill = make_fill(tmp_path)
    for p in fill.members.values():
        fill.server.receive_advertisement(p.advertise())
    roster = fill.server.close_advertisements()
    for p in fill.members.values():
        fill.server.receive_share_bundle(p.on_roster(roster))
    deliveries = fill.server.close_shares()
    updates = deltas(11, fill.cohort)
    work = tmp_path / "work"
    work.mkdir()
    (work / "delivery.json").write_bytes(encode_message(deliveries["dev-0"]))
    np.savez(work / "delta.npz", **updates["dev-0"])
    del fill.members["dev-0"]  # from now on dev-0 lives only in its files and its process
    args = [str(tmp_path / "dev-0"), "dev-0", fill.server.session.session_id.hex(), str(work)]
    return fill, deliveries, updates, args


@pytest.mark.slow
def test_killed_after_the_durable_write_the_device_resends_the_same_bytes(tmp_path) -> None:
    # Prepare
    fill, deliveries, updates, args = prepared_fill(tmp_path)
    sid = fill.server.session.session_id
    # Execute: kill -9 where the agent would publish; read what is durable; restart
    kill_at(child([*args, "mask"]), "DURABLE")
    on_disk = SecAggStore(tmp_path / "dev-0", device_id="dev-0").load_state(sid)
    durable = secagg_state.from_plain(
        MaskedInput, on_disk["payload"]["client"]["payload"]["released"]
    )
    restarted = child([*args, "resend"])
    out, err = restarted.communicate(timeout=60)
    assert restarted.returncode == 0, err
    resent, again = (bytes.fromhex(line) for line in out.split())
    # Assert: the same bytes, whether re-sent at restart or asked again with the same delivery
    assert resent == encode_message(durable) == again
    # and they complete the fill: the sum is the plain sum of all five updates
    fill.server.receive_masked_input(decode_message(resent, MaskedInput))
    for dev, p in fill.members.items():
        p.on_delivery(deliveries[dev])
        fill.server.receive_masked_input(p.mask(updates[dev], energy=0.1))
    request = fill.server.close_masked_inputs()
    assert request.dropped == ()
    dev0 = SecAggParticipant.restore(
        SecAggStore(tmp_path / "dev-0", device_id="dev-0"), sid, model_shapes=SHAPES
    )
    for p in (dev0, *fill.members.values()):
        fill.server.receive_unmask_response(p.on_unmask(request))
    result = fill.server.finalize()
    layout = VectorLayout.for_subset(SHAPES, SUBSET)
    plain = sum(layout.flatten(updates[d]) for d in fill.cohort)
    assert np.max(np.abs(result.weighted_sum - plain)) <= 5 / 2.0**16


@pytest.mark.slow
def test_killed_between_journal_and_state_write_the_device_releases_nothing(tmp_path) -> None:
    # Prepare
    fill, _, _, args = prepared_fill(tmp_path)
    sid = fill.server.session.session_id
    # Execute: kill -9 inside the MASKED state write (the journal already says MASKED)
    kill_at(child([*args, "mask-crash-before-state"]), "JOURNALLED")
    store = SecAggStore(tmp_path / "dev-0", device_id="dev-0")
    # Assert: the journal is ahead of the state: no resume, no second masking; burnt
    assert store.journal.get(sid).stage == "MASKED"
    assert store.stored_stage(sid) == "SHARED"
    with pytest.raises(StateError, match="older than"):
        SecAggParticipant.restore(store, sid, model_shapes=SHAPES)
    assert SecAggParticipant.abort_stored(store, sid, model_shapes=SHAPES)
    assert store.journal.get(sid).stage == "ABORTED"
    burnt = SecAggParticipant.restore(store, sid, model_shapes=SHAPES)
    delivery = decode_message((tmp_path / "work" / "delivery.json").read_bytes(), ShareDelivery)
    with pytest.raises(StateError, match="ABORTED"):
        burnt.on_delivery(delivery)
    assert burnt.last_released() is None
