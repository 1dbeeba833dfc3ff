"""Secure-aggregation wire messages: Task.secagg, SecAggMessage frames, topics and routes."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedward.protocol.codec import encode_tensors
from fedward.protocol.errors import BadSignature, DecodeError, EncodeError, Replayed, RouteError
from fedward.protocol.messages import (
    MAX_SECAGG_BODY_BYTES,
    MESSAGE_ADAPTER,
    MessageKind,
    SecAggMessage,
    SecAggParams,
    SecAggPhase,
    SecAggWeighting,
    Task,
    decode_frame,
    encode_frame,
    parse_header,
    secagg_body,
    secagg_frame_tensors,
)
from fedward.protocol.signing import ReplayGuard, Role, SealContext, open_seal, seal, verify
from fedward.protocol.topics import (
    TopicKind,
    check_route,
    device_topic,
    parse_topic,
)

MAX = 1 << 24
ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
UPLINK = [p for p in SecAggPhase if p.uplink]
DOWNLINK = [p for p in SecAggPhase if not p.uplink]
BODY_PHASES = [p for p in SecAggPhase if p not in (SecAggPhase.MASKED_INPUT, SecAggPhase.ABORT)]
PARAMS = SecAggParams(
    fill_id="fill-3",
    config={"threshold": 4, "modulus_bits": 32, "max_colluders": 1, "count_words": 3},
    session={"session_id": "ab" * 32, "round_index": 7, "members": ["d1", "d2"]},
    phase_timeout_s=20.0,
    weighting=SecAggWeighting(
        energy_reference=0.02, energy_tolerance=1.5, energy_beta=0.5, norm_bound=3.0
    ),
    energy_bins=(-9.0, -6.0, -3.0),
    ddp=None,
)


def task(**secagg) -> Task:
    return Task(
        task_id="t-1",
        study_id="study-1",
        device_id="dev_7",
        model_version=7,
        subset_id="s.small",
        subset_names=("fc.weight",),
        local_epochs=1,
        batch_size=16,
        lr=0.05,
        deadline_s=30.0,
        secagg=PARAMS.model_copy(update=secagg) if secagg else PARAMS,
    )


def header(phase: SecAggPhase, device: str = "dev_7") -> SecAggMessage:
    return SecAggMessage(
        study_id="study-1", device_id=device, task_id="t-1", fill_id="fill-3", phase=phase
    )


def test_a_secagg_task_round_trips_through_json_and_frames():
    # Prepare
    message = task()
    # Execute
    via_json = MESSAGE_ADAPTER.validate_json(message.model_dump_json())
    decoded, tensors = decode_frame(encode_frame(message), max_bytes=MAX)
    # Assert
    assert via_json == message and decoded == message and tensors == {}
    assert decoded.secagg is not None and decoded.secagg.config["threshold"] == 4
    assert json.loads(message.model_dump_json())["secagg"]["weighting"]["energy_beta"] == 0.5


@pytest.mark.parametrize(
    "change",
    [
        {"energy_bins": (1.0, 1.0)},  # not strictly increasing
        {"energy_bins": tuple(float(i) for i in range(65))},  # too many bins
        {"phase_timeout_s": 0.0},
        {"fill_id": "a/b"},  # would inject a topic level
    ],
)
def test_secagg_params_refuse_bad_values(change):
    # Prepare
    plain = json.loads(PARAMS.model_dump_json()) | {
        k: list(v) if isinstance(v, tuple) else v for k, v in change.items()
    }
    # Execute / Assert
    with pytest.raises(ValidationError):
        SecAggParams.model_validate_json(json.dumps(plain))


def test_secagg_weighting_refuses_negative_and_non_finite_numbers():
    # Prepare
    good = json.loads(PARAMS.weighting.model_dump_json())
    # Execute / Assert
    for field, bad in [("energy_beta", -1.0), ("energy_tolerance", 0.0), ("norm_bound", 0.0)]:
        with pytest.raises(ValidationError):
            SecAggWeighting.model_validate_json(json.dumps(good | {field: bad}))
    with pytest.raises(DecodeError):  # NaN never reaches the model: the parser refuses it
        parse_header(task().model_dump_json().replace("0.02", "NaN").encode())


@settings(max_examples=60, deadline=None)
@given(phase=st.sampled_from(BODY_PHASES), body=st.binary(min_size=1, max_size=4096))
def test_a_body_step_round_trips_byte_for_byte(phase, body):
    # Prepare
    message = header(phase)
    # Execute
    frame = encode_frame(message, secagg_frame_tensors(phase, body=body))
    decoded, tensors = decode_frame(frame, max_bytes=MAX)
    # Assert
    assert decoded == message and decoded.kind is MessageKind.SECAGG
    assert secagg_body(tensors) == body


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([np.uint32, np.uint64]),
    words=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=500),
)
def test_masked_words_round_trip_exactly(dtype, words):
    # Prepare
    array = np.asarray(words, dtype=dtype)
    message = header(SecAggPhase.MASKED_INPUT)
    # Execute
    frame = encode_frame(message, secagg_frame_tensors(SecAggPhase.MASKED_INPUT, words=array))
    decoded, tensors = decode_frame(frame, max_bytes=MAX)
    # Assert
    assert decoded == message and list(tensors) == ["words"]
    assert tensors["words"].dtype == np.dtype(dtype) and np.array_equal(tensors["words"], array)


def test_an_abort_carries_nothing():
    # Execute
    decoded, tensors = decode_frame(encode_frame(header(SecAggPhase.ABORT)), max_bytes=MAX)
    # Assert
    assert decoded.phase is SecAggPhase.ABORT and tensors == {}


@pytest.mark.parametrize(
    ("phase", "tensors"),
    [
        (SecAggPhase.ADVERTISE, {}),  # a body phase without its body
        (SecAggPhase.ADVERTISE, {"words": np.zeros(3, np.uint32)}),  # words for a body
        (SecAggPhase.MASKED_INPUT, {"body": np.zeros(3, np.uint8)}),  # hex words: one shape
        (SecAggPhase.MASKED_INPUT, {}),
        (
            SecAggPhase.MASKED_INPUT,
            {"words": np.zeros(3, np.uint32), "body": np.zeros(1, np.uint8)},
        ),
        (SecAggPhase.MASKED_INPUT, {"words": np.zeros(3, np.float32)}),  # not words
        (SecAggPhase.MASKED_INPUT, {"words": np.zeros(3, np.int64)}),
        (SecAggPhase.MASKED_INPUT, {"words": np.zeros((2, 2), np.uint32)}),
        (SecAggPhase.MASKED_INPUT, {"words": np.zeros(0, np.uint32)}),
        (SecAggPhase.SHARES, {"body": np.zeros(4, np.int8)}),
        (SecAggPhase.SHARES, {"body": np.zeros(MAX_SECAGG_BODY_BYTES + 1, np.uint8)}),
        (SecAggPhase.ABORT, {"body": np.zeros(1, np.uint8)}),
        (SecAggPhase.ROSTER, {"model": np.zeros(1, np.uint8)}),
    ],
)
def test_a_frame_whose_tensors_do_not_fit_its_phase_is_refused_both_ways(phase, tensors):
    # Prepare: a valid frame of another phase, whose header is then swapped in
    message = header(phase)
    # Execute / Assert: the encoder refuses
    with pytest.raises(EncodeError):
        encode_frame(message, tensors, max_bytes=MAX_SECAGG_BODY_BYTES * 2)
    # and a hand-built frame with that pairing is refused by the decoder
    frame = _forged_frame(message, tensors)
    with pytest.raises(DecodeError):
        decode_frame(frame, max_bytes=MAX_SECAGG_BODY_BYTES * 2)


def _forged_frame(message: SecAggMessage, tensors: dict[str, np.ndarray]) -> bytes:
    """A frame pairing ``message`` with ``tensors``, built past the encoder's checks."""
    raw = message.model_dump_json().encode()
    payload = encode_tensors(tensors) if tensors else b""
    head = struct.pack("<4sBBII", b"FWFR", 1, 0, len(raw), len(payload)) + raw
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def test_frame_tensor_helper_refuses_both_body_and_words():
    # Execute / Assert
    with pytest.raises(EncodeError):
        secagg_frame_tensors(SecAggPhase.MASKED_INPUT, body=b"x", words=np.zeros(2, np.uint32))


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=300))
def test_the_parser_never_crashes_on_hostile_secagg_headers(raw):
    # Prepare: any bytes after a secagg-looking prefix
    text = b'{"protocol_version":4,"kind":"secagg",' + raw
    # Execute / Assert: a DecodeError or a valid message, nothing else
    try:
        parse_header(text)
    except DecodeError:
        pass


