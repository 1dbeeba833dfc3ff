"""Wire messages and frames: strict validation, round trips, hostile input."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from fedward.protocol.errors import DecodeError, EncodeError, MessageTooLarge, UnsupportedVersion
from fedward.protocol.messages import (
    FRAME_VERSION,
    MESSAGE_ADAPTER,
    PROTOCOL_VERSION,
    Accountant,
    Ack,
    AckStatus,
    DeviceClass,
    DeviceStatus,
    DpParams,
    Enrol,
    EnrolAck,
    ErrorCode,
    ErrorMessage,
    Heartbeat,
    ModelDownload,
    PrivacyReport,
    Task,
    Update,
    decode_frame,
    encode_frame,
    frame_size,
    parse_header,
)

MAX = 1 << 24
REPORT = PrivacyReport(
    noise_multiplier=1.1,
    sample_rate=0.01,
    steps=120,
    max_grad_norm=1.0,
    accountant=Accountant.PRV,
    claimed_epsilon=2.5,
    delta=1e-5,
)
UPDATE = Update(
    task_id="t-1",
    device_id="dev_7",
    base_model_version=3,
    subset_id="s.small",
    num_samples=64,
    update_energy=0.25,
    train_loss=0.7,
)
# a DP update: no loss, no count (outside the accountant), the device's privacy report
DP_UPDATE = Update(
    task_id="t-2",
    device_id="dev_7",
    base_model_version=3,
    subset_id="s.small",
    privacy=REPORT,
)
SAMPLES = [
    Enrol(
        device_id="dev_7",
        study_id="study-1",
        device_class=DeviceClass.WEARABLE,
        memory_bytes=256 * 1024,
        public_key=bytes(range(32)),
    ),
    EnrolAck(accepted=False, reason="study closed"),
    Task(
        task_id="t-1",
        study_id="study-1",
        device_id="dev_7",
        model_version=3,
        subset_id="s.small",
        subset_names=("fc.weight", "fc.bias"),
        local_epochs=1,
        batch_size=16,
        lr=0.05,
        deadline_s=30.0,
        dp=DpParams(noise_multiplier=1.1, max_grad_norm=1.0, sample_rate=0.01, delta=1e-5),
    ),
    ModelDownload(model_version=3, subset_id="s.small", names=("fc.weight",)),
    UPDATE,
    DP_UPDATE,
    Ack(task_id="t-1", status=AckStatus.BUFFERED),
    Heartbeat(device_id="dev_7", status=DeviceStatus.TRAINING, battery=0.4),
    ErrorMessage(code=ErrorCode.BUDGET_EXHAUSTED, detail="epsilon 8.0 spent"),
]


def header_frame(header: dict, version: int = FRAME_VERSION) -> bytes:
    """A frame with an arbitrary (possibly invalid) JSON header and a valid CRC."""
    raw = json.dumps(header).encode()
    head = struct.pack("<4sBBII", b"FWFR", version, 0, len(raw), 0) + raw
    return head + struct.pack("<I", zlib.crc32(head))


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.kind.value)
def test_every_message_round_trips_through_json_and_frames(message):
    # Prepare: a ModelDownload must travel with exactly the tensors it names
    names = getattr(message, "names", ())
    tensors = {n: np.ones(3, np.float32) for n in names} or None
    # Execute
    via_json = MESSAGE_ADAPTER.validate_json(message.model_dump_json())
    frame = encode_frame(message, tensors)
    decoded, out = decode_frame(frame, max_bytes=MAX)
    # Assert
    assert via_json == message and decoded == message and list(out) == list(names)
    assert message.protocol_version == PROTOCOL_VERSION
    assert frame_size(message, tensors) == len(frame)


def test_public_key_is_base64_on_the_wire():
    # Prepare
    enrol = SAMPLES[0]
    # Execute
    wire = json.loads(enrol.model_dump_json())
    # Assert
    assert isinstance(wire["public_key"], str) and len(wire["public_key"]) == 44
    assert wire["device_class"] == "wearable"


tensor_maps = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True),
    st.sampled_from(["<f4", "<f2", "<i8", "bool"]).flatmap(
        lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0))
    ),
    max_size=4,
)


@settings(max_examples=100, deadline=None)
@given(tensor_maps)
def test_tensor_frames_round_trip_with_exact_size(tensors):
    # Prepare
    header = ModelDownload(model_version=1, subset_id="all", names=tuple(tensors))
    # Execute
    frame = encode_frame(header, tensors)
    decoded, out = decode_frame(frame, max_bytes=MAX)
    # Assert
    assert decoded == header and list(out) == list(tensors)
    assert all(
        out[k].tobytes() == v.tobytes() and out[k].shape == v.shape for k, v in tensors.items()
    )
    assert frame_size(header, tensors) == len(frame)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_bit_flips_and_truncations_raise_decode_error(data):
    # Prepare
    tensors = {"w": np.arange(5, dtype=np.float32)}
    frame = encode_frame(UPDATE, tensors)
    flipped = bytearray(frame)
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    flipped[bit // 8] ^= 1 << (bit % 8)
    cut = data.draw(st.integers(0, len(frame) - 1))
    # Execute / Assert
    with pytest.raises(DecodeError):
        decode_frame(bytes(flipped), max_bytes=MAX)
    with pytest.raises(DecodeError):
        decode_frame(frame[:cut], max_bytes=MAX)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_decode_error(blob):
    # Execute / Assert
    for candidate in (blob, b"FWFR\x01\x00" + blob):
        with pytest.raises(DecodeError):
            decode_frame(candidate, max_bytes=MAX)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_samples", True),
        ("num_samples", 0),
        ("num_samples", 3.0),
        ("num_samples", "3"),
        ("update_energy", True),
        ("update_energy", -1.0),
        ("update_energy", float("nan")),
        ("update_energy", float("inf")),
        ("train_loss", float("-inf")),
        ("device_id", "dev/+"),
        ("device_id", "dev#"),
        ("device_id", ""),
        ("device_id", "x" * 65),
        ("protocol_version", True),
        ("protocol_version", PROTOCOL_VERSION - 1),
        ("protocol_version", PROTOCOL_VERSION + 1),
        ("sneaky_extra", 1),
    ],
)
def test_strict_validation_in_python(field, value):
    # Prepare
    fields = UPDATE.model_dump() | {field: value}
    # Execute / Assert
    with pytest.raises(ValidationError):
        Update(**fields)


def test_enums_and_tuples_are_required_in_python():
    # Execute / Assert: strict mode refuses bare strings and lists
    with pytest.raises(ValidationError):
        Heartbeat(device_id="d", status="idle")
    with pytest.raises(ValidationError):
        ModelDownload(model_version=1, subset_id="s", names=["a"])
    with pytest.raises(ValidationError):
        ModelDownload(model_version=1, subset_id="s", names=("a", "a"))
    with pytest.raises(ValidationError):
        Enrol(**(SAMPLES[0].model_dump() | {"public_key": bytes(31)}))


@pytest.mark.parametrize(
    "field, value", [("train_loss", 0.7), ("num_samples", 64), ("update_energy", 0.25)]
)
def test_a_dp_update_carries_no_loss_and_no_count(field, value):
    # Prepare: both are data-dependent releases outside the DP-SGD accountant (issue 9)
    fields = DP_UPDATE.model_dump() | {field: value}
    fields["privacy"] = REPORT
    # Execute / Assert
    with pytest.raises(ValidationError, match="no train_loss and no num_samples"):
        Update(**fields)


def test_messages_are_frozen():
    # Execute / Assert
    with pytest.raises(ValidationError):
        UPDATE.num_samples = 5


@pytest.mark.parametrize(
    "patch",
    [
        {"num_samples": True},
        {"num_samples": 1.0},
        {"update_energy": True},
        {"update_energy": "0.5"},
        {"kind": "nonsense"},
        {"extra": 1},
        {"privacy": {"accountant": "RDP"}},
        {"protocol_version": True},
        {"protocol_version": 1.0},
        {"protocol_version": None},
    ],
)
def test_strict_validation_on_the_wire(patch):
    # Prepare
    header = json.loads(UPDATE.model_dump_json())
    header["privacy"] = json.loads(REPORT.model_dump_json())
    header["num_samples"] = header["train_loss"] = None  # a DP update's header
    header["update_energy"] = None
    for key, value in patch.items():
        if isinstance(value, dict):
            header[key] = header[key] | value
        else:
            header[key] = value
    # Execute / Assert
    with pytest.raises(DecodeError):
        decode_frame(header_frame(header), max_bytes=MAX)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"update_energy": NaN}',
        b'{"update_energy": Infinity}',
        b'{"protocol_version": 1, "protocol_version": 1}',
        b"[1, 2]",
        b"\xff\xfe",
        '{"protocol_version": 1}'.encode("utf-16"),
    ],
)
def test_header_parser_rejects_non_standard_json(raw):
    # Execute / Assert
    with pytest.raises(DecodeError):
        parse_header(raw)


def test_versions_are_checked():
    # Prepare
    header = json.loads(UPDATE.model_dump_json()) | {"protocol_version": PROTOCOL_VERSION + 1}
    ok_header = json.loads(UPDATE.model_dump_json())
    # Execute / Assert
    with pytest.raises(UnsupportedVersion):
        decode_frame(header_frame(header), max_bytes=MAX)
    with pytest.raises(UnsupportedVersion):
        decode_frame(header_frame(ok_header, version=FRAME_VERSION + 1), max_bytes=MAX)
    assert decode_frame(header_frame(ok_header), max_bytes=MAX)[0] == UPDATE


def test_a_version_1_update_with_its_sum_of_squares_is_refused():
    # Prepare: version 1 carried update_sq_norm (a sum); version 2 carries
    # update_energy (the mean), so an old header must not be read as a new one
    current = json.loads(UPDATE.model_dump_json())
    old = {k: v for k, v in current.items() if k != "update_energy"} | {"update_sq_norm": 16.0}
    # Execute / Assert
    with pytest.raises(UnsupportedVersion):
        decode_frame(header_frame(old | {"protocol_version": 1}), max_bytes=MAX)
    with pytest.raises(DecodeError, match="update_sq_norm"):
        decode_frame(header_frame(old), max_bytes=MAX)


def test_tensor_rules_and_limits():
    # Prepare
    tensors = {"w": np.zeros(1000, np.float32)}
    frame = encode_frame(UPDATE, tensors)
    # Execute / Assert
    with pytest.raises(EncodeError):
        encode_frame(SAMPLES[1], tensors)  # EnrolAck cannot carry tensors
    with pytest.raises(EncodeError):
        encode_frame(ModelDownload(model_version=1, subset_id="s", names=("v",)), tensors)
    with pytest.raises(EncodeError):
        encode_frame({"kind": "update"})  # type: ignore[arg-type]
    with pytest.raises(MessageTooLarge):
        encode_frame(UPDATE, tensors, max_bytes=len(frame) - 1)
    with pytest.raises(MessageTooLarge):
        decode_frame(frame, max_bytes=len(frame) - 1)
    assert len(encode_frame(UPDATE, tensors, max_bytes=len(frame))) == len(frame)
