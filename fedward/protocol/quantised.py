"""Int8 update deltas: per-tensor scale, unbiased stochastic rounding.

A study may ask its devices to send each trained tensor ``x`` as int8 words
``q`` with one float32 scale ``s`` per tensor (``Update.scales``), so that
the coordinator merges ``q * s``. ``s = max|x| / 127`` and
``q = floor(x / s) + [u < frac(x / s)]`` for a uniform ``u``: ``E[q * s] = x``
coordinate by coordinate, so a buffer's mean carries rounding noise, never a
bias that grows with the number of updates. Each coordinate is off by less
than ``s``. The frame is about a quarter of the float32 one.

Why stochastic, not round-to-nearest: FTTE's deltas on a small subset are
small next to their largest coordinate, and nearest rounding sends most of
them to zero for every device alike (QSGD's argument).

Why the uniforms come from ChaCha20 under a 32-byte key: randomness on the
device comes from a CSPRNG (the live agent draws the key from ``os.urandom``),
and the simulator derives the key from its seed and the task, so a study is
reproducible for a seed. Under DP-SGD the rounding is post-processing of the
noised delta (the accountant's epsilon still covers it); the scale is a
function of that same delta.

What the coordinator checks (:func:`dequantise_int8`, via
``fedward.protocol.messages``): the same names in the same order, int8
only, every word in [-127, 127] (``-128`` is not a word of this encoding, so
one delta has exactly one frame), every scale finite, > 0 and with
``127 * s`` finite in float32. Every failure raises
:class:`~fedward.protocol.errors.DecodeError`.

Pure numpy and ``cryptography``; imports nothing of ours but the protocol errors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedward.protocol.errors import DecodeError, EncodeError

__all__ = ["INT8_LEVELS", "MAX_SCALE", "ROUNDING_KEY_BYTES", "dequantise_int8", "quantise_int8"]

INT8_LEVELS = 127
"""The largest word: symmetric levels -127..127 around zero."""
ROUNDING_KEY_BYTES = 32
_F32_MAX = float(np.finfo(np.float32).max)
#: The largest scale whose 127 words stay finite in float32 (float32 of max / 127, rounded down).
MAX_SCALE = float(np.nextafter(np.float32(_F32_MAX / INT8_LEVELS), np.float32(0)))


def _uniforms(key: bytes, count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1) from a ChaCha20 keystream (nonce 0; one key per update)."""
    if count == 0:
        return np.zeros(0)
    cipher = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None)
    stream = cipher.encryptor().update(b"\x00" * (4 * count))
    return np.frombuffer(stream, dtype="<u4").astype(np.float64) * 2.0**-32


def _scale_for(peak: float) -> float:
    """The least float32 ``s`` with ``127 * s >= peak`` (1.0 for a tensor of zeros).

    Rounded up, never down, so ``x / s`` stays within [-127, 127] and the
    clip below never biases the largest coordinate; capped at MAX_SCALE, so
    every decoded word is a finite float32 (a peak within 1/127 of float32's
    largest value is then clipped).
    """
    if peak <= 0.0:
        return 1.0
    scale = np.float32(min(peak / INT8_LEVELS, MAX_SCALE))
    while (float(scale) * INT8_LEVELS < peak or scale == 0) and float(scale) < MAX_SCALE:
        scale = np.nextafter(scale, np.float32(np.inf))
    return min(float(scale), MAX_SCALE)


def quantise_int8(
    tensors: Mapping[str, np.ndarray], *, rounding_key: bytes
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``(int8 tensors, scales)`` of float tensors; names and order preserved.

    ``rounding_key`` (32 bytes) keys the rounding's uniforms: a fresh one per
    update (the same key on two updates would round both alike). A tensor of
    zeros gets scale 1.0 and zero words. EncodeError for non-finite values or a
    key of the wrong size.
    """
    if not isinstance(rounding_key, bytes) or len(rounding_key) != ROUNDING_KEY_BYTES:
        raise EncodeError(f"the rounding key must be {ROUNDING_KEY_BYTES} bytes")
    total = sum(int(np.asarray(t).size) for t in tensors.values())
    uniforms = _uniforms(rounding_key, total)
    words: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    start = 0
    for name, tensor in tensors.items():
        x = np.asarray(tensor, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise EncodeError(f"tensor {name[:64]!r} holds non-finite values")
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        # float32 on the wire: the scale both sides multiply by is this float32 value
        scale = _scale_for(peak)
        scaled = x / scale
        low = np.floor(scaled)
        u = uniforms[start : start + x.size].reshape(x.shape)
        start += x.size
        q = np.clip(low + (u < scaled - low), -INT8_LEVELS, INT8_LEVELS)
        words[name] = q.astype(np.int8)
        scales[name] = scale
    return words, scales


def dequantise_int8(
    words: Mapping[str, np.ndarray], scales: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """float32 tensors ``q * s`` of a quantised delta; DecodeError on anything out of bounds."""
    if tuple(words) != tuple(scales):
        raise DecodeError("an int8 update's scales must name its tensors, in their order")
    out: dict[str, np.ndarray] = {}
    for name, q in words.items():
        scale = scales[name]
        if isinstance(scale, bool) or not isinstance(scale, float) or not 0.0 < scale <= MAX_SCALE:
            raise DecodeError(f"scale of {name[:64]!r} must be in (0, {MAX_SCALE:.6g}]")
        if float(np.float32(scale)) != scale:
            raise DecodeError(f"scale of {name[:64]!r} is not a float32 value")
        array = np.asarray(q)
        if array.dtype != np.int8:
            raise DecodeError(f"tensor {name[:64]!r} of an int8 update is {array.dtype}")
        if array.size and int(array.min()) < -INT8_LEVELS:
            raise DecodeError(f"tensor {name[:64]!r} holds -128, not a word of this encoding")
        out[name] = array.astype(np.float32) * np.float32(scale)
    return out