@settings(max_examples=60, deadline=None)
@given(
    phase=st.sampled_from(list(SecAggPhase)),
    field=st.sampled_from(["study_id", "device_id", "task_id", "fill_id"]),
    bad=st.one_of(st.just(""), st.just("a/b"), st.just("+"), st.integers(), st.none()),
)
def test_secagg_headers_refuse_bad_ids(phase, field, bad):
    # Prepare
    plain = json.loads(header(phase).model_dump_json()) | {field: bad}
    # Execute / Assert
    with pytest.raises(ValidationError):
        MESSAGE_ADAPTER.validate_json(json.dumps(plain))


def test_unknown_phase_and_extra_fields_are_refused():
    # Prepare
    plain = json.loads(header(SecAggPhase.ADVERTISE).model_dump_json())
    # Execute / Assert
    with pytest.raises(ValidationError):
        MESSAGE_ADAPTER.validate_json(json.dumps(plain | {"phase": "ADVERTISE"}))
    with pytest.raises(ValidationError):
        MESSAGE_ADAPTER.validate_json(json.dumps(plain | {"words": [1, 2]}))


@settings(max_examples=40, deadline=None)
@given(study=ids, device=ids)
def test_secagg_topics_round_trip(study, device):
    # Execute
    up = parse_topic(device_topic(TopicKind.SECAGG, study, device))
    down = parse_topic(device_topic(TopicKind.FILL, study, device))
    # Assert
    assert device_topic(TopicKind.SECAGG, study, device) == f"fedward/v1/{study}/secagg/{device}"
    assert device_topic(TopicKind.FILL, study, device) == f"fedward/v1/{study}/fill/{device}"
    assert (up.kind, up.device_id, down.kind, down.device_id) == (
        TopicKind.SECAGG,
        device,
        TopicKind.FILL,
        device,
    )


