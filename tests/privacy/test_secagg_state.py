"""state_dict / load_state_dict: resume mid-protocol, and refuse states that do not fit."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fedward.errors import SavedStateError
from fedward.privacy.secagg import (
    ClientInput,
    ClientStage,
    LocalRunner,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    SecAggSession,
    ServerStage,
    StateError,
    digest_index_set,
)
from fedward.privacy.secagg.client import CLIENT_STATE_KIND
from fedward.privacy.secagg.journal import SessionJournal
from fedward.privacy.secagg.masking import encode_contribution
from fedward.privacy.secagg.quantize import mod_sub, mod_sum, to_signed
from fedward.privacy.secagg.server import SERVER_STATE_KIND
from fedward.privacy.secagg.state import STATE_VERSION


def setup(n: int = 5, t: int = 3, d: int = 200, sid: bytes = b"restart-session-01"):
    # the most colluders (n, t) tolerates: restarts are under test, not the collusion bound
    colluders = max(0, min(t - 2, 2 * t - n - 1))
    config = SecAggConfig(threshold=t, scale=2.0**14, clip=1.0, max_colluders=colluders)
    session = SecAggSession(
        session_id=sid,
        round_index=2,
        cohort=tuple(f"d{i}" for i in range(n)),
        vector_length=d,
        index_set_digest=digest_index_set(range(d), model_size=d),
    )
    rng = np.random.default_rng(11)  # test data only
    inputs = {
        dev: ClientInput(update=rng.uniform(-1, 1, d), weight=0.5, counts=(1,))
        for i, dev in enumerate(session.cohort)
    }
    return config, session, inputs


def expected(config, session, inputs, survivors) -> np.ndarray:
    words = [
        encode_contribution(
            inputs[d].update,
            weight=inputs[d].weight,
            counts=inputs[d].counts,
            config=config,
            session=session,
        )
        for d in survivors
    ]
    return mod_sum(words, modulus_bits=config.modulus_bits, n_words=session.total_words(config))


def matches(encoded_sum, config, session, inputs, survivors) -> bool:
    """Extras exact; each coordinate within one (stochastic rounding) step per survivor."""
    plain = expected(config, session, inputs, survivors)
    d = session.vector_length
    steps = to_signed(
        mod_sub(encoded_sum, plain, modulus_bits=config.modulus_bits),
        modulus_bits=config.modulus_bits,
    )[:d]
    return bool(np.array_equal(encoded_sum[d:], plain[d:])) and int(np.max(np.abs(steps))) <= len(
        survivors
    )


def restart_everyone(runner: LocalRunner, config, session) -> None:
    """Rebuild the server and every client from deep copies of their state dicts."""
    saved = copy.deepcopy(runner.server.state_dict())
    runner.server = SecAggServer(config=config, session=session)
    runner.server.load_state_dict(saved)
    assert runner.server.state_dict() == saved
    for dev, client in list(runner.clients.items()):
        state = copy.deepcopy(client.state_dict())
        journal = SessionJournal.from_state_dict(
            copy.deepcopy(client.journal.state_dict()), device_id=dev
        )
        runner.clients[dev] = SecAggClient(
            config=config, session=session, device_id=dev, journal=journal
        )
        runner.clients[dev].load_state_dict(state)
        assert runner.clients[dev].state_dict() == state


def test_restart_between_every_stage_then_complete() -> None:
    # Prepare
    config, session, inputs = setup(n=7, t=4)
    runner = LocalRunner(config=config, session=session)
    online = session.cohort[1:]  # d0 never shows up at all
    restart_everyone(runner, config, session)
    # Execute: a full restart of server and devices at every stage boundary
    roster = runner.advertise(online)
    restart_everyone(runner, config, session)
    assert runner.server.roster() == roster
    deliveries = runner.share_keys(online, roster)
    restart_everyone(runner, config, session)
    assert runner.server.deliveries() == deliveries
    request = runner.mask(online[:-1], deliveries, inputs)  # d6 drops before masking
    restart_everyone(runner, config, session)
    assert runner.server.unmask_request() == request
    result = runner.unmask(online[:-2], request)  # d5 masked, then went silent
    restart_everyone(runner, config, session)
    # Assert
    assert runner.server.stage is ServerStage.DONE
    assert matches(result.encoded_sum, config, session, inputs, ("d1", "d2", "d3", "d4", "d5"))
    again = runner.server.result()
    assert (
        np.array_equal(again.encoded_sum, result.encoded_sum)
        and again.survivors == result.survivors
    )


def test_restart_while_collecting_each_kind_of_message() -> None:
    config, session, inputs = setup()
    runner = LocalRunner(config=config, session=session)
    server, clients = runner.server, runner.clients
    for dev in session.cohort[:2]:
        server.receive_advertisement(clients[dev].advertise())
    restart_everyone(runner, config, session)
    roster = runner.advertise(session.cohort[2:])
    deliveries = runner.share_keys(session.cohort, roster)
    x = inputs["d0"]
    runner.server.receive_masked_input(
        runner.clients["d0"].mask_input(deliveries["d0"], update=x.update, weight=0.5, counts=(1,))
    )
    restart_everyone(runner, config, session)
    request = runner.mask(session.cohort[1:], deliveries, inputs)
    runner.server.receive_unmask_response(runner.clients["d0"].unmask(request))
    restart_everyone(runner, config, session)
    result = runner.unmask(session.cohort[1:3], request)
    assert matches(result.encoded_sum, config, session, inputs, session.cohort)


def server_at_unmasking():
    config, session, inputs = setup()
    runner = LocalRunner(config=config, session=session)
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    request = runner.mask(session.cohort[:4], deliveries, inputs)
    runner.server.receive_unmask_response(runner.clients["d0"].unmask(request))
    return config, session, runner


def mutations():
    def set_(key, value):  # a payload key
        return lambda s: s["payload"].__setitem__(key, value)

    def truncate_masked(s):
        masked = s["payload"]["masked"]
        dev = next(iter(masked))
        masked[dev] = masked[dev][:-4]

    def overlap(s):
        payload = s["payload"]
        payload["dropped"] = payload["dropped"] + [payload["survivors"][0]]

    return {
        "format version": lambda s: s.__setitem__("format_version", STATE_VERSION + 1),
        "format version as bool": lambda s: s.__setitem__("format_version", True),
        "kind": lambda s: s.__setitem__("kind", CLIENT_STATE_KIND),
        "key beside the envelope": lambda s: s.__setitem__("stage", "DONE"),
        "payload key missing": lambda s: s["payload"].pop("result"),
        "unknown payload key": set_("extra", None),
        "session": set_("session_id", b"another-session-xx"),
        "round": set_("round_index", 3),
        "cohort": set_("cohort", ["d0", "d1", "d2", "d3", "dX"]),
        "config": set_("config", b"\x00" * 32),
        "unknown stage": set_("stage", "WAITING"),
        "earlier stage with later content": set_("stage", "COLLECTING_SHARES"),
        "later stage without content": set_("stage", "DONE"),
        "truncated masked input": truncate_masked,
        "survivor also dropped": overlap,
        "bad response list": set_("responses", "nope"),
        "payload not a mapping": lambda s: s.__setitem__("payload", list(s["payload"])),
        "not a mapping": lambda s: s.clear(),
    }


@pytest.mark.parametrize("name", list(mutations()))
def test_server_refuses_a_state_that_does_not_fit(name: str) -> None:
    # Prepare
    config, session, runner = server_at_unmasking()
    state = copy.deepcopy(runner.server.state_dict())
    mutations()[name](state)
    target = SecAggServer(config=config, session=session)
    # Execute / Assert
    with pytest.raises(StateError):
        target.load_state_dict(state)
    assert target.stage is ServerStage.COLLECTING_ADVERTISEMENTS  # unchanged


def test_server_state_from_another_session_is_refused() -> None:
    config, session, runner = server_at_unmasking()
    _, other, _ = setup(sid=b"restart-session-02")
    with pytest.raises(StateError, match="another session"):
        SecAggServer(config=config, session=other).load_state_dict(runner.server.state_dict())


def client_states():
    config, session, inputs = setup()
    runner = LocalRunner(config=config, session=session)
    roster = runner.advertise(session.cohort)
    deliveries = runner.share_keys(session.cohort, roster)
    shared = copy.deepcopy(runner.clients["d1"].state_dict())
    journals = {"shared": runner.clients["d1"].journal.state_dict()}
    runner.mask(session.cohort, deliveries, inputs)
    masked = copy.deepcopy(runner.clients["d1"].state_dict())
    journals["masked"] = runner.clients["d1"].journal.state_dict()
    return config, session, shared, masked, journals


def journal_at(journals: dict, which: str) -> SessionJournal:
    """A copy of d1's journal as it was when the ``which`` state was saved."""
    return SessionJournal.from_state_dict(copy.deepcopy(journals[which]), device_id="d1")


