"""SecAgg in Z_{2^b} for any b in [8, 64], b bits per word on the wire (Prepare / Execute / Assert).

The packing is checked against an independent reference (the words as one big
Python integer, word i at bit i * b), the arithmetic against Python's own
integers mod 2^b, and the protocol against the plaintext sum of the same inputs.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedward.privacy.secagg import (
    ClientInput,
    ConfigError,
    DropPoint,
    LocalRunner,
    OverflowRisk,
    ProtocolViolation,
    RangeViolation,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    SecAggSession,
    chacha20_stream,
    digest_index_set,
    run_local_round,
    smallest_modulus_bits,
)
from fedward.privacy.secagg.masking import check_sum_range
from fedward.privacy.secagg.quantize import (
    decode_fixed_point,
    encode_fixed_point,
    mod_add,
    mod_neg,
    mod_sub,
    mod_sum,
    packed_size,
    to_signed,
    words_from_bytes,
    words_to_bytes,
)

ALL_BITS = st.integers(8, 64)


def reference_pack(values: list[int], bits: int) -> bytes:
    """Word i at bits [i*b, (i+1)*b) of one little-endian integer: the layout, spelt out."""
    total = 0
    for i, v in enumerate(values):
        total |= v << (i * bits)
    return total.to_bytes(-(-len(values) * bits // 8), "little")


def holder(bits: int) -> type:
    return np.uint32 if bits <= 32 else np.uint64


@st.composite
def words_of(draw: st.DrawFn) -> tuple[int, list[int]]:
    bits = draw(ALL_BITS)
    values = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=70))
    return bits, values


# -- the wire form ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(case=words_of())
def test_packed_words_are_the_reference_bitstream_and_read_back(case) -> None:
    # Prepare
    bits, values = case
    words = np.array(values, dtype=holder(bits))
    # Execute
    data = words_to_bytes(words, modulus_bits=bits)
    back = words_from_bytes(data, modulus_bits=bits, n_words=len(values))
    # Assert: exactly ceil(n * b / 8) bytes, laid out as the reference, and the same words
    assert len(data) == packed_size(len(values), modulus_bits=bits) == -(-len(values) * bits // 8)
    assert data == reference_pack(values, bits)
    assert back.dtype == holder(bits)
    assert back.tolist() == values


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
def test_byte_aligned_widths_are_plain_little_endian_words(bits: int) -> None:
    # Prepare
    values = [0, 1, (1 << bits) - 1, 1 << (bits - 1), 0x5A & ((1 << bits) - 1)]
    words = np.array(values, dtype=holder(bits))
    # Execute
    data = words_to_bytes(words, modulus_bits=bits)
    # Assert: the bytes 32- and 64-bit words always had on the wire
    assert data == words.astype(f"<u{bits // 8}").tobytes()


@settings(max_examples=150, deadline=None)
@given(case=words_of(), extra=st.sampled_from([-1, 1]))
def test_a_wrong_length_is_refused(case, extra: int) -> None:
    # Prepare
    bits, values = case
    data = words_to_bytes(np.array(values, dtype=holder(bits)), modulus_bits=bits)
    if extra < 0 and not data:
        data, extra = b"", 1  # nothing to cut from an empty vector: one byte too many
    wrong = data[:extra] if extra < 0 else data + b"\x00"
    # Execute / Assert
    with pytest.raises(ProtocolViolation, match="wrong size"):
        words_from_bytes(wrong, modulus_bits=bits, n_words=len(values))


@settings(max_examples=150, deadline=None)
@given(
    bits=ALL_BITS.filter(lambda b: b % 8),
    n=st.integers(1, 40),
    pad_bit=st.integers(0, 7),
)
def test_non_zero_padding_bits_are_refused(bits: int, n: int, pad_bit: int) -> None:
    # Prepare: a vector whose last byte has padding bits, one of them set
    used = (n * bits) % 8
    if not used:  # n * b and (n + 1) * b are not both multiples of 8 unless 8 divides b
        n += 1
        used = (n * bits) % 8
    data = bytearray(words_to_bytes(np.zeros(n, dtype=holder(bits)), modulus_bits=bits))
    data[-1] |= 1 << (used + pad_bit % (8 - used))
    # Execute / Assert
    with pytest.raises(ProtocolViolation, match="padding"):
        words_from_bytes(bytes(data), modulus_bits=bits, n_words=n)
    # the same vector with the padding clear reads back as zeros
    data[-1] = 0
    assert not words_from_bytes(bytes(data), modulus_bits=bits, n_words=n).any()


@pytest.mark.parametrize("bits", [8, 20, 23, 32, 47, 63])
def test_a_word_outside_the_ring_or_not_an_integer_is_refused_on_encode(bits: int) -> None:
    # Prepare
    too_big = np.array([0, 1 << bits], dtype=np.uint64)
    negative = np.array([0, -1], dtype=np.int64)
    floats = np.array([0.0, 1.0])
    # Execute / Assert
    for bad in (too_big, negative, floats, np.zeros((2, 2), dtype=np.uint32)):
        with pytest.raises(ProtocolViolation):
            words_to_bytes(bad, modulus_bits=bits)
    with pytest.raises(ProtocolViolation):
        words_from_bytes(bytearray(4), modulus_bits=bits, n_words=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [7, 65, 0, True, 32.0, None])
def test_a_modulus_outside_8_to_64_bits_is_refused(bits: object) -> None:
    with pytest.raises(ConfigError, match="modulus_bits"):
        words_to_bytes(np.zeros(1, dtype=np.uint32), modulus_bits=bits)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="modulus_bits"):
        SecAggConfig(threshold=3, scale=1.0, clip=1.0, modulus_bits=bits)  # type: ignore[arg-type]


# -- arithmetic in Z_{2^b} --------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    bits=ALL_BITS,
    pairs=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=30),
)
def test_modular_arithmetic_matches_python_integers_mod_2_to_the_b(bits: int, pairs) -> None:
    # Prepare
    m = 1 << bits
    xs = [x % m for x, _ in pairs]
    ys = [y % m for _, y in pairs]
    a, b = np.array(xs, dtype=holder(bits)), np.array(ys, dtype=holder(bits))
    # Execute
    added = mod_add(a, b, modulus_bits=bits)
    subtracted = mod_sub(a, b, modulus_bits=bits)
    negated = mod_neg(a, modulus_bits=bits)
    summed = mod_sum([a, b, a], modulus_bits=bits, n_words=len(xs))
    # Assert
    assert added.tolist() == [(x + y) % m for x, y in zip(xs, ys, strict=True)]
    assert subtracted.tolist() == [(x - y) % m for x, y in zip(xs, ys, strict=True)]
    assert negated.tolist() == [(-x) % m for x in xs]
    assert summed.tolist() == [(2 * x + y) % m for x, y in zip(xs, ys, strict=True)]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), bits=ALL_BITS)
def test_decoding_sign_extends_from_b_bits(data, bits: int) -> None:
    # Prepare: integers of the full signed range of b bits
    half = 1 << (bits - 1)
    ints = data.draw(st.lists(st.integers(-half, half - 1), min_size=1, max_size=40))
    # Execute: encode as fixed point with scale 1 (exact integers), read back
    limit = min(float(half - 1), 2.0**52)
    exact = [i for i in ints if abs(i) <= limit]
    words = np.array([i % (1 << bits) for i in ints], dtype=holder(bits))
    signed = to_signed(words, modulus_bits=bits)
    # Assert
    assert signed.tolist() == ints
    if exact:
        encoded = encode_fixed_point(
            np.array(exact, dtype=np.float64), scale=1.0, clip=limit, modulus_bits=bits
        )
        assert int(encoded.max()) < 1 << bits
        assert decode_fixed_point(encoded, scale=1.0, modulus_bits=bits).tolist() == exact


@pytest.mark.parametrize("bits", [8, 13, 20, 23, 31, 33, 47, 63])
def test_mask_words_are_the_keystream_words_reduced_mod_2_to_the_b(bits: int) -> None:
    # Prepare
    key, nonce = os.urandom(32), bytes(12)
    wide = 32 if bits <= 32 else 64
    # Execute
    narrow = chacha20_stream(key, nonce, 1000, modulus_bits=bits, counter=3)
    full = chacha20_stream(key, nonce, 1000, modulus_bits=wide, counter=3)
    # Assert: the low b bits of each 32/64-bit word, so reduction commutes with the masks
    assert narrow.dtype == holder(bits)
    assert np.array_equal(narrow, full & holder(bits)((1 << bits) - 1))


# -- the protocol over Z_{2^b} ------------------------------------------------------------

N, T, D = 7, 4, 300
#: b -> a fixed-point scale whose sums over N devices (clip 2) fit b bits
SCALES = {20: 2.0**12, 23: 2.0**15, 64: 2.0**16}
INP, UNM = DropPoint.BEFORE_INPUT, DropPoint.BEFORE_UNMASK
PATTERNS = {
    "none": {},
    "one": {"dev-2": INP},  # dropped after sharing keys: its pairwise masks rebuilt
    "n-t": {"dev-0": INP, "dev-3": UNM, "dev-5": INP},  # 3 = n - t
}


def ring(bits: int, *, scale: float | None = None) -> tuple[SecAggConfig, SecAggSession]:
    config = SecAggConfig(
        threshold=T,
        scale=SCALES[bits] if scale is None else scale,
        clip=2.0,
        modulus_bits=bits,
        count_words=2,
        max_colluders=0,
    )
    session = SecAggSession(
        session_id=os.urandom(32),
        round_index=2,
        cohort=tuple(f"dev-{i}" for i in range(N)),
        vector_length=D,
        index_set_digest=digest_index_set(range(D), model_size=D),
    )
    return config, session


def grid_inputs(config: SecAggConfig, seed: int) -> dict[str, ClientInput]:
    """Inputs on the fixed-point grid (integers / scale, weight 1), so rounding is exact;
    every fourth coordinate at the clip, so the sums reach the headroom."""
    rng = np.random.default_rng(seed)  # test data only; masks come from the protocol
    bound = config.value_bound
    inputs = {}
    for i in range(N):
        ints = rng.integers(-bound, bound + 1, D)
        ints[::4] = bound if i % 2 else -bound
        inputs[f"dev-{i}"] = ClientInput(
            update=ints / config.scale, weight=1.0, counts=(1, int(ints[1] > 0))
        )
    return inputs


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("bits", sorted(SCALES))
def test_the_sum_in_z_2_to_the_b_is_the_plaintext_sum_exactly(bits: int, pattern: str) -> None:
    # Prepare
    config, session = ring(bits)
    inputs = grid_inputs(config, seed=bits)
    drops = PATTERNS[pattern]
    # Execute
    out = run_local_round(config=config, session=session, inputs=inputs, drops=drops)
    # Assert: survivors are those whose masked input arrived; their sum is the plain sum
    survivors = [d for d in session.cohort if drops.get(d) in (None, UNM)]
    assert out.result.survivors == tuple(survivors)
    plain = sum(np.rint(inputs[d].update * config.scale).astype(np.int64) for d in survivors)
    assert np.array_equal(to_signed(out.result.encoded_sum[:D], modulus_bits=bits), plain)
    assert np.array_equal(out.result.weighted_sum, plain / config.scale)
    assert out.result.weight_sum == len(survivors)
    assert out.result.count_sums == tuple(
        sum(inputs[d].counts[k] for d in survivors) for k in range(2)
    )
    # the sums reach far beyond 2^(b-1) / n: a narrower ring would have wrapped
    assert int(np.max(np.abs(plain))) >= (len(survivors) - 1) * config.value_bound // 2


@pytest.mark.parametrize("bits", [20, 23])
def test_masked_vectors_travel_as_b_bits_per_word(bits: int) -> None:
    # Prepare
    config, session = ring(bits)
    inputs = grid_inputs(config, seed=1)
    runner = LocalRunner(config=config, session=session)
    deliveries = runner.share_keys(session.cohort, runner.advertise(session.cohort))
    x = inputs["dev-0"]
    # Execute
    masked = runner.clients["dev-0"].mask_input(
        deliveries["dev-0"], update=x.update, weight=x.weight, counts=x.counts
    )
    # Assert: ceil(words * b / 8) bytes, canonical (they parse), and not the plain input
    words = session.total_words(config)
    assert len(masked.data) == config.packed_bytes(words) == -(-words * bits // 8)
    held = words_from_bytes(masked.data, modulus_bits=bits, n_words=words)
    assert int(held.max()) < 1 << bits
    plain = np.rint(x.update * config.scale).astype(np.int64)
    assert np.mean(to_signed(held[:D], modulus_bits=bits) == plain) < 0.01


def test_a_sum_that_would_overflow_b_is_refused_before_anything_is_masked() -> None:
    # Prepare: 2^15 per coordinate (scale 2^14, clip 2); 7 devices reach 7 * 2^15 < 2^18
    config, session = ring(20, scale=2.0**14)
    narrow = dataclasses.replace(config, modulus_bits=18)
    # Execute / Assert: 19 bits hold the sum (< 2^18 - 1), 18 bits do not
    dataclasses.replace(config, modulus_bits=19).check_cohort(N)
    with pytest.raises(OverflowRisk, match="2\\^17 - 1"):
        narrow.check_cohort(N)
    with pytest.raises(OverflowRisk):
        SecAggClient(config=narrow, session=session, device_id="dev-0")
    with pytest.raises(OverflowRisk):
        SecAggServer(config=narrow, session=session)


@pytest.mark.parametrize(
    ("scale", "clip", "n"),
    [(2.0**16, 4.0, 6), (2.0**16, 4.0, 12), (2.0**16, 4.0, 100), (1.0, 1.0, 3), (2.0**40, 8.0, 9)],
)
def test_the_smallest_modulus_is_the_least_b_that_holds_the_cohorts_sum(
    scale: float, clip: float, n: int
) -> None:
    # Prepare: the largest sum of n inputs: coordinates, weights (max_weight 1) or counts
    config = SecAggConfig(
        threshold=n // 2 + 2, scale=scale, clip=clip, max_colluders=1, modulus_bits=64
    )
    largest = n * max(config.value_bound, config.weight_bound, config.max_count)
    # Execute
    bits = smallest_modulus_bits(config, cohort_size=n)
    # Assert: 2^(b-1) - 1 >= largest > 2^(b-2) - 1, and check_cohort agrees on both sides
    assert (1 << (bits - 1)) - 1 >= largest > (1 << (bits - 2)) - 1 or bits == 8
    dataclasses.replace(config, modulus_bits=bits).check_cohort(n)
    if bits > 8:
        with pytest.raises(OverflowRisk):
            dataclasses.replace(config, modulus_bits=bits - 1).check_cohort(n)


def test_no_ring_holds_a_sum_past_64_bits() -> None:
    config = SecAggConfig(threshold=9, scale=2.0**40, clip=2.0**20, modulus_bits=64)
    with pytest.raises(OverflowRisk):
        smallest_modulus_bits(config, cohort_size=16)


def test_a_sum_bound_narrows_the_range_check_and_needs_a_wide_enough_ring() -> None:
    # Prepare: the DDP shape: one input alone may reach clip * scale, the sum no further
    config, session = ring(20, scale=2.0**12)
    bounded = dataclasses.replace(config, sum_bound=(1 << 19) - 1, clip=127.0)
    words = np.zeros(session.total_words(bounded), dtype=np.uint32)
    words[0] = 1 << 19  # -2^19 in 20 bits: beyond the bound a DDP sum respects
    # Execute / Assert
    bounded.check_cohort(N)  # N * clip * scale needs 22 bits; the bound needs 20
    with pytest.raises(OverflowRisk):
        dataclasses.replace(bounded, sum_bound=None).check_cohort(N)
    with pytest.raises(RangeViolation, match="model coordinates"):
        check_sum_range(words, config=bounded, session=session, n_summands=N)
    words[0] = (1 << 20) - ((1 << 19) - 1)  # -(2^19 - 1): inside
    check_sum_range(words, config=bounded, session=session, n_summands=N)
    with pytest.raises(ConfigError, match="sum_bound"):
        dataclasses.replace(bounded, sum_bound=bounded.value_bound - 1)


def test_the_plain_form_carries_the_sum_bound_only_when_set_and_the_digest_binds_it() -> None:
    # Prepare
    config, _ = ring(20, scale=2.0**12)
    bounded = dataclasses.replace(config, sum_bound=(1 << 19) - 1)
    # Execute
    plain, plain_bounded = config.to_plain(), bounded.to_plain()
    # Assert
    assert "sum_bound" not in plain and plain_bounded["sum_bound"] == (1 << 19) - 1
    assert SecAggConfig.from_plain(plain) == config
    assert SecAggConfig.from_plain(plain_bounded) == bounded
    assert len({config.fingerprint(), bounded.fingerprint()}) == 2
    assert dataclasses.replace(config, modulus_bits=21).fingerprint() != config.fingerprint()
    for bad in (None, True, 2.5):
        with pytest.raises(ConfigError, match="sum_bound"):
            SecAggConfig.from_plain({**plain, "sum_bound": bad})
