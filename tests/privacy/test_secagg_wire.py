"""The SecAgg wire codec: canonical, strict, and lossless for every message of a real round."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedward.privacy.secagg import (
    LocalRunner,
    ProtocolViolation,
    SecAggConfig,
    SecAggSession,
    UnmaskRequest,
    digest_index_set,
)
from fedward.privacy.secagg.wire import MESSAGE_TYPES, decode_message, encode_message


def det_random(seed: bytes) -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)


def real_round_messages() -> list[object]:
    cohort = ("a", "b", "c", "d")
    cfg = SecAggConfig(threshold=3, scale=2.0**12, clip=4.0)
    ses = SecAggSession(
        session_id=b"fill-0000000001x",
        round_index=3,
        cohort=cohort,
        vector_length=5,
        index_set_digest=digest_index_set(range(5), model_size=9),
    )
    runner = LocalRunner(config=cfg, session=ses, random_bytes=det_random(b"w"))
    server, clients = runner.server, runner.clients
    adverts = [clients[d].advertise() for d in cohort]
    for adv in adverts:
        server.receive_advertisement(adv)
    roster = server.close_advertisements()
    bundles = [clients[d].share_keys(roster) for d in cohort]
    for bundle in bundles:
        server.receive_share_bundle(bundle)
    deliveries = server.close_shares()
    masked = [
        clients[d].mask_input(
            deliveries[d], update=np.full(5, 0.1 * i, np.float32), weight=1.0, counts=(1,)
        )
        for i, d in enumerate(cohort[:3])  # d drops before its input
    ]
    for m in masked:
        server.receive_masked_input(m)
    request = server.close_masked_inputs()
    answers = [clients[d].unmask(request) for d in cohort[:3]]
    msgs = [*adverts, roster, *bundles, *deliveries.values(), *masked, request, *answers]
    assert {type(m) for m in msgs} == set(MESSAGE_TYPES.values())
    return msgs


def test_every_message_of_a_real_round_round_trips_byte_for_byte() -> None:
    # Prepare
    msgs = real_round_messages()
    # Execute
    again = [decode_message(encode_message(m), type(m)) for m in msgs]
    # Assert
    assert again == msgs
    assert [encode_message(m) for m in again] == [encode_message(m) for m in msgs]


def test_a_body_of_another_type_is_refused() -> None:
    roster = real_round_messages()[0]
    with pytest.raises(ProtocolViolation, match="expected unmask_request"):
        decode_message(encode_message(roster), UnmaskRequest)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"type":"unmask_request"}',
        b'{"type":"unmask_request","message":{"session_id":"00","round_index":1,'
        b'"survivors":["a"],"dropped":[],"extra":1}}',
        b'{"type":"unmask_request","message":{"session_id":"0G","round_index":1,'
        b'"survivors":["a"],"dropped":[]}}',
        b'{"type":"unmask_request","message":{"session_id":"AB","round_index":1,'
        b'"survivors":["a"],"dropped":[]}}',
        b'{"type":"unmask_request","message":{"session_id":"ab","round_index":true,'
        b'"survivors":["a"],"dropped":[]}}',
        b'{"type":"unmask_request","message":{"session_id":"ab","round_index":1,'
        b'"survivors":[1],"dropped":[]}}',
    ],
)
def test_malformed_bodies_are_refused_with_a_protocol_violation(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_message(body, UnmaskRequest)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        decode_message(data, UnmaskRequest)
    except ProtocolViolation:
        pass


@given(
    sid=st.binary(min_size=16, max_size=64),
    rnd=st.integers(min_value=0, max_value=2**40),
    ids=st.lists(st.text(min_size=1, max_size=8), max_size=6, unique=True),
)
def test_unmask_requests_round_trip(sid: bytes, rnd: int, ids: list[str]) -> None:
    half = len(ids) // 2
    msg = UnmaskRequest(
        session_id=sid, round_index=rnd, survivors=tuple(ids[:half]), dropped=tuple(ids[half:])
    )
    assert decode_message(encode_message(msg), UnmaskRequest) == msg


def test_the_layout_flattens_and_unflattens_a_subset_in_model_order() -> None:
    from fedward.privacy.secagg.layout import VectorLayout

    # Prepare
    shapes = {"b.bias": (3,), "a.weight": (2, 2), "c.weight": (4,)}
    layout = VectorLayout.for_subset(shapes, ["c.weight", "a.weight"])
    tensors = {"a.weight": np.arange(4.0).reshape(2, 2), "c.weight": np.arange(4.0) + 10}
    # Execute
    vec = layout.flatten(tensors)
    back = layout.unflatten(vec)
    # Assert: model order a.weight (0-3), b.bias (4-6), c.weight (7-10)
    assert layout.index_set().tolist() == [0, 1, 2, 3, 7, 8, 9, 10]
    assert vec.tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    assert all(np.array_equal(back[n], tensors[n]) for n in tensors)
    assert layout.digest == digest_index_set([0, 1, 2, 3, 7, 8, 9, 10], model_size=11)
    with pytest.raises(ProtocolViolation):
        layout.flatten({"a.weight": np.zeros((2, 2))})
    with pytest.raises(ProtocolViolation):
        layout.flatten({"a.weight": np.zeros((4,)), "c.weight": np.zeros(4)})


# -- KeyRoster.evidence: opaque bytes per advertisement, absent when empty -----------------


def _real_roster():
    from fedward.privacy.secagg import KeyRoster

    return next(m for m in real_round_messages() if isinstance(m, KeyRoster))


def test_a_roster_carries_one_evidence_item_per_advertisement_losslessly() -> None:
    # Prepare
    from dataclasses import replace

    from fedward.privacy.secagg import KeyRoster

    roster = _real_roster()
    items = tuple(bytes([i]) * (100 + i) for i in range(len(roster.advertisements)))
    with_evidence = replace(roster, evidence=items)
    # Execute
    body = encode_message(with_evidence)
    again = decode_message(body, KeyRoster)
    # Assert: round trip, canonical bytes, and the bare roster's body has no evidence key
    assert again == with_evidence and encode_message(again) == body
    assert "evidence" not in json.loads(encode_message(roster))["message"]
    assert json.loads(body)["message"]["evidence"] == [i.hex() for i in items]


@pytest.mark.parametrize(
    "evidence, message",
    [
        ([], "non-empty list"),
        (["ab"], "evidence items for 4 advertisements"),
        (["AB"] * 4, "lowercase"),
        (["zz"] * 4, "not hex"),
        ([1, 2, 3, 4], "expected hex"),
        ("abab", "non-empty list"),
    ],
)
def test_malformed_roster_evidence_is_refused(evidence, message: str) -> None:
    # Prepare
    from fedward.privacy.secagg import KeyRoster

    body = json.loads(encode_message(_real_roster()))
    body["message"]["evidence"] = evidence
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    # Execute / Assert
    with pytest.raises(ProtocolViolation, match=message):
        decode_message(raw, KeyRoster)


def test_an_evidence_item_above_the_bound_is_refused() -> None:
    # Prepare
    from fedward.privacy.secagg import KeyRoster
    from fedward.privacy.secagg.wire import MAX_EVIDENCE_BYTES

    body = json.loads(encode_message(_real_roster()))
    body["message"]["evidence"] = ["00" * (MAX_EVIDENCE_BYTES + 1)] * 4
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    # Execute / Assert
    with pytest.raises(ProtocolViolation, match="at most"):
        decode_message(raw, KeyRoster)