def _in_payload(edit):
    return lambda s: edit(s["payload"])


@pytest.mark.parametrize(
    ("which", "mutate"),
    [
        ("shared", _in_payload(lambda p: p.__setitem__("seed", b"\x00" * 31))),
        (
            "shared",
            _in_payload(lambda p: p.__setitem__("mask_sk", bytes(range(32)))),
        ),  # roster no longer matches
        ("shared", _in_payload(lambda p: p.__setitem__("stage", "MASKED"))),
        ("shared", _in_payload(lambda p: p.__setitem__("device_id", "d2"))),
        ("shared", _in_payload(lambda p: p.pop("own_shares"))),
        ("shared", lambda s: s.__setitem__("kind", SERVER_STATE_KIND)),
        ("masked", _in_payload(lambda p: p.__setitem__("enc_sk", b"\x01" * 32))),  # secrets gone
        ("masked", _in_payload(lambda p: p["held"].__setitem__("d0", [b"\x00" * 50] * 2))),
        (
            "masked",
            _in_payload(
                lambda p: p["held"].__setitem__(
                    "d0", [b"\x00\x05" + p["held"]["d0"][0][2:], p["held"]["d0"][1]]
                )
            ),
        ),  # x of another device
        ("masked", _in_payload(lambda p: p.__setitem__("held", {"d1": p["held"]["d1"]}))),
        ("masked", lambda s: s.__setitem__("format_version", 1)),
    ],
)
def test_client_refuses_a_state_that_does_not_fit(which: str, mutate) -> None:
    config, session, shared, masked, journals = client_states()
    state = copy.deepcopy(shared if which == "shared" else masked)
    mutate(state)
    client = SecAggClient(
        config=config, session=session, device_id="d1", journal=journal_at(journals, which)
    )
    with pytest.raises(StateError):
        client.load_state_dict(state)
    assert client.stage is ClientStage.NEW


