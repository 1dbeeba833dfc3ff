"""One-shot rules across crashes: a server that makes devices restart learns nothing more.

The attack (measured on the old block: the victim's update recovered, max error
7.6e-6): every survivor answers request A (seed shares of all survivors, the
victim among them); the server then makes t devices restart from the state they
saved before answering and sends request B naming the victim as dropped, which
asks for the victim's mask-key shares. Seed and key of one device unmask its
input. Likewise a device restored from a state saved before masking would mask
a second input with the same masks (the difference of two inputs leaks).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fedward.privacy.secagg import (
    ClientInput,
    ClientStage,
    LocalRunner,
    ProtocolViolation,
    SecAggClient,
    SecAggConfig,
    SecAggSession,
    StateError,
    UnmaskRequest,
    digest_index_set,
)
from fedward.privacy.secagg.journal import SessionJournal


class Disk:
    """A device's durable storage: the last written state and journal (deep copies)."""

    def __init__(self) -> None:
        self.state: dict | None = None
        self.journal: dict | None = None
        self.writes: list[str] = []

    def write_state(self, saved: dict) -> None:
        self.state = copy.deepcopy(saved)
        self.writes.append("state:" + saved["payload"]["stage"])

    def write_journal(self, saved: dict) -> None:
        self.journal = copy.deepcopy(saved)
        self.writes.append("journal")


def cohort(n: int = 5, t: int = 4, d: int = 64, sid: bytes = b"restore-attack-01"):
    config = SecAggConfig(threshold=t, scale=2.0**14, clip=1.0)
    session = SecAggSession(
        session_id=sid,
        round_index=1,
        cohort=tuple(f"d{i}" for i in range(n)),
        vector_length=d,
        index_set_digest=digest_index_set(range(d), model_size=d),
    )
    rng = np.random.default_rng(5)  # test data only
    inputs = {
        dev: ClientInput(update=rng.uniform(-1, 1, d), weight=0.5, counts=(1,))
        for dev in session.cohort
    }
    disks = {dev: Disk() for dev in session.cohort}
    runner = LocalRunner(config=config, session=session)
    for dev in session.cohort:
        journal = SessionJournal(device_id=dev, sink=disks[dev].write_journal)
        runner.clients[dev] = SecAggClient(
            config=config,
            session=session,
            device_id=dev,
            journal=journal,
            persist=disks[dev].write_state,
        )
    return config, session, inputs, disks, runner


def reboot(config, session, dev: str, disk: Disk, saved: dict | None = None) -> SecAggClient:
    """The device after a crash: journal from its disk, then ``saved`` (default: the last state)."""
    journal = SessionJournal.from_state_dict(copy.deepcopy(disk.journal), device_id=dev)
    client = SecAggClient(
        config=config, session=session, device_id=dev, journal=journal, persist=disk.write_state
    )
    client.load_state_dict(copy.deepcopy(saved if saved is not None else disk.state))
    return client


def test_restored_devices_refuse_a_second_different_unmask_request() -> None:
    # Prepare: everyone masked; the server keeps the state each device saved at MASKED
    config, session, inputs, disks, runner = cohort()
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    request_a = runner.mask(session.cohort, deliveries, inputs)
    before_answer = {dev: copy.deepcopy(disks[dev].state) for dev in session.cohort}
    answers_a = {dev: runner.clients[dev].unmask(request_a) for dev in session.cohort}
    victim = "d4"
    request_b = UnmaskRequest(
        session.session_id,
        session.round_index,
        survivors=tuple(d for d in session.cohort if d != victim),
        dropped=(victim,),
    )
    helpers = [d for d in session.cohort if d != victim][: config.threshold]

    # Execute / Assert: restored from the state saved before answering -> refused at load
    for dev in helpers:
        with pytest.raises(StateError, match="journal is at DONE"):
            reboot(config, session, dev, disks[dev], saved=before_answer[dev])
    # restored from the last state: B refused, A re-sent byte for byte, never recomputed
    for dev in helpers:
        client = reboot(config, session, dev, disks[dev])
        with pytest.raises(ProtocolViolation, match="already answered a different request"):
            client.unmask(request_b)
        assert client.unmask(request_a) == answers_a[dev]
        assert client.stage is ClientStage.DONE


def test_the_answer_is_written_durably_before_it_is_returned() -> None:
    # Prepare
    config, session, inputs, disks, runner = cohort()
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    request = runner.mask(session.cohort, deliveries, inputs)
    disks["d0"].writes.clear()

    # Execute
    answer = runner.clients["d0"].unmask(request)

    # Assert: journal first, then the state holding the exact answer, then the return
    assert disks["d0"].writes == ["journal", "state:DONE"]
    restored = reboot(config, session, "d0", disks["d0"])
    assert (
        restored.state_dict()["payload"]["released"]
        == runner.clients["d0"].state_dict()["payload"]["released"]
    )
    assert restored.unmask(request) == answer


