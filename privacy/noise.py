"""DP noise from a cryptographically secure generator (issue 9, item 8).

Opacus' own answer, ``PrivacyEngine(secure_mode=True)``, needs ``torchcsprng``,
which has no build for the pinned torch and does not install here. This is the
equivalent we ship: standard normals drawn from a ChaCha20 keystream
(``cryptography``'s RFC 8439 cipher, the PRG secure aggregation already uses)
keyed with 32 bytes from ``os.urandom``, turned into normals by Box-Muller in
float64. Against the floating-point attacks on Gaussian sampling (Mironov 2012;
Jin et al. 2022, arXiv 2112.05307), :func:`secure_standard_normal` does what
Opacus' secure mode does: each value is the sum of four normals halved
(arXiv 2107.10138, n = 2), so the low bits of one draw do not reveal the draw.

The key never leaves the generator and is replaced from the OS entropy pool
long before ChaCha20's 32-bit block counter could wrap, so the keystream never
repeats. What this does not give: the discrete Gaussian over an exact integer
grid that a fully hardened deployment would use (the continuous version is
what Opacus, and ``fedward.privacy.central``, analyse).
"""

from __future__ import annotations

import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_NONCE = bytes(16)  # counter 0 and a zero nonce: the key is fresh for every stream
_REKEY_BYTES = 1 << 36  # 1 GiB blocks short of the 2^32-block (256 GiB) counter limit


class ChaChaNormal:
    """A ``RandomNormal`` (shape -> i.i.d. standard normals) over a ChaCha20 keystream.

    ``key=None`` (production) draws the key from ``os.urandom``; a given key
    makes the stream reproducible (tests only: a known key makes the noise
    removable). Not thread-safe: one per consumer.
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and (not isinstance(key, bytes) or len(key) != 32):
            raise ValueError("a ChaCha20 key is 32 bytes")
        self._fixed_key = key
        self._rekey()

    def _rekey(self) -> None:
        key = self._fixed_key if self._fixed_key is not None else os.urandom(32)
        self._encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
        self._used = 0
        if self._fixed_key is not None:
            # a fixed key must not restart its stream: derive the next key from it
            self._fixed_key = self._encryptor.update(bytes(32))
            self._encryptor = Cipher(
                algorithms.ChaCha20(self._fixed_key, _NONCE), mode=None
            ).encryptor()

    def uniforms(self, count: int) -> np.ndarray:
        """``count`` uniforms in (0, 1) with 53 random bits each."""
        if count < 0:
            raise ValueError("count must be >= 0")
        need = 8 * count
        if self._used + need > _REKEY_BYTES:
            self._rekey()
        self._used += need
        words = np.frombuffer(self._encryptor.update(bytes(need)), dtype="<u8")
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def standard_normal(self, count: int) -> np.ndarray:
        """``count`` standard normals (Box-Muller on keystream uniforms)."""
        half = (count + 1) // 2
        u1, u2 = self.uniforms(half), self.uniforms(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * math.pi * u2
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]

    def __call__(self, shape: tuple[int, ...]) -> np.ndarray:
        return secure_standard_normal(self, tuple(shape))


def secure_standard_normal(source: ChaChaNormal, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normals of ``shape``, each the halved sum of four (Opacus' secure mode)."""
    count = int(np.prod(shape, dtype=np.int64))
    draws = source.standard_normal(4 * count).reshape(4, count)
    halved: np.ndarray = draws.sum(axis=0) / 2.0
    return halved.reshape(shape)


def csprng_normal() -> ChaChaNormal:
    """The production ``RandomNormal``: ChaCha20 keyed from the OS entropy pool."""
    return ChaChaNormal()