def test_states_are_envelopes_around_the_session_and_the_stage() -> None:
    # Prepare
    config, session, runner = server_at_unmasking()
    _, _, shared, _, _ = client_states()

    # Execute
    server_state = runner.server.state_dict()

    # Assert
    for state, kind in ((server_state, SERVER_STATE_KIND), (shared, CLIENT_STATE_KIND)):
        assert set(state) == {"kind", "format_version", "payload"}
        assert (state["kind"], state["format_version"]) == (kind, STATE_VERSION)
        assert state["payload"]["session_id"] == session.session_id
        assert state["payload"]["config"] == config.fingerprint()
    assert (SERVER_STATE_KIND, CLIENT_STATE_KIND, STATE_VERSION) == (
        "fedward.privacy.secagg.server",
        "fedward.privacy.secagg.client",
        3,
    )
    assert server_state["payload"]["stage"] == "COLLECTING_UNMASK_RESPONSES"
    assert shared["payload"]["stage"] == "SHARED"


def _pre_envelope(state: dict, old_format: str) -> dict:
    """The flat form format version 1 wrote: format and version beside the content."""
    return {"format": old_format, "version": 1, **state["payload"]}


def test_pre_envelope_states_are_refused_with_what_to_do() -> None:
    # Prepare
    config, session, runner = server_at_unmasking()
    _, _, shared, _, _ = client_states()
    old_server = _pre_envelope(runner.server.state_dict(), "fedward.secagg.server")
    old_client = _pre_envelope(shared, "fedward.secagg.client")
    server = SecAggServer(config=config, session=session)
    client = SecAggClient(config=config, session=session, device_id="d1")

    # Execute
    with pytest.raises(StateError) as server_refusal:
        server.load_state_dict(old_server)
    with pytest.raises(StateError) as client_refusal:
        client.load_state_dict(old_client)

    # Assert: each says what it is and that the session must be abandoned, not restarted
    for refusal in (server_refusal, client_refusal):
        message = str(refusal.value)
        assert "before the saved-state envelope" in message and "version 1" in message
        assert "abort it and run a new session" in message
    assert server.stage is ServerStage.COLLECTING_ADVERTISEMENTS
    assert client.stage is ClientStage.NEW


def test_a_client_state_does_not_load_into_a_server_or_the_reverse() -> None:
    config, session, runner = server_at_unmasking()
    _, _, shared, _, _ = client_states()
    with pytest.raises(StateError, match="not 'fedward.privacy.secagg.server'"):
        SecAggServer(config=config, session=session).load_state_dict(shared)
    with pytest.raises(StateError, match="not 'fedward.privacy.secagg.client'"):
        SecAggClient(config=config, session=session, device_id="d1").load_state_dict(
            runner.server.state_dict()
        )


def test_a_masked_client_restored_from_its_state_cannot_mask_again() -> None:
    # Prepare: d1 released its masked input and persisted its next stage (MASKED)
    config, session, inputs = setup()
    runner = LocalRunner(config=config, session=session)
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    x = inputs["d1"]
    runner.clients["d1"].mask_input(
        deliveries["d1"], update=x.update, weight=x.weight, counts=x.counts
    )
    saved = copy.deepcopy(runner.clients["d1"].state_dict())
    first = saved["payload"]["released"]["data"]

    # Execute: a restarted device (same durable journal) is asked to mask another input
    restored = SecAggClient(
        config=config, session=session, device_id="d1", journal=runner.clients["d1"].journal
    )
    restored.load_state_dict(saved)
    again = restored.mask_input(
        deliveries["d1"], update=x.update * 3.0, weight=x.weight, counts=x.counts
    )

    # Assert: it re-sends the exact bytes it released; the secrets behind the masks are gone
    assert restored.stage is ClientStage.MASKED
    assert again.data == first
    assert saved["payload"]["seed"] is None and saved["payload"]["mask_sk"] is None


def test_state_error_is_a_saved_state_error() -> None:
    assert issubclass(StateError, SavedStateError)


def test_client_state_holds_no_own_secret_after_masking() -> None:
    _, _, shared, masked, _ = client_states()
    shared, masked = shared["payload"], masked["payload"]
    assert shared["mask_sk"] is not None and shared["seed"] is not None
    assert masked["enc_sk"] is None and masked["mask_sk"] is None and masked["seed"] is None
