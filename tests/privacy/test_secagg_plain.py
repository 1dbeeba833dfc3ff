"""SecAggConfig / SecAggSession plain forms (what the wire carries) and the count words."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedward.privacy.secagg import (
    ClientInput,
    ConfigError,
    LocalRunner,
    OverflowRisk,
    ProtocolViolation,
    SecAggConfig,
    SecAggSession,
    digest_index_set,
    run_local_round,
)


def a_config(**kw: object) -> SecAggConfig:
    base: dict[str, object] = {
        "threshold": 4,
        "scale": 2.0**12,
        "clip": 1.5,
        "weight_scale": 2.0**10,
        "count_words": 4,
        "max_count": 1,
        "max_colluders": 1,
        "min_cohort": 3,
    }
    return SecAggConfig(**{**base, **kw})  # type: ignore[arg-type]


def a_session(n: int = 5, d: int = 7) -> SecAggSession:
    return SecAggSession(
        session_id=bytes(range(32)),
        round_index=9,
        cohort=tuple(f"dev-{i}" for i in reversed(range(n))),
        vector_length=d,
        index_set_digest=digest_index_set(range(d), model_size=d + 3),
    )


def test_config_round_trips_through_json() -> None:
    # Prepare
    config = a_config()
    # Execute
    again = SecAggConfig.from_plain(json.loads(json.dumps(config.to_plain())))
    # Assert: equal, and the same fingerprint (so the same keys)
    assert again == config
    assert again.fingerprint() == config.fingerprint()


def test_config_plain_accepts_an_integral_float_field_written_as_int() -> None:
    plain = a_config().to_plain()
    plain["scale"] = 4096
    assert SecAggConfig.from_plain(plain).scale == 4096.0


@pytest.mark.parametrize(
    "edit",
    [
        {"threshold": 4.0},
        {"threshold": True},
        {"count_words": "4"},
        {"scale": "4096"},
        {"scale": True},
        {"weight_scale": "x"},
        {"max_count": 0},
        {"threshold": 1},
    ],
)
def test_config_plain_is_validated_strictly(edit: dict[str, object]) -> None:
    plain = {**a_config().to_plain(), **edit}
    with pytest.raises(ConfigError):
        SecAggConfig.from_plain(plain)


def test_config_plain_refuses_missing_or_unknown_keys() -> None:
    plain = a_config().to_plain()
    with pytest.raises(ConfigError, match="lacks"):
        SecAggConfig.from_plain({k: v for k, v in plain.items() if k != "clip"})
    with pytest.raises(ConfigError, match="unknown"):
        SecAggConfig.from_plain({**plain, "max_samples": 10})
    with pytest.raises(ConfigError):
        SecAggConfig.from_plain([("threshold", 4)])


def test_session_round_trips_through_json_with_lowercase_hex() -> None:
    # Prepare
    session = a_session()
    # Execute
    plain = session.to_plain()
    again = SecAggSession.from_plain(json.loads(json.dumps(plain)))
    # Assert
    assert again == session
    assert plain["session_id"] == bytes(range(32)).hex()
    assert plain["cohort"] == list(session.cohort)


@pytest.mark.parametrize(
    "edit",
    [
        {"session_id": bytes(range(32)).hex().upper()},
        {"session_id": "abc"},
        {"session_id": "00" * 8},  # too short a session id
        {"index_set_digest": "00" * 31},
        {"cohort": ["dev-1", "dev-0", "dev-2", "dev-3", "dev-4"]},  # not canonical
        {"cohort": "dev-0"},
        {"round_index": 9.0},
        {"vector_length": True},
    ],
)
def test_session_plain_is_validated_strictly(edit: dict[str, object]) -> None:
    plain = {**a_session().to_plain(), **edit}
    with pytest.raises(ConfigError):
        SecAggSession.from_plain(plain)


def test_total_words_counts_the_weight_and_every_count_word() -> None:
    assert a_session(d=7).total_words(a_config(count_words=4)) == 7 + 1 + 4
    assert a_session(d=7).total_words(a_config(count_words=0)) == 7 + 1


def test_count_words_sum_per_bin_over_the_survivors() -> None:
    # Prepare: a one-hot histogram bin per device
    config, session = a_config(), a_session()
    bins = {d: i % 4 for i, d in enumerate(session.cohort)}
    inputs = {
        d: ClientInput(
            update=np.full(7, 0.25),
            weight=1.0,
            counts=tuple(int(b == bins[d]) for b in range(4)),
        )
        for d in session.cohort
    }
    # Execute
    out = run_local_round(config=config, session=session, inputs=inputs)
    # Assert: the server learns the cohort's histogram only
    assert out.result.count_sums == (2, 1, 1, 1)


@pytest.mark.parametrize(
    ("counts", "error"),
    [
        ((1, 0, 0), ProtocolViolation),  # too few words
        ((1, 0, 0, 0, 0), ProtocolViolation),  # too many
        ((2, 0, 0, 0), OverflowRisk),  # above max_count
        ((-1, 0, 0, 0), OverflowRisk),
        ((True, 0, 0, 0), ProtocolViolation),
        ((0.5, 0, 0, 0), ProtocolViolation),
        ("1000", ProtocolViolation),
    ],
)
def test_malformed_counts_are_refused_before_masking(counts: object, error: type) -> None:
    # Prepare
    config, session = a_config(), a_session()
    runner = LocalRunner(config=config, session=session)
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    dev = session.cohort[0]
    client = runner.clients[dev]
    # Execute / Assert: refused, and the client can still mask a good input
    with pytest.raises(error):
        client.mask_input(deliveries[dev], update=np.zeros(7), weight=1.0, counts=counts)  # type: ignore[arg-type]
    client.mask_input(deliveries[dev], update=np.zeros(7), weight=1.0, counts=(0, 0, 1, 0))
