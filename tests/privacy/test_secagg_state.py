"""state_dict / load_state_dict: resume mid-protocol, and refuse states that do not fit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
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
)
from fedward.privacy.secagg.masking import encode_contribution
from fedward.privacy.secagg.quantize import mod_sum


def setup(n: int = 5, t: int = 3, d: int = 200, sid: bytes = b"restart-session-01"):
    config = SecAggConfig(threshold=t, scale=2.0**14, clip=1.0)
    session = SecAggSession(
        session_id=sid, round_index=2, cohort=tuple(f"d{i}" for i in range(n)), vector_length=d
    )
    rng = np.random.default_rng(11)  # test data only
    inputs = {
        dev: ClientInput(update=rng.uniform(-1, 1, d), weight=0.5, num_samples=10 + i)
        for i, dev in enumerate(session.cohort)
    }
    return config, session, inputs


def expected(config, session, inputs, survivors) -> np.ndarray:
    words = [
        encode_contribution(
            inputs[d].update,
            weight=inputs[d].weight,
            num_samples=inputs[d].num_samples,
            config=config,
            session=session,
        )
        for d in survivors
    ]
    return mod_sum(words, modulus_bits=config.modulus_bits, n_words=session.total_words)


def restart_everyone(runner: LocalRunner, config, session) -> None:
    """Rebuild the server and every client from deep copies of their state dicts."""
    saved = copy.deepcopy(runner.server.state_dict())
    runner.server = SecAggServer(config=config, session=session)
    runner.server.load_state_dict(saved)
    assert runner.server.state_dict() == saved
    for dev, client in list(runner.clients.items()):
        state = copy.deepcopy(client.state_dict())
        runner.clients[dev] = SecAggClient(config=config, session=session, device_id=dev)
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
    assert np.array_equal(
        result.encoded_sum, expected(config, session, inputs, ("d1", "d2", "d3", "d4", "d5"))
    )
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
        runner.clients["d0"].mask_input(
            deliveries["d0"], update=x.update, weight=0.5, num_samples=10
        )
    )
    restart_everyone(runner, config, session)
    request = runner.mask(session.cohort[1:], deliveries, inputs)
    runner.server.receive_unmask_response(runner.clients["d0"].unmask(request))
    restart_everyone(runner, config, session)
    result = runner.unmask(session.cohort[1:3], request)
    assert np.array_equal(result.encoded_sum, expected(config, session, inputs, session.cohort))


def server_at_unmasking():
    config, session, inputs = setup()
    runner = LocalRunner(config=config, session=session)
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    request = runner.mask(session.cohort[:4], deliveries, inputs)
    runner.server.receive_unmask_response(runner.clients["d0"].unmask(request))
    return config, session, runner


def mutations():
    def set_(key, value):
        return lambda s: s.__setitem__(key, value)

    def truncate_masked(s):
        dev = next(iter(s["masked"]))
        s["masked"][dev] = s["masked"][dev][:-4]

    def overlap(s):
        s["dropped"] = s["dropped"] + [s["survivors"][0]]

    return {
        "version": set_("version", 2),
        "format": set_("format", "fedward.secagg.client"),
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
    runner.mask(session.cohort, deliveries, inputs)
    masked = copy.deepcopy(runner.clients["d1"].state_dict())
    return config, session, shared, masked


@pytest.mark.parametrize(
    ("which", "mutate"),
    [
        ("shared", lambda s: s.__setitem__("seed", b"\x00" * 31)),
        (
            "shared",
            lambda s: s.__setitem__("mask_sk", bytes(range(32))),
        ),  # roster no longer matches
        ("shared", lambda s: s.__setitem__("stage", "MASKED")),
        ("shared", lambda s: s.__setitem__("device_id", "d2")),
        ("masked", lambda s: s.__setitem__("enc_sk", b"\x01" * 32)),  # secrets must be gone
        ("masked", lambda s: s["held"].__setitem__("d0", [b"\x00" * 50, b"\x00" * 50])),
        (
            "masked",
            lambda s: s["held"].__setitem__(
                "d0", [b"\x00\x05" + s["held"]["d0"][0][2:], s["held"]["d0"][1]]
            ),
        ),  # x of another device
        ("masked", lambda s: s.__setitem__("held", {"d1": s["held"]["d1"]})),  # below threshold
        ("masked", lambda s: s.__setitem__("version", 0)),
    ],
)
def test_client_refuses_a_state_that_does_not_fit(which: str, mutate) -> None:
    config, session, shared, masked = client_states()
    state = copy.deepcopy(shared if which == "shared" else masked)
    mutate(state)
    client = SecAggClient(config=config, session=session, device_id="d1")
    with pytest.raises(StateError):
        client.load_state_dict(state)
    assert client.stage is ClientStage.NEW


def test_client_state_holds_no_own_secret_after_masking() -> None:
    _, _, shared, masked = client_states()
    assert shared["mask_sk"] is not None and shared["seed"] is not None
    assert masked["enc_sk"] is None and masked["mask_sk"] is None and masked["seed"] is None
