"""ChaCha20 keystream as the pseudo-random generator for masks.

The mask for a key is the raw ChaCha20 keystream (RFC 8439 block function, via
``cryptography``), read as little-endian 32-bit words for a modulus 2^b with
b <= 32 and 64-bit words above, each reduced mod 2^b (its low b bits). The
modulus is a power of two and every keystream bit is uniform, so each word is
exactly uniform in Z_{2^b}: no rejection step. For b = 32 and 64 the words are
the keystream words themselves (the known answers do not depend on b otherwise).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from .errors import ConfigError

KEY_BYTES = 32
NONCE_BYTES = 12
BLOCK_BYTES = 64
_MAX_BLOCKS = 1 << 32  # the 32-bit block counter must not wrap
#: The ring Z_{2^b} of the masked words: any b in [MIN_MODULUS_BITS, MAX_MODULUS_BITS].
MIN_MODULUS_BITS = 8
MAX_MODULUS_BITS = 64


def check_modulus_bits(modulus_bits: object) -> int:
    """``modulus_bits`` if it is an int in [8, 64] (not a bool); ConfigError otherwise."""
    if (
        isinstance(modulus_bits, bool)
        or not isinstance(modulus_bits, int)
        or not MIN_MODULUS_BITS <= modulus_bits <= MAX_MODULUS_BITS
    ):
        raise ConfigError(
            f"modulus_bits must be an int in [{MIN_MODULUS_BITS}, {MAX_MODULUS_BITS}], "
            f"got {modulus_bits!r}"
        )
    return modulus_bits


def word_dtype(modulus_bits: int) -> np.dtype:
    """The numpy dtype holding one element of Z_{2^modulus_bits}: uint32 up to 32 bits, else uint64."""
    bits = check_modulus_bits(modulus_bits)
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def wire_dtype(modulus_bits: int) -> np.dtype:
    """Little-endian form of :func:`word_dtype` (the keystream words before reduction)."""
    return word_dtype(modulus_bits).newbyteorder("<")


def word_mask(modulus_bits: int) -> np.unsignedinteger:
    """2^modulus_bits - 1 in the word dtype: ``words & word_mask(b)`` reduces mod 2^b."""
    mask: np.unsignedinteger = word_dtype(modulus_bits).type((1 << modulus_bits) - 1)
    return mask


def keystream_word_bytes(modulus_bits: int) -> int:
    """Keystream bytes drawn per mask word: 4 for b <= 32, 8 above."""
    return word_dtype(modulus_bits).itemsize


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
    Word i is keystream word i (32 or 64 bits, see :func:`keystream_word_bytes`)
    reduced mod 2^modulus_bits, so a stream for b bits is the 32/64-bit stream
    reduced: pairwise masks built at any b cancel as they do at 32 or 64.
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
    words = np.frombuffer(stream, dtype=dtype).astype(word_dtype(modulus_bits))
    if modulus_bits not in (32, 64):
        words &= word_mask(modulus_bits)
    return words
