"""Fixed-point encoding, modular sums, headroom checks and config validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedward.privacy.secagg import (
    ConfigError,
    OverflowRisk,
    ProtocolViolation,
    SecAggConfig,
    SecAggSession,
    digest_index_set,
)
from fedward.privacy.secagg.quantize import (
    check_headroom,
    decode_fixed_point,
    encode_fixed_point,
    mod_sub,
    mod_sum,
    to_signed,
    words_from_bytes,
    words_to_bytes,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    values=arrays(np.float64, st.integers(1, 200), elements=finite),
    bits=st.sampled_from([32, 64]),
    clip=st.floats(0.01, 100.0),
)
def test_round_trip_error_is_at_most_half_a_step(
    values: np.ndarray, bits: int, clip: float
) -> None:
    scale = 2.0**12
    words = encode_fixed_point(values, scale=scale, clip=clip, modulus_bits=bits)
    back = decode_fixed_point(words, scale=scale, modulus_bits=bits)
    assert words.dtype == (np.uint32 if bits == 32 else np.uint64)
    assert np.all(np.abs(back - np.clip(values, -clip, clip)) <= 0.5 / scale + 1e-12)


@settings(max_examples=40, deadline=None)
@given(
    rows=arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 50)), elements=finite),
    bits=st.sampled_from([32, 64]),
)
def test_modular_sum_decodes_to_the_integer_sum(rows: np.ndarray, bits: int) -> None:
    scale, clip = 2.0**10, 1000.0
    check_headroom(rows.shape[0], bound=int(clip * scale), modulus_bits=bits)
    words = [encode_fixed_point(r, scale=scale, clip=clip, modulus_bits=bits) for r in rows]
    total = mod_sum(words, modulus_bits=bits, n_words=rows.shape[1])
    ints = np.rint(np.clip(rows, -clip, clip) * scale).astype(np.int64).sum(axis=0)
    assert np.array_equal(to_signed(total, modulus_bits=bits), ints)
    # subtracting one summand again is exact too
    rest = mod_sub(total, words[0], modulus_bits=bits)
    assert np.array_equal(
        to_signed(rest, modulus_bits=bits), ints - to_signed(words[0], modulus_bits=bits)
    )


def test_headroom_boundary() -> None:
    limit = (1 << 31) - 1
    check_headroom(1, bound=limit, modulus_bits=32)
    with pytest.raises(OverflowRisk, match="wrap"):
        check_headroom(2, bound=limit // 2 + 1, modulus_bits=32)


def test_config_refuses_a_cohort_whose_sum_could_wrap() -> None:
    # Prepare: 2^16 * 2^8 = 2^24 per value; 127 devices stay below 2^31, 128 reach it
    cfg = SecAggConfig(threshold=100, scale=2.0**16, clip=256.0)
    # Execute / Assert
    cfg.check_cohort(127)
    with pytest.raises(OverflowRisk, match="n \\* clip \\* scale"):
        cfg.check_cohort(128)
    SecAggConfig(threshold=100, scale=2.0**16, clip=256.0, modulus_bits=64).check_cohort(128)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 1, "scale": 1e4, "clip": 1.0},
        {"threshold": True, "scale": 1e4, "clip": 1.0},
        {"threshold": 3, "scale": 1e4, "clip": 1.0, "modulus_bits": 7},
        {"threshold": 3, "scale": 1e4, "clip": 1.0, "modulus_bits": 65},
        {"threshold": 3, "scale": 1e4, "clip": 1.0, "modulus_bits": True},
        {"threshold": 3, "scale": 1e4, "clip": 1.0, "modulus_bits": 32.0},
        {"threshold": 3, "scale": float("nan"), "clip": 1.0},
        {"threshold": 3, "scale": 1e4, "clip": -1.0},
        {"threshold": 3, "scale": 1e-3, "clip": 1.0},
        {"threshold": 3, "scale": 1e4, "clip": 1.0, "max_count": 0},
        {"threshold": 3, "scale": 1e4, "clip": 1.0, "count_words": -1},
        {"threshold": 3, "scale": 1e4, "clip": 1.0, "count_words": True},
    ],
)
def test_config_rejects_invalid_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SecAggConfig(**kwargs)


def test_config_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        SecAggConfig(3, 1e4, 1.0)  # type: ignore[misc]


def test_threshold_against_cohort_size() -> None:
    cfg = SecAggConfig(threshold=3, scale=1e4, clip=1.0, max_colluders=0, min_cohort=2)
    cfg.check_cohort(5)
    with pytest.raises(ConfigError, match="exceeds"):
        cfg.check_cohort(2)
    with pytest.raises(ConfigError, match=r"floor\(\(n \+ c\) / 2\) \+ 1"):
        cfg.check_cohort(6)


def test_session_is_canonical_and_validated() -> None:
    ses = SecAggSession(
        session_id=b"x" * 16,
        round_index=0,
        cohort=("b", "a", "c"),
        vector_length=4,
        index_set_digest=digest_index_set(range(4), model_size=4),
    )
    assert ses.cohort == ("a", "b", "c") and ses.x_of("a") == 1
    assert ses.total_words(SecAggConfig(threshold=3, scale=1e4, clip=1.0, count_words=3)) == 8
    for bad in (
        {"session_id": b"short"},
        {"cohort": ("a", "a")},
        {"cohort": ("a",)},
        {"cohort": "abc"},
        {"vector_length": 0},
        {"round_index": -1},
        {"index_set_digest": b""},
        {"index_set_digest": b"subset-A"},
    ):
        kwargs = {
            "session_id": b"x" * 16,
            "round_index": 0,
            "cohort": ("a", "b"),
            "vector_length": 4,
            "index_set_digest": digest_index_set(range(4), model_size=4),
        }
        with pytest.raises(ConfigError):
            SecAggSession(**{**kwargs, **bad})


def test_non_finite_input_and_wrong_wire_size_are_protocol_errors() -> None:
    with pytest.raises(ProtocolViolation):
        encode_fixed_point(np.array([1.0, np.nan]), scale=10.0, clip=1.0, modulus_bits=32)
    data = words_to_bytes(np.arange(4, dtype=np.uint32), modulus_bits=32)
    assert np.array_equal(words_from_bytes(data, modulus_bits=32, n_words=4), np.arange(4))
    with pytest.raises(ProtocolViolation, match="wrong size"):
        words_from_bytes(data[:-1], modulus_bits=32, n_words=4)
