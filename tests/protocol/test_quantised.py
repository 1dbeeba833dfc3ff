"""Int8 deltas: bounded error, unbiased rounding, one canonical frame, strict decoding."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedward.protocol.errors import DecodeError, EncodeError
from fedward.protocol.messages import Update, decode_frame, encode_frame
from fedward.protocol.quantised import INT8_LEVELS, MAX_SCALE, dequantise_int8, quantise_int8


def _key(i: int) -> bytes:
    return hashlib.blake2b(str(i).encode(), digest_size=32).digest()


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    x=arrays(np.float32, st.integers(0, 300), elements=finite32),
    key=st.binary(min_size=32, max_size=32),
)
def test_each_coordinate_is_within_one_scale_and_words_are_symmetric(x, key):
    # Execute
    words, scales = quantise_int8({"w": x}, rounding_key=key)
    back = dequantise_int8(words, scales)["w"]
    # Assert
    q = words["w"]
    assert q.dtype == np.int8 and q.shape == x.shape
    assert q.size == 0 or (q.min() >= -INT8_LEVELS and q.max() <= INT8_LEVELS)
    assert back.dtype == np.float32
    assert np.all(np.isfinite(back))
    assert np.all(np.abs(back.astype(np.float64) - x) <= scales["w"] * (1 + 1e-6))
    if x.size and scales["w"] < MAX_SCALE:  # at MAX_SCALE the peak is clipped, by < 1 step
        assert scales["w"] * INT8_LEVELS >= float(np.max(np.abs(x)))


def test_rounding_is_unbiased_over_keys():
    # Prepare: values between levels, where nearest rounding would be biased
    x = np.linspace(-1.0, 1.0, 1001, dtype=np.float32) * 0.37
    x[0] = 1.0  # fixes the scale at 1/127, so most values fall between words
    # Execute
    mean = np.mean(
        [dequantise_int8(*quantise_int8({"w": x}, rounding_key=_key(i)))["w"] for i in range(400)],
        axis=0,
    )
    # Assert: the mean error is far below a rounding step (1/127), and below nearest's
    step = 1.0 / INT8_LEVELS
    nearest = np.rint(x.astype(np.float64) / step) * step
    assert np.max(np.abs(mean - x)) < 0.2 * step
    assert np.mean(np.abs(mean - x)) < 0.2 * np.mean(np.abs(nearest - x))


def test_the_key_decides_the_rounding():
    x = {"a": np.linspace(-1, 1, 257, dtype=np.float32), "b": np.full((3, 4), 0.3, np.float32)}
    one, _ = quantise_int8(x, rounding_key=_key(1))
    again, _ = quantise_int8(x, rounding_key=_key(1))
    other, _ = quantise_int8(x, rounding_key=_key(2))
    assert all(np.array_equal(one[n], again[n]) for n in x)
    assert not np.array_equal(one["a"], other["a"])
    assert list(one) == ["a", "b"]


def test_a_tensor_of_zeros_gets_scale_one_and_zero_words():
    words, scales = quantise_int8({"z": np.zeros(5, np.float32)}, rounding_key=_key(0))
    assert scales == {"z": 1.0} and not words["z"].any()


@pytest.mark.parametrize(
    ("values", "key"),
    [(np.array([np.nan], np.float32), _key(0)), (np.ones(2, np.float32), b"short")],
)
def test_non_finite_values_and_bad_keys_are_refused(values, key):
    with pytest.raises(EncodeError):
        quantise_int8({"w": values}, rounding_key=key)


@pytest.mark.parametrize(
    ("words", "scales"),
    [
        ({"w": np.array([-128], np.int8)}, {"w": 0.5}),  # not a word of this encoding
        ({"w": np.array([1], np.int16)}, {"w": 0.5}),
        ({"w": np.array([1], np.int8)}, {"w": 0.0}),
        ({"w": np.array([1], np.int8)}, {"w": -1.0}),
        ({"w": np.array([1], np.int8)}, {"w": float("inf")}),
        ({"w": np.array([1], np.int8)}, {"w": float("nan")}),
        ({"w": np.array([1], np.int8)}, {"w": 3.0e38}),  # 127 x scale overflows float32
        ({"w": np.array([1], np.int8)}, {"w": 0.1}),  # not a float32 value
        ({"w": np.array([1], np.int8)}, {"v": 0.5}),
        ({"a": np.array([1], np.int8), "b": np.array([1], np.int8)}, {"b": 0.5, "a": 0.5}),
    ],
)
def test_out_of_bounds_words_and_scales_are_refused(words, scales):
    with pytest.raises(DecodeError):
        dequantise_int8(words, scales)


def _header(**scales):
    return Update(task_id="t1", device_id="d1", base_model_version=0, subset_id="s", scales=scales)


def test_an_int8_frame_round_trips_with_its_scales_in_order():
    words, scales = quantise_int8(
        {"b": np.ones(3, np.float32), "a": np.ones(2, np.float32)}, rounding_key=_key(3)
    )
    header, tensors = decode_frame(encode_frame(_header(**scales), words), max_bytes=1 << 20)
    assert isinstance(header, Update) and list(header.scales) == ["b", "a"]
    assert all(t.dtype == np.int8 for t in tensors.values())


@pytest.mark.parametrize(
    "tensors",
    [
        {"a": np.ones(2, np.float32)},  # scales on float32 tensors
        {"b": np.ones(2, np.int8)},  # a tensor the scales do not name
        {"a": np.ones(2, np.int8), "b": np.ones(2, np.int8)},  # one unscaled
    ],
)
def test_a_header_must_scale_exactly_its_int8_tensors(tensors):
    with pytest.raises(EncodeError):
        encode_frame(_header(a=0.5), tensors)
