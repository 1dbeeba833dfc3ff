"""Tensor codec: round trips, exact size accounting, hostile input."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedward.protocol.codec import (
    FORMAT_VERSION,
    MAGIC,
    MAX_NAME_BYTES,
    decode_tensors,
    encode_tensors,
    tensor_bytes,
)
from fedward.protocol.errors import DecodeError, EncodeError, MessageTooLarge, UnsupportedVersion

DTYPES = ["<f4", "<f2", "<f8", "i1", "<i2", "<i4", "<i8", "u1", "<u4", "<u8", "bool"]

names = st.text(min_size=1, max_size=40).filter(
    lambda s: s.encode("utf-8", "surrogatepass") == s.encode("utf-8", "ignore")
)
arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(
        np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
    )
)
tensor_maps = st.dictionaries(names, arrays, max_size=6)


def same_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Bitwise equality incl. order, dtype and shape (NaN payloads included)."""
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
        for k in a
    )


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@settings(max_examples=150, deadline=None)
@given(tensor_maps)
def test_round_trip_and_exact_size(tensors):
    # Execute
    data = encode_tensors(tensors)
    decoded = decode_tensors(data)
    # Assert
    assert same_tensors(tensors, decoded)
    assert tensor_bytes(tensors) == len(data)


def test_non_native_layouts_are_normalised():
    # Prepare: big-endian, strided and Fortran-ordered inputs, plus a numpy scalar
    tensors = {
        "be": np.arange(6, dtype=">i4").reshape(2, 3),
        "strided": np.arange(10, dtype=np.float32)[::3],
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        "scalar": np.float16(1.5),
    }
    # Execute
    data = encode_tensors(tensors)
    out = decode_tensors(data)
    # Assert
    assert len(data) == tensor_bytes(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].dtype == np.asarray(v).dtype.newbyteorder("<")
        assert out[k].flags.writeable and out[k].flags.c_contiguous


@pytest.mark.parametrize(
    "tensors",
    [
        {"x": np.array(["a"])},
        {"x": np.array([1 + 2j])},
        {"x": np.zeros(2, dtype=np.uint16)},
        {"x": [1.0, 2.0]},
        {"": np.zeros(1)},
        {"x" * (MAX_NAME_BYTES + 1): np.zeros(1)},
        {"\ud800": np.zeros(1)},
        {3: np.zeros(1)},
    ],
)
def test_unencodable_inputs_raise_encode_error(tensors):
    # Execute / Assert: both the encoder and the size function refuse
    with pytest.raises(EncodeError):
        encode_tensors(tensors)
    with pytest.raises(EncodeError):
        tensor_bytes(tensors)


@settings(max_examples=100, deadline=None)
@given(tensor_maps.filter(bool), st.data())
def test_any_single_bit_flip_is_detected(tensors, data):
    # Prepare
    raw = bytearray(encode_tensors(tensors))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    # Execute / Assert
    with pytest.raises(DecodeError):
        decode_tensors(bytes(raw))


@settings(max_examples=100, deadline=None)
@given(tensor_maps, st.data())
def test_any_truncation_is_detected(tensors, data):
    # Prepare
    raw = encode_tensors(tensors)
    cut = data.draw(st.integers(0, len(raw) - 1))
    # Execute / Assert
    with pytest.raises(DecodeError):
        decode_tensors(raw[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_decode_error(blob):
    # Execute / Assert: with or without a valid CRC, junk is a DecodeError
    forged = with_crc(MAGIC + bytes([FORMAT_VERSION]) + blob)
    for candidate in (blob, MAGIC + blob, forged):
        with pytest.raises(DecodeError):
            decode_tensors(candidate)


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(0, 2**32 - 1),
    name_len=st.integers(0, 2**16 - 1),
    code=st.integers(0, 255),
    ndim=st.integers(0, 255),
    dims=st.lists(st.integers(0, 2**64 - 1), max_size=6),
    tail=st.binary(max_size=64),
)
def test_forged_headers_with_valid_crc_raise_decode_error(count, name_len, code, ndim, dims, tail):
    # Prepare: structurally plausible headers with arbitrary (often huge) sizes
    body = struct.pack("<4sBBI", MAGIC, FORMAT_VERSION, 0, count)
    body += struct.pack("<H", name_len) + b"w" * min(name_len, 8)
    body += struct.pack("<BB", code, ndim) + b"".join(struct.pack("<Q", d) for d in dims) + tail
    # Execute / Assert: either an exact valid payload (rare) or DecodeError, never a crash
    try:
        out = decode_tensors(with_crc(body))
    except DecodeError:
        return
    assert encode_tensors(out) == with_crc(body)


def test_huge_forged_shape_does_not_allocate():
    # Prepare: one float64 tensor claiming 2**31 x 2**16 elements, no data
    body = struct.pack("<4sBBI", MAGIC, FORMAT_VERSION, 0, 1)
    body += struct.pack("<H", 1) + b"w" + struct.pack("<BB", 3, 2)
    body += struct.pack("<QQ", 2**31, 2**16)
    # Execute / Assert
    with pytest.raises(DecodeError, match="truncated|too large"):
        decode_tensors(with_crc(body))


def test_duplicate_names_and_bad_bools_are_rejected():
    # Prepare
    one = encode_tensors({"a": np.zeros(1, np.int8)})[6:-4]  # count+entry without header/crc
    dup = struct.pack("<4sBBI", MAGIC, FORMAT_VERSION, 0, 2) + one[4:] + one[4:]
    bad_bool = bytearray(encode_tensors({"b": np.array([True, False])})[:-4])
    bad_bool[-1] = 2
    # Execute / Assert
    with pytest.raises(DecodeError, match="duplicate"):
        decode_tensors(with_crc(dup))
    with pytest.raises(DecodeError, match="bool"):
        decode_tensors(with_crc(bytes(bad_bool)))


def test_version_and_size_limits():
    # Prepare
    raw = encode_tensors({"a": np.zeros(100, np.float32)})
    future = bytearray(raw[:-4])
    future[4] = FORMAT_VERSION + 1
    # Execute / Assert
    with pytest.raises(UnsupportedVersion):
        decode_tensors(with_crc(bytes(future)))
    with pytest.raises(MessageTooLarge):
        decode_tensors(raw, max_bytes=len(raw) - 1)
    assert decode_tensors(raw, max_bytes=len(raw))["a"].shape == (100,)
    with pytest.raises(DecodeError):
        decode_tensors("not bytes")  # type: ignore[arg-type]


def test_decoded_arrays_do_not_alias_input():
    # Prepare
    raw = bytearray(encode_tensors({"a": np.ones(4, np.float32)}))
    # Execute
    out = decode_tensors(raw)
    raw[20:40] = b"\x00" * 20
    # Assert
    np.testing.assert_array_equal(out["a"], np.ones(4, np.float32))