def test_a_failed_durable_write_releases_nothing() -> None:
    # Prepare: a device whose journal cannot be written
    config, session, _, _, _ = cohort()

    def broken_disk(_: dict) -> None:
        raise OSError("disk full")

    client = SecAggClient(
        config=config,
        session=session,
        device_id="d0",
        journal=SessionJournal(device_id="d0", sink=broken_disk),
    )

    # Execute / Assert
    with pytest.raises(OSError, match="disk full"):
        client.advertise()
    assert client.stage is ClientStage.NEW and len(client.journal) == 0


def test_an_older_state_cannot_mask_a_second_input() -> None:
    # Prepare: d1 saved SHARED (secrets present), then masked its input
    config, session, inputs, disks, runner = cohort()
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    shared_state = copy.deepcopy(disks["d1"].state)
    x = inputs["d1"]
    first = runner.clients["d1"].mask_input(
        deliveries["d1"], update=x.update, weight=x.weight, counts=x.counts
    )

    # Execute / Assert: the SHARED state (which could mask again) is refused
    with pytest.raises(StateError, match="journal is at MASKED"):
        reboot(config, session, "d1", disks["d1"], saved=shared_state)
    # the last state re-sends the first masked input for the same delivery, whatever the update
    restored = reboot(config, session, "d1", disks["d1"])
    again = restored.mask_input(
        deliveries["d1"], update=-x.update, weight=x.weight, counts=x.counts
    )
    assert again.data == first.data
    # a different delivery is a different request: refused
    other = deliveries["d1"].__class__(
        deliveries["d1"].session_id,
        deliveries["d1"].round_index,
        deliveries["d1"].recipient,
        deliveries["d1"].shares[:-1],
    )
    with pytest.raises(ProtocolViolation, match="already answered a different request"):
        restored.mask_input(other, update=x.update, weight=x.weight, counts=x.counts)


def test_a_replayed_session_id_is_refused() -> None:
    # Prepare: d0 took part in a session, then aborted another one before advertising
    config, session, inputs, disks, runner = cohort()
    runner.clients["d0"].advertise()
    fresh = SecAggClient(
        config=config, session=session, device_id="d0", journal=runner.clients["d0"].journal
    )
    _, aborted, *_ = cohort(sid=b"restore-attack-02")
    burnt = SecAggClient(
        config=config, session=aborted, device_id="d0", journal=runner.clients["d0"].journal
    )
    burnt.abort()
    again = SecAggClient(
        config=config, session=aborted, device_id="d0", journal=runner.clients["d0"].journal
    )

    # Execute / Assert: a session id this device's journal holds cannot be started again
    for client in (fresh, again):
        with pytest.raises(ProtocolViolation, match="already took part in this session id"):
            client.advertise()
    # nor can a NEW state (saved before it advertised) be loaded for it
    with pytest.raises(StateError, match="older saved state"):
        SecAggClient(
            config=config, session=session, device_id="d0", journal=runner.clients["d0"].journal
        ).load_state_dict(SecAggClient(config=config, session=session, device_id="d0").state_dict())


def test_a_restore_without_the_device_journal_is_refused() -> None:
    # Prepare
    config, session, inputs, disks, runner = cohort()
    runner.advertise(session.cohort)

    # Execute / Assert: a journal that never saw the session cannot vouch for the state
    with pytest.raises(StateError, match="no entry"):
        SecAggClient(config=config, session=session, device_id="d2").load_state_dict(
            copy.deepcopy(disks["d2"].state)
        )


def test_a_retry_after_a_failed_state_write_rewrites_it_before_re_sending() -> None:
    # Prepare: d0's state write fails once, just after its journal recorded the answer
    config, session, inputs, disks, runner = cohort()
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    request = runner.mask(session.cohort, deliveries, inputs)
    failures = [OSError("disk full")]

    def flaky(saved: dict) -> None:
        if failures:
            raise failures.pop()
        disks["d0"].write_state(saved)

    client = runner.clients["d0"]
    client._persist = flaky  # the device's storage starts failing
    with pytest.raises(OSError, match="disk full"):
        client.unmask(request)
    assert disks["d0"].state["payload"]["stage"] == "MASKED"

    # Execute: the caller retries the same request
    answer = client.unmask(request)

    # Assert: the state holding the answer is on disk before it is returned; a reboot
    # re-sends the same bytes
    assert disks["d0"].state["payload"]["stage"] == "DONE"
    assert reboot(config, session, "d0", disks["d0"]).unmask(request) == answer
