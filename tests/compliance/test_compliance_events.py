"""Audit events: strict typing, UTC timestamps, and the health-data guard."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum, IntEnum
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedward.compliance import (
    Actor,
    ActorKind,
    AuditAction,
    AuditEntry,
    AuditEvent,
    ForbiddenAuditContent,
    Outcome,
    check_details,
    privacy_details,
    sha256_hex,
)
from fedward.compliance.events import (
    DENYLIST_KEYS,
    DENYLIST_WORDS,
    MAX_LIST_LEN,
    MAX_NUMERIC_ITEMS,
    MAX_NUMERIC_TOTAL,
    MAX_STR_LEN,
    canonical_json,
    format_ts,
    to_utc,
)

TS = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
DEVICE = Actor(kind=ActorKind.DEVICE, id="dev-0007")


def _event(details: Any = None, **overrides: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "seq": 0,
        "ts": TS,
        "actor": DEVICE,
        "action": AuditAction.PRIVACY_SPENT,
        "outcome": Outcome.SUCCESS,
        "study_id": "sleep-apnea-01",
        "details": details,
    }
    fields.update(overrides)
    return AuditEvent(**fields)


# -- what is allowed -----------------------------------------------------------
def test_a_privacy_event_with_the_parameters_auditors_ask_for_is_accepted() -> None:
    # Prepare
    details = privacy_details(
        noise_multiplier=1.1,
        clip_norm=1.0,
        sample_rate=0.01,
        steps=1200,
        accountant="rdp",
        epsilon=2.7,
        delta=1e-5,
        epsilon_budget=8.0,
    )
    # Execute
    event = _event(details | {"update_hash": sha256_hex(b"u"), "cohort": ["dev-1", "dev-2"]})
    # Assert
    assert event.details["epsilon"] == 2.7
    assert event.details["accountant"] == "rdp"
    assert event.details["cohort"] == ("dev-1", "dev-2")  # frozen as a tuple


@pytest.mark.parametrize(
    "bad",
    [
        {"sample_rate": 0.0},
        {"delta": 1.0},
        {"epsilon": math.inf},
        {"steps": -1},
        {"noise_multiplier": -0.1},
    ],
)
def test_privacy_details_refuse_impossible_parameters(bad: dict[str, Any]) -> None:
    # Prepare
    params: dict[str, Any] = {
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "sample_rate": 0.01,
        "steps": 10,
        "accountant": "prv",
        "epsilon": 1.0,
        "delta": 1e-5,
    } | bad
    # Execute / Assert
    with pytest.raises(ValueError):
        privacy_details(**params)


def test_numpy_scalars_are_judged_by_the_number_they_hold() -> None:
    # Execute
    event = _event({"steps": np.int64(5), "epsilon": np.float64(0.5), "ok": np.bool_(True)})
    # Assert
    assert event.details == {"steps": 5, "epsilon": 0.5, "ok": True}
    assert type(event.details["steps"]) is int


def test_enum_values_are_logged_by_value_not_by_name() -> None:
    # Prepare
    class Accountant(Enum):
        RDP = "rdp"

    class Level(IntEnum):
        HIGH = 3

    # Execute
    event = _event({"accountant": Accountant.RDP, "level": Level.HIGH, "ids": [Accountant.RDP]})
    # Assert
    assert event.details == {"accountant": "rdp", "level": 3, "ids": ("rdp",)}
    assert type(event.details["level"]) is int


# -- what the guard refuses ---------------------------------------------------
@pytest.mark.parametrize(
    "key",
    [
        "samples",
        "signal",
        "ecg",
        "ppg",
        "x",
        "data",
        "features",
        "raw",
        "window",
        "label",
        "labels",
        "raw_ppg_mean",
        "ecg2_quality",
        "label_counts",
        "patient_name",
    ],
)
def test_denylisted_keys_are_refused(key: str) -> None:
    # Execute / Assert
    with pytest.raises(ForbiddenAuditContent) as err:
        _event({key: 1})
    assert err.value.key == key


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (np.zeros(4), "arrays"),
        (np.zeros((2, 2)).tolist(), "only str or int"),
        (b"\x00\x01", "bytes"),
        (bytearray(b"ab"), "bytes"),
        (memoryview(b"ab"), "bytes"),
        ({"nested": 1}, "nested"),
        (list(range(MAX_NUMERIC_ITEMS + 1)), "numbers"),
        ([f"{0.1 * i:.3f}" for i in range(MAX_NUMERIC_ITEMS + 1)], "numbers"),
        ([0.5, 0.25], "only str or int"),
        ([True, False], "only str or int"),
        ([f"dev-{i}" for i in range(MAX_LIST_LEN + 1)], "longer than"),
        (", ".join(["0.12"] * (MAX_NUMERIC_ITEMS + 1)), "numbers"),
        ("a" * (MAX_STR_LEN + 1), "longer than"),
        ("\ud800", "Unicode"),
        (math.nan, "finite"),
        (-math.inf, "finite"),
        (2**63, "64-bit"),
        ({1, 2}, "unsupported"),
        (datetime(2026, 1, 1, tzinfo=UTC), "unsupported"),
    ],
)
def test_values_outside_the_grammar_are_refused(value: Any, why: str) -> None:
    # Execute / Assert
    with pytest.raises(ForbiddenAuditContent, match=why):
        _event({"value_field": value})


def test_a_signal_spread_over_many_keys_is_refused() -> None:
    # Prepare: each key alone is innocent, together they are a waveform
    details = {f"v{i}": [3 * i, 3 * i + 1, 3 * i + 2] for i in range(MAX_NUMERIC_TOTAL // 3 + 1)}
    # Execute / Assert
    with pytest.raises(ForbiddenAuditContent, match="in all"):
        check_details(details)


@pytest.mark.parametrize("key", ["CamelCase", "with space", "", "1st", "ü", 7])
def test_keys_must_be_lower_snake_case(key: Any) -> None:
    # Execute / Assert
    with pytest.raises(ForbiddenAuditContent, match="snake_case"):
        check_details({key: 1})


def test_the_guard_error_is_not_swallowed_by_pydantic() -> None:
    # Execute / Assert: it stays a ForbiddenAuditContent, not a ValidationError
    with pytest.raises(ForbiddenAuditContent):
        AuditEntry.model_validate_json(
            canonical_json(
                {
                    "seq": 0,
                    "ts": format_ts(TS),
                    "actor": {"kind": "device", "id": "dev-1"},
                    "action": "privacy_spent",
                    "outcome": "success",
                    "study_id": None,
                    "details": {"ecg": [1, 2, 3]},
                    "prev_hash": "0" * 64,
                }
            )
        )


# -- property: whatever passes holds no health-data shape ---------------------
_words = st.sampled_from(
    sorted(DENYLIST_WORDS | DENYLIST_KEYS)
    + ["epsilon", "update", "hash", "model", "version", "cohort", "sample", "rate", "ok"]
)
_keys = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
    st.lists(_words, min_size=1, max_size=3).map("_".join),
    st.text(max_size=12),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.binary(max_size=8),
    st.floats(width=32).map(lambda f: f"{f}"),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=70),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
    ),
    max_leaves=30,
)
# Mostly-innocent detail values, so that many examples pass the guard and the
# property below is exercised on accepted input, not only on refusals.
_plausible = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.lists(
        st.one_of(st.integers(min_value=0, max_value=10**6), st.text(max_size=8)), max_size=24
    ),
)


def _is_number_text(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


@settings(max_examples=250, deadline=None)
@given(
    details=st.dictionaries(_keys, st.one_of(_plausible, _values), max_size=12)
    | st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True), _plausible, max_size=6
    )
)
def test_accepted_details_never_hold_long_numeric_lists_or_denylisted_keys(
    details: dict[str, Any],
) -> None:
    # Execute
    try:
        accepted = check_details(details)
    except ForbiddenAuditContent:
        return
    # Assert
    total = 0
    for key, value in accepted.items():
        assert not ({w.rstrip("0123456789") for w in key.split("_")} & DENYLIST_WORDS)
        assert key not in DENYLIST_KEYS
        if isinstance(value, tuple):
            assert len(value) <= MAX_LIST_LEN
            assert all(isinstance(v, str | int) and not isinstance(v, bool) for v in value)
            numeric = sum(1 for v in value if isinstance(v, int) or _is_number_text(v))
            assert numeric <= MAX_NUMERIC_ITEMS
            total += numeric
        else:
            assert value is None or isinstance(value, str | int | float | bool)
            if isinstance(value, float):
                assert math.isfinite(value)
            if isinstance(value, str):
                assert len(value) <= MAX_STR_LEN
            elif isinstance(value, int | float) and not isinstance(value, bool):
                total += 1
    assert total <= MAX_NUMERIC_TOTAL
    # ... and what is accepted always serialises canonically
    json.loads(canonical_json(accepted))


# -- the event model ----------------------------------------------------------
def test_events_are_frozen_and_refuse_unknown_fields() -> None:
    # Prepare
    event = _event({"update_hash": sha256_hex(b"u")})
    # Execute / Assert
    with pytest.raises(ValidationError):
        event.seq = 5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        _event(None, extra_field=1)


def test_events_are_strict_about_enums_and_ints() -> None:
    # Execute / Assert
    with pytest.raises(ValidationError):
        _event(None, action="privacy_spent")
    with pytest.raises(ValidationError):
        _event(None, seq="1")
    with pytest.raises(ValidationError):
        _event(None, seq=-1)
    with pytest.raises(ValidationError):
        _event(None, study_id="has space")


def test_timestamps_are_normalised_to_fixed_width_utc() -> None:
    # Prepare
    cet = timezone(timedelta(hours=1))
    # Execute
    event = _event(None, ts=datetime(2026, 11, 2, 9, 30, tzinfo=cet))
    dumped = event.model_dump(mode="json")
    # Assert
    assert dumped["ts"] == "2026-11-02T08:30:00.000000Z"
    assert AuditEvent.model_validate_json(json.dumps(dumped)) == event


def test_naive_timestamps_are_refused() -> None:
    # Execute / Assert
    with pytest.raises(ValidationError):
        _event(None, ts=datetime(2026, 11, 2, 8, 30))
    with pytest.raises(ValueError):
        to_utc(datetime(2026, 11, 2, 8, 30))


def test_clock_readings_may_be_posix_seconds() -> None:
    # Execute / Assert
    assert to_utc(0.0) == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(TypeError):
        to_utc(True)  # type: ignore[arg-type]
