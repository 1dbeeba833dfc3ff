"""ChaCha20 keystream PRG: known answer, determinism, key/nonce/counter separation, uniformity."""

from __future__ import annotations

import numpy as np
import pytest

from fedward.privacy.secagg import ConfigError, chacha20_stream

# RFC 8439 / original ChaCha20 keystream for the all-zero key and nonce, block counter 0.
ZERO_KEY_BLOCK0 = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)


def test_known_answer_zero_key() -> None:
    # Prepare / Execute
    words = chacha20_stream(bytes(32), bytes(12), 16, modulus_bits=32)
    # Assert
    assert words.dtype == np.uint32
    assert words.astype("<u4").tobytes() == ZERO_KEY_BLOCK0


def test_deterministic_for_same_key_and_nonce() -> None:
    key, nonce = bytes(range(32)), bytes(range(12))
    a = chacha20_stream(key, nonce, 10_000, modulus_bits=64)
    b = chacha20_stream(key, nonce, 10_000, modulus_bits=64)
    assert a.dtype == np.uint64
    assert np.array_equal(a, b)


def test_different_key_or_nonce_gives_different_stream() -> None:
    key, nonce = bytes(range(32)), bytes(12)
    base = chacha20_stream(key, nonce, 1000, modulus_bits=32)
    other_key = chacha20_stream(bytes([1]) + key[1:], nonce, 1000, modulus_bits=32)
    other_nonce = chacha20_stream(key, b"\x01" + nonce[1:], 1000, modulus_bits=32)
    assert np.mean(base == other_key) < 0.01
    assert np.mean(base == other_nonce) < 0.01


def test_64_bit_words_are_pairs_of_32_bit_words_and_counter_continues() -> None:
    key, nonce = b"k" * 32, b"n" * 12
    w32 = chacha20_stream(key, nonce, 64, modulus_bits=32)
    w64 = chacha20_stream(key, nonce, 32, modulus_bits=64)
    assert w32.astype("<u4").tobytes() == w64.astype("<u8").tobytes()
    # block 1 onwards equals the stream started at counter 1 (16 words of 32 bits per block)
    assert np.array_equal(chacha20_stream(key, nonce, 48, modulus_bits=32, counter=1), w32[16:])


def test_stream_words_look_uniform() -> None:
    words = chacha20_stream(b"\x07" * 32, bytes(12), 100_000, modulus_bits=32)
    top = (words >> np.uint32(24)).astype(np.int64)
    counts = np.bincount(top, minlength=256)
    expected = words.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # df = 255: mean 255, sd ~22.6; 255 + 8 sd is a negligible false-alarm rate
    assert chi2 < 255 + 8 * 22.6
    assert abs(words.astype(np.float64).mean() / 2**32 - 0.5) < 5 * np.sqrt(1 / 12 / words.size)


@pytest.mark.parametrize(
    ("key", "nonce", "n_words", "bits"),
    [
        (b"short", bytes(12), 4, 32),
        (bytes(32), bytes(8), 4, 32),
        (bytes(32), bytes(12), -1, 32),
        (bytes(32), bytes(12), 4, 7),
        (bytes(32), bytes(12), 4, 65),
        (bytes(32), bytes(12), 4, True),
    ],
)
def test_rejects_bad_arguments(key: bytes, nonce: bytes, n_words: int, bits: int) -> None:
    with pytest.raises(ConfigError):
        chacha20_stream(key, nonce, n_words, modulus_bits=bits)


def test_refuses_to_wrap_the_block_counter() -> None:
    with pytest.raises(ConfigError):
        chacha20_stream(bytes(32), bytes(12), 32, modulus_bits=32, counter=(1 << 32) - 1)
