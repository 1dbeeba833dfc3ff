"""fedward.saved_state: seal and open the one envelope every saved state shares."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedward.errors import FedwardError, SavedStateError
from fedward.saved_state import (
    CHECKSUM_KEY,
    ENVELOPE_KEYS,
    content_sha256,
    open_checked,
    open_envelope,
    seal,
    seal_checked,
)

KIND = "fedward.tests.thing"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
json_payloads = st.dictionaries(st.text(), json_values, max_size=6)


class ThingStateError(SavedStateError):
    """A package's own state error, as each owner chooses one."""


@given(payload=json_payloads, version=st.integers(min_value=0, max_value=2**31))
def test_any_json_payload_survives_seal_json_and_open(payload: dict, version: int) -> None:
    # Prepare
    sealed = seal(KIND, version, payload)

    # Execute: through a file's worth of JSON text, as states are stored
    opened = open_envelope(json.loads(json.dumps(sealed)), kind=KIND, format_version=version)

    # Assert
    assert set(sealed) == ENVELOPE_KEYS == {"kind", "format_version", "payload"}
    assert opened == payload


def test_seal_copies_the_payload_mapping() -> None:
    payload = {"a": 1}
    sealed = seal(KIND, 1, payload)
    payload["a"] = 2
    assert sealed["payload"] == {"a": 1}


@pytest.mark.parametrize(
    ("kind", "version"), [("", 1), (None, 1), (KIND, True), (KIND, 1.0), (KIND, "1")]
)
def test_seal_refuses_an_empty_kind_or_a_non_int_version(kind, version) -> None:
    with pytest.raises(ValueError):
        seal(kind, version, {})


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([("kind", KIND)], "must be a mapping, not list"),
        ({"kind": KIND, "format_version": 1}, "exactly the keys"),  # missing payload
        ({"kind": KIND, "format_version": 1, "payload": {}, "sha256": ""}, "exactly the keys"),
        ({"format": KIND, "version": 1, "payload": {}}, "exactly the keys"),
        ({"kind": "fedward.tests.other", "format_version": 1, "payload": {}}, "not 'fedward.tests"),
        (
            {"kind": KIND, "format_version": 2, "payload": {}},
            "format version 2; this build reads 1",
        ),
        ({"kind": KIND, "format_version": True, "payload": {}}, "format version True"),
        ({"kind": KIND, "format_version": "1", "payload": {}}, "format version '1'"),
        ({"kind": KIND, "format_version": 1, "payload": [1]}, "payload .* must be a mapping"),
        ({"kind": KIND, "format_version": 1, "payload": None}, "payload .* must be a mapping"),
    ],
)
def test_open_refuses_a_state_that_is_not_this_envelope(state, message) -> None:
    with pytest.raises(SavedStateError, match=message):
        open_envelope(state, kind=KIND, format_version=1)


def test_open_refuses_true_where_version_1_is_expected() -> None:
    # True == 1 in Python; a bool is never a format version
    state = {"kind": KIND, "format_version": True, "payload": {}}
    with pytest.raises(SavedStateError):
        open_envelope(state, kind=KIND, format_version=1)


@pytest.mark.parametrize("found", [1.0, True], ids=["float", "bool"])
def test_open_refuses_what_seal_refuses_even_if_it_equals_the_version(found) -> None:
    # Prepare: 1.0 == 1 and True == 1, but seal writes only an int
    state = {"kind": KIND, "format_version": found, "payload": {}}
    with pytest.raises(ValueError):
        seal(KIND, found, {})
    # Execute / Assert: open_envelope refuses the same values
    with pytest.raises(SavedStateError, match=f"format version {found!r}"):
        open_envelope(state, kind=KIND, format_version=1)
    with pytest.raises(SavedStateError, match=f"format version {found!r}"):
        open_envelope(json.loads(json.dumps(state)), kind=KIND, format_version=1)


def test_open_raises_the_owners_error_class() -> None:
    # Prepare
    state = seal("fedward.tests.other", 1, {})

    # Execute / Assert
    with pytest.raises(ThingStateError, match="not 'fedward.tests.thing'") as refused:
        open_envelope(state, kind=KIND, format_version=1, error=ThingStateError)
    assert isinstance(refused.value, SavedStateError) and isinstance(refused.value, FedwardError)


def test_open_checks_the_envelope_before_the_payload() -> None:
    # a payload that would fail any owner's check is not looked at under the wrong kind
    state = {"kind": "fedward.tests.other", "format_version": 1, "payload": object()}
    with pytest.raises(SavedStateError, match="not 'fedward.tests.thing'"):
        open_envelope(state, kind=KIND, format_version=1)


def test_a_checked_payload_round_trips_and_refuses_any_edit() -> None:
    # Prepare
    state = seal_checked("fedward.test.checked", 1, {"policy": {"epsilon": 8.0}, "spent": [1, 2]})
    keys = frozenset({"policy", "spent"})
    edited = {**state, "payload": {**state["payload"], "spent": [1]}}
    # Execute
    content = open_checked(state, kind="fedward.test.checked", format_version=1, keys=keys)
    # Assert
    assert content == {"policy": {"epsilon": 8.0}, "spent": [1, 2]}
    assert state["payload"][CHECKSUM_KEY] == content_sha256(content)
    with pytest.raises(SavedStateError, match="checksum mismatch"):
        open_checked(edited, kind="fedward.test.checked", format_version=1, keys=keys)
    with pytest.raises(SavedStateError, match="payload keys"):
        open_checked(state, kind="fedward.test.checked", format_version=1, keys=frozenset())
    with pytest.raises(ValueError, match="checksum key"):
        seal_checked("fedward.test.checked", 1, {CHECKSUM_KEY: "forged"})
    with pytest.raises(ValueError):
        seal_checked("fedward.test.checked", 1, {"x": float("nan")})  # not canonical JSON
