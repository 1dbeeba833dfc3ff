"""Fixed-point encoding into Z_{2^b}, modular sums and the packed wire form.

A float ``x`` is clipped to ``[-clip, clip]`` and encoded as
``round(x * scale) mod 2^b`` (two's complement in b bits), for any b in
[8, 64] (``SecAggConfig.modulus_bits``). Words are held in uint32 for b <= 32
and uint64 above, always reduced mod 2^b: every function here that returns
words (encoding, :func:`mod_add`, :func:`mod_sub`, :func:`mod_neg`,
:func:`mod_sum`, :func:`words_from_bytes`) returns values in [0, 2^b).
Sums of encoded values are taken mod 2^b; they decode correctly (sign-extended
from b bits) as long as the true integer sum stays in
``[-2^(b-1), 2^(b-1) - 1]``, which :func:`check_headroom` guarantees up front
for n summands of bounded magnitude (``OverflowRisk`` otherwise).

Reduction mod 2^b is a ring homomorphism from Z_{2^32} (Z_{2^64}), so masks
that cancel there cancel here: SecAgg over Z_{2^b} is the same protocol in a
smaller ring, and the wire carries b bits per word (:func:`words_to_bytes`).

Each encoded value is off by at most ``0.5 / scale`` from the clipped float, so
a sum of n values is within ``n * 0.5 / scale`` of the sum of the clipped floats.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import ConfigError, OverflowRisk, ProtocolViolation
from .prg import check_modulus_bits, word_dtype, word_mask

__all__ = [
    "check_headroom",
    "decode_fixed_point",
    "encode_fixed_point",
    "max_abs_encoded",
    "mod_add",
    "mod_neg",
    "mod_sub",
    "mod_sum",
    "packed_size",
    "stochastic_encode",
    "to_signed",
    "word_dtype",
    "words_from_bytes",
    "words_to_bytes",
]

#: Bits per wire word that need no bit packing: plain little-endian words of this size.
_BYTE_ALIGNED: dict[int, np.dtype] = {
    8: np.dtype("<u1"),
    16: np.dtype("<u2"),
    32: np.dtype("<u4"),
    64: np.dtype("<u8"),
}
#: Words per packing group: 8 words of b bits are exactly b bytes, whatever b.
GROUP_WORDS = 8


def _positive_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return float(value)


def max_abs_encoded(*, clip: float, scale: float) -> int:
    """The largest magnitude an encoded, clipped value can take: round(clip * scale)."""
    clip = _positive_finite("clip", clip)
    scale = _positive_finite("scale", scale)
    return int(np.rint(np.float64(clip) * np.float64(scale)))


def check_headroom(n_summands: int, *, bound: int, modulus_bits: int, what: str = "input") -> None:
    """Raise OverflowRisk unless a sum of ``n_summands`` values in [-bound, bound] fits b bits."""
    bits = check_modulus_bits(modulus_bits)
    limit = (1 << (bits - 1)) - 1
    if n_summands * bound > limit:
        raise OverflowRisk(
            f"{what}: {n_summands} summands of magnitude up to {bound} can reach "
            f"{n_summands * bound} > 2^{bits - 1} - 1 and wrap modulo 2^{bits}; lower scale or "
            f"clip, or raise modulus_bits (at most 64)"
        )


def _reduce(ints: np.ndarray, modulus_bits: int) -> np.ndarray:
    """int64 values as words of Z_{2^b} (two's complement, reduced)."""
    words: np.ndarray = (ints.view(np.uint64) & np.uint64((1 << modulus_bits) - 1)).astype(
        word_dtype(modulus_bits)
    )
    return words


def encode_fixed_point(
    values: np.ndarray, *, scale: float, clip: float, modulus_bits: int
) -> np.ndarray:
    """Clip to [-clip, clip], scale, round to nearest and reduce mod 2^modulus_bits."""
    check_modulus_bits(modulus_bits)
    scale = _positive_finite("scale", scale)
    clip = _positive_finite("clip", clip)
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ProtocolViolation("cannot encode non-finite values")
    bound = max_abs_encoded(clip=clip, scale=scale)
    if bound >= 1 << 62:
        raise OverflowRisk("clip * scale exceeds 2^62; a single value cannot be encoded")
    ints = np.rint(np.clip(arr, -clip, clip) * scale).astype(np.int64)
    return _reduce(ints, modulus_bits)


def stochastic_encode(
    values: np.ndarray, *, uniforms: np.ndarray, scale: float, clip: float, modulus_bits: int
) -> np.ndarray:
    """Clip, scale and round each value up with probability its fractional part.

    Unbiased (E[decode(encode(x))] = clip(x)), unlike round-to-nearest, whose
    bias is the same for every device and so grows with the cohort in a sum;
    DP noise calibrated on the sum needs the rounding to be noise, not bias.
    ``uniforms`` are 32-bit words (a ChaCha20 keystream on the device), read
    as u / 2^32 in [0, 1). Results stay within [-round(clip * scale), +round(clip * scale)].
    """
    check_modulus_bits(modulus_bits)
    scale = _positive_finite("scale", scale)
    clip = _positive_finite("clip", clip)
    arr = np.asarray(values, dtype=np.float64)
    u = np.asarray(uniforms)
    if u.dtype != np.uint32 or u.shape != arr.shape:
        raise ConfigError("stochastic rounding needs one uint32 word per value")
    if not np.all(np.isfinite(arr)):
        raise ProtocolViolation("cannot encode non-finite values")
    bound = max_abs_encoded(clip=clip, scale=scale)
    scaled = np.clip(arr, -clip, clip) * scale
    low = np.floor(scaled)
    ints = low + (u.astype(np.float64) * 2.0**-32 < scaled - low)
    return _reduce(np.clip(ints, -bound, bound).astype(np.int64), modulus_bits)


def to_signed(words: np.ndarray, *, modulus_bits: int) -> np.ndarray:
    """Interpret words of Z_{2^b} as two's-complement integers (int64), sign-extended from b bits.

    Only the low b bits of each word count (a reduced word has no others).
    """
    bits = check_modulus_bits(modulus_bits)
    arr = np.asarray(words, dtype=word_dtype(bits))
    if bits == 64:
        return arr.view(np.int64).astype(np.int64)
    low = (arr & word_mask(bits)).astype(np.int64)
    half = np.int64(1 << (bits - 1))
    signed: np.ndarray = (low ^ half) - half
    return signed


def decode_fixed_point(words: np.ndarray, *, scale: float, modulus_bits: int) -> np.ndarray:
    """Inverse of :func:`encode_fixed_point` (for sums too, while they did not wrap)."""
    scale = _positive_finite("scale", scale)
    return to_signed(words, modulus_bits=modulus_bits).astype(np.float64) / scale


def _same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.dtype != b.dtype or a.shape != b.shape:
        raise ProtocolViolation(f"{what} needs arrays of the same dtype and shape")


def _reduced(words: np.ndarray, modulus_bits: int) -> np.ndarray:
    if words.dtype != word_dtype(modulus_bits):
        raise ProtocolViolation(
            f"words of Z_2^{modulus_bits} are {word_dtype(modulus_bits)}, got {words.dtype}"
        )
    if modulus_bits not in (32, 64):
        words &= word_mask(modulus_bits)
    return words


def mod_add(a: np.ndarray, b: np.ndarray, *, modulus_bits: int) -> np.ndarray:
    """(a + b) mod 2^modulus_bits for two word arrays of the same dtype and shape
    (``word_dtype(modulus_bits)``; ProtocolViolation otherwise)."""
    _same(a, b, "mod_add")
    total: np.ndarray = np.add(a, b, dtype=a.dtype)  # numpy types ufunc calls as Any
    return _reduced(total, modulus_bits)


def mod_sub(a: np.ndarray, b: np.ndarray, *, modulus_bits: int) -> np.ndarray:
    """(a - b) mod 2^modulus_bits (arrays as in :func:`mod_add`)."""
    _same(a, b, "mod_sub")
    difference: np.ndarray = np.subtract(a, b, dtype=a.dtype)
    return _reduced(difference, modulus_bits)


def mod_neg(a: np.ndarray, *, modulus_bits: int) -> np.ndarray:
    """(-a) mod 2^modulus_bits (an array as in :func:`mod_add`)."""
    negated: np.ndarray = np.subtract(np.zeros_like(a), a, dtype=a.dtype)
    return _reduced(negated, modulus_bits)


def mod_sum(arrays: Iterable[np.ndarray], *, modulus_bits: int, n_words: int) -> np.ndarray:
    """Sum of word arrays mod 2^modulus_bits (zeros if ``arrays`` is empty)."""
    acc = np.zeros(n_words, dtype=word_dtype(modulus_bits))
    for arr in arrays:
        acc = mod_add(acc, np.asarray(arr), modulus_bits=modulus_bits)
    return acc


def packed_size(n_words: int, *, modulus_bits: int) -> int:
    """Bytes of ``n_words`` words of b bits on the wire: ceil(n_words * b / 8)."""
    bits = check_modulus_bits(modulus_bits)
    if isinstance(n_words, bool) or not isinstance(n_words, int) or n_words < 0:
        raise ConfigError(f"n_words must be an int >= 0, got {n_words!r}")
    return -(-n_words * bits // 8)


def _lanes(bits: int) -> list[tuple[int, int]]:
    """(64-bit lane, shift) of each of the GROUP_WORDS words of a packing group."""
    return [((j * bits) // 64, (j * bits) % 64) for j in range(GROUP_WORDS)]


def words_to_bytes(words: np.ndarray, *, modulus_bits: int) -> bytes:
    """The wire bytes of a word array: b bits per word, little-endian, ceil(n * b / 8) bytes.

    Word i occupies bits [i*b, (i+1)*b) of the stream (bit k of the stream is
    bit k % 8 of byte k // 8); the bits after the last word are zero. For b in
    {8, 16, 32, 64} these are the plain little-endian words. Refuses (ProtocolViolation)
    anything but a 1-D array of integers in [0, 2^b).
    """
    bits = check_modulus_bits(modulus_bits)
    arr = np.asarray(words)
    if arr.ndim != 1 or arr.dtype.kind not in "ui":
        raise ProtocolViolation(f"words must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 1 << bits):
        raise ProtocolViolation(f"a word lies outside [0, 2^{bits}): reduce it mod 2^{bits} first")
    if bits in _BYTE_ALIGNED:
        plain: bytes = arr.astype(_BYTE_ALIGNED[bits]).tobytes()
        return plain
    n = arr.shape[0]
    groups = -(-n // GROUP_WORDS)
    padded = np.zeros(groups * GROUP_WORDS, dtype=np.uint64)
    padded[:n] = arr
    grid = padded.reshape(groups, GROUP_WORDS)
    n_lanes = -(-bits * GROUP_WORDS // 64)
    lanes = np.zeros((groups, n_lanes), dtype="<u8")
    for j, (lane, shift) in enumerate(_lanes(bits)):
        lanes[:, lane] |= grid[:, j] << np.uint64(shift)
        if shift + bits > 64:
            lanes[:, lane + 1] |= grid[:, j] >> np.uint64(64 - shift)
    # a group's 8 words are exactly b bytes; the stream stops at the last word's byte
    packed = lanes.view(np.uint8).reshape(groups, 8 * n_lanes)[:, :bits]
    return packed.tobytes()[: packed_size(n, modulus_bits=bits)]


def words_from_bytes(data: object, *, modulus_bits: int, n_words: int) -> np.ndarray:
    """Parse :func:`words_to_bytes` output; ProtocolViolation unless canonical.

    Exactly ``packed_size(n_words, modulus_bits=b)`` bytes, and the padding bits
    after the last word (if any) zero: one byte string per word array.
    """
    bits = check_modulus_bits(modulus_bits)
    expected = packed_size(n_words, modulus_bits=bits)
    if not isinstance(data, bytes) or len(data) != expected:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise ProtocolViolation(
            f"masked vector has the wrong size: expected {n_words} words of {bits} bits "
            f"({expected} bytes), got {got}"
        )
    dtype = word_dtype(bits)
    if bits in _BYTE_ALIGNED:
        words: np.ndarray = np.frombuffer(data, dtype=_BYTE_ALIGNED[bits]).astype(dtype)
        return words
    used = (n_words * bits) % 8
    if used and data[-1] >> used:
        raise ProtocolViolation("masked vector has non-zero padding bits after its last word")
    groups = -(-n_words // GROUP_WORDS)
    n_lanes = -(-bits * GROUP_WORDS // 64)
    grid = np.zeros((groups, 8 * n_lanes), dtype=np.uint8)
    flat = np.frombuffer(data, dtype=np.uint8)
    whole = len(data) // bits  # complete groups
    grid[:whole, :bits] = flat[: whole * bits].reshape(whole, bits)
    if whole < groups:
        tail = flat[whole * bits :]
        grid[whole, : tail.shape[0]] = tail
    lanes = grid.view("<u8").astype(np.uint64)
    out = np.empty((groups, GROUP_WORDS), dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1)
    for j, (lane, shift) in enumerate(_lanes(bits)):
        word = lanes[:, lane] >> np.uint64(shift)
        if shift + bits > 64:
            word |= lanes[:, lane + 1] << np.uint64(64 - shift)
        out[:, j] = word & mask
    return out.reshape(-1)[:n_words].astype(dtype)