@pytest.mark.parametrize("phase", UPLINK)
def test_uplink_steps_ride_only_their_senders_secagg_topic(phase):
    # Prepare
    own = parse_topic(device_topic(TopicKind.SECAGG, "study-1", "dev_7"))
    other = parse_topic(device_topic(TopicKind.SECAGG, "study-1", "dev_8"))
    fill = parse_topic(device_topic(TopicKind.FILL, "study-1", "dev_7"))
    other_study = parse_topic(device_topic(TopicKind.SECAGG, "study-2", "dev_7"))
    update = parse_topic(device_topic(TopicKind.UPDATE, "study-1", "dev_7"))
    # Execute / Assert
    check_route(own, header(phase))
    for topic in (other, fill, other_study, update):
        with pytest.raises(RouteError):
            check_route(topic, header(phase))


@pytest.mark.parametrize("phase", DOWNLINK)
def test_downlink_steps_ride_only_the_members_fill_topic(phase):
    # Prepare
    own = parse_topic(device_topic(TopicKind.FILL, "study-1", "dev_7"))
    other = parse_topic(device_topic(TopicKind.FILL, "study-1", "dev_8"))
    uplink = parse_topic(device_topic(TopicKind.SECAGG, "study-1", "dev_7"))
    # Execute / Assert
    check_route(own, header(phase))
    for topic in (other, uplink):
        with pytest.raises(RouteError):
            check_route(topic, header(phase))


def test_a_sealed_masked_input_verifies_and_a_replay_is_refused():
    # Prepare: the signed envelope every live frame travels in
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    words = np.arange(10, dtype=np.uint32)
    frame = encode_frame(
        header(SecAggPhase.MASKED_INPUT),
        secagg_frame_tensors(SecAggPhase.MASKED_INPUT, words=words),
    )
    context = SealContext(Role.DEVICE, "study-1", "dev_7")
    sealed = seal(frame, key=key, context=context, counter=1)
    guard = ReplayGuard()
    # Execute
    envelope = open_seal(sealed)
    inner = verify(envelope, public_key=public, context=context)
    guard.check("dev_7", envelope.counter)
    # Assert
    assert inner == frame
    with pytest.raises(Replayed):
        guard.check("dev_7", open_seal(sealed).counter)
    with pytest.raises(BadSignature):  # replayed onto another member's topic
        verify(envelope, public_key=public, context=SealContext(Role.DEVICE, "study-1", "dev_8"))
