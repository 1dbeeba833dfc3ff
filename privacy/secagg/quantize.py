"""Fixed-point encoding into Z_{2^k} and modular sums.

A float ``x`` is clipped to ``[-clip, clip]`` and encoded as
``round(x * scale) mod 2^k`` (two's complement). Sums of encoded values are
taken mod 2^k; they decode correctly as long as the true integer sum stays in
``[-2^(k-1), 2^(k-1) - 1]``, which :func:`check_headroom` guarantees up front for
n summands of bounded magnitude (``OverflowRisk`` otherwise).

Each encoded value is off by at most ``0.5 / scale`` from the clipped float, so
a sum of n values is within ``n * 0.5 / scale`` of the sum of the clipped floats.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import ConfigError, OverflowRisk, ProtocolViolation
from .prg import wire_dtype, word_dtype

__all__ = [
    "check_headroom",
    "decode_fixed_point",
    "encode_fixed_point",
    "max_abs_encoded",
    "mod_add",
    "mod_neg",
    "mod_sub",
    "mod_sum",
    "stochastic_encode",
    "to_signed",
    "word_dtype",
    "words_from_bytes",
    "words_to_bytes",
]

_SIGNED: dict[int, np.dtype] = {32: np.dtype(np.int32), 64: np.dtype(np.int64)}


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
    """Raise OverflowRisk unless a sum of ``n_summands`` values in [-bound, bound] fits."""
    word_dtype(modulus_bits)
    limit = (1 << (modulus_bits - 1)) - 1
    if n_summands * bound > limit:
        raise OverflowRisk(
            f"{what}: {n_summands} summands of magnitude up to {bound} can reach "
            f"{n_summands * bound} > 2^{modulus_bits - 1} - 1 and wrap; lower scale or clip, "
            f"or use modulus_bits=64"
        )


def encode_fixed_point(
    values: np.ndarray, *, scale: float, clip: float, modulus_bits: int
) -> np.ndarray:
    """Clip to [-clip, clip], scale, round to nearest and reduce mod 2^modulus_bits."""
    scale = _positive_finite("scale", scale)
    clip = _positive_finite("clip", clip)
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ProtocolViolation("cannot encode non-finite values")
    bound = max_abs_encoded(clip=clip, scale=scale)
    if bound >= 1 << 62:
        raise OverflowRisk("clip * scale exceeds 2^62; a single value cannot be encoded")
    ints = np.rint(np.clip(arr, -clip, clip) * scale).astype(np.int64)
    return (ints.view(np.uint64) & np.uint64((1 << modulus_bits) - 1)).astype(
        word_dtype(modulus_bits)
    )


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
    ints = np.clip(ints, -bound, bound).astype(np.int64)
    words: np.ndarray = (ints.view(np.uint64) & np.uint64((1 << modulus_bits) - 1)).astype(
        word_dtype(modulus_bits)
    )
    return words


def to_signed(words: np.ndarray, *, modulus_bits: int) -> np.ndarray:
    """Interpret words of Z_{2^k} as two's-complement integers (int64)."""
    arr = np.asarray(words, dtype=word_dtype(modulus_bits))
    return arr.view(_SIGNED[modulus_bits]).astype(np.int64)


def decode_fixed_point(words: np.ndarray, *, scale: float, modulus_bits: int) -> np.ndarray:
    """Inverse of :func:`encode_fixed_point` (for sums too, while they did not wrap)."""
    scale = _positive_finite("scale", scale)
    return to_signed(words, modulus_bits=modulus_bits).astype(np.float64) / scale


def mod_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a + b) mod 2^k for two word arrays of the same dtype (unsigned wrap-around)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        raise ProtocolViolation("mod_add needs arrays of the same dtype and shape")
    total: np.ndarray = np.add(a, b, dtype=a.dtype)  # numpy types ufunc calls as Any
    return total


def mod_sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) mod 2^k."""
    if a.dtype != b.dtype or a.shape != b.shape:
        raise ProtocolViolation("mod_sub needs arrays of the same dtype and shape")
    difference: np.ndarray = np.subtract(a, b, dtype=a.dtype)
    return difference


def mod_neg(a: np.ndarray) -> np.ndarray:
    """(-a) mod 2^k."""
    negated: np.ndarray = np.subtract(np.zeros_like(a), a, dtype=a.dtype)
    return negated


def mod_sum(arrays: Iterable[np.ndarray], *, modulus_bits: int, n_words: int) -> np.ndarray:
    """Sum of word arrays mod 2^modulus_bits (zeros if ``arrays`` is empty)."""
    acc = np.zeros(n_words, dtype=word_dtype(modulus_bits))
    for arr in arrays:
        acc = mod_add(acc, np.asarray(arr))
    return acc


def words_to_bytes(words: np.ndarray, *, modulus_bits: int) -> bytes:
    """Little-endian wire bytes of a word array."""
    arr = np.asarray(words, dtype=word_dtype(modulus_bits))
    return arr.astype(wire_dtype(modulus_bits)).tobytes()


def words_from_bytes(data: object, *, modulus_bits: int, n_words: int) -> np.ndarray:
    """Parse wire bytes; raises ProtocolViolation unless exactly ``n_words`` words."""
    dtype = wire_dtype(modulus_bits)
    if not isinstance(data, bytes) or len(data) != n_words * dtype.itemsize:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise ProtocolViolation(
            f"masked vector has the wrong size: expected {n_words} words "
            f"({n_words * dtype.itemsize} bytes), got {got}"
        )
    return np.frombuffer(data, dtype=dtype).astype(word_dtype(modulus_bits))
