"""ChaCha20 keystream as the pseudo-random generator for masks.

The mask for a key is the raw ChaCha20 keystream (RFC 8439 block function, via
``cryptography``), read as little-endian words. The modulus is a power of two
(2^32 or 2^64), so each word is exactly uniform in Z_{2^k}: no rejection step.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from .errors import ConfigError

KEY_BYTES = 32
NONCE_BYTES = 12
BLOCK_BYTES = 64
_MAX_BLOCKS = 1 << 32  # the 32-bit block counter must not wrap

_WIRE_DTYPES: dict[int, np.dtype] = {32: np.dtype("<u4"), 64: np.dtype("<u8")}
_NATIVE_DTYPES: dict[int, np.dtype] = {32: np.dtype(np.uint32), 64: np.dtype(np.uint64)}


def word_dtype(modulus_bits: int) -> np.dtype:
    """The numpy dtype holding one element of Z_{2^modulus_bits}."""
    try:
        return _NATIVE_DTYPES[modulus_bits]
    except KeyError:
        raise ConfigError(f"modulus_bits must be 32 or 64, got {modulus_bits!r}") from None


def wire_dtype(modulus_bits: int) -> np.dtype:
    """Little-endian dtype used when words are turned into bytes."""
    word_dtype(modulus_bits)
    return _WIRE_DTYPES[modulus_bits]


def chacha20_stream(
    key: bytes,
    nonce: bytes,
    n_words: int,
    *,
    modulus_bits: int,
    counter: int = 0,
) -> np.ndarray:
    """Return ``n_words`` uniform words of Z_{2^modulus_bits} from ChaCha20(key, nonce).

    ``key`` is 32 bytes, ``nonce`` the 12-byte RFC 8439 nonce, ``counter`` the
    initial block counter. Deterministic: the same arguments give the same words.
    """
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ConfigError("ChaCha20 key must be 32 bytes")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ConfigError("ChaCha20 nonce must be 12 bytes")
    if isinstance(n_words, bool) or not isinstance(n_words, int) or n_words < 0:
        raise ConfigError(f"n_words must be a non-negative int, got {n_words!r}")
    if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
        raise ConfigError(f"counter must be a non-negative int, got {counter!r}")
    dtype = wire_dtype(modulus_bits)
    n_bytes = n_words * dtype.itemsize
    n_blocks = -(-n_bytes // BLOCK_BYTES)
    if counter + n_blocks > _MAX_BLOCKS:
        raise ConfigError("requested keystream would wrap the ChaCha20 block counter")
    full_nonce = counter.to_bytes(4, "little") + nonce
    encryptor = Cipher(algorithms.ChaCha20(key, full_nonce), mode=None).encryptor()
    stream = encryptor.update(bytes(n_bytes))
    return np.frombuffer(stream, dtype=dtype).astype(word_dtype(modulus_bits))
