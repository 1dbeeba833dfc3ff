"""Shamir t-of-n secret sharing over the prime field GF(2^127 - 1).

Secrets are bytes (32-byte seeds and X25519 private keys): they are cut into
15-byte chunks (120 bits < 127), each chunk shared with its own random
polynomial of degree t - 1, evaluated at the same x for one holder. A ``Share``
therefore carries one x and one y per chunk.

Any t shares recover the secret; t - 1 shares reveal nothing about it. With
more than t shares, :class:`Interpolator` also checks that every extra share
lies on the same polynomial and raises ``ProtocolViolation`` otherwise.
``reconstruct_reference`` is a slow, independent Lagrange interpolation with
``fractions.Fraction`` used by the tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from .crypto import RandomBytes
from .errors import ConfigError, ProtocolViolation, TooFewSurvivors

PRIME = (1 << 127) - 1
CHUNK_BYTES = 15
_ELEMENT_BYTES = 16
_MAX_X = (1 << 16) - 1


@dataclass(frozen=True)
class Share:
    """One holder's share: the evaluation point ``x`` and one field element per chunk."""

    x: int
    ys: tuple[int, ...]

    def to_bytes(self) -> bytes:
        out = bytearray(self.x.to_bytes(2, "big"))
        for y in self.ys:
            out += y.to_bytes(_ELEMENT_BYTES, "big")
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, *, secret_len: int) -> Share:
        n_chunks = chunk_count(secret_len)
        if not isinstance(data, bytes) or len(data) != share_size(secret_len):
            raise ProtocolViolation("malformed Shamir share (wrong length)")
        x = int.from_bytes(data[:2], "big")
        ys = tuple(
            int.from_bytes(data[2 + i * _ELEMENT_BYTES : 2 + (i + 1) * _ELEMENT_BYTES], "big")
            for i in range(n_chunks)
        )
        if x == 0 or any(y >= PRIME for y in ys):
            raise ProtocolViolation("malformed Shamir share (value out of field)")
        return cls(x=x, ys=ys)


def chunk_count(secret_len: int) -> int:
    return max(1, -(-secret_len // CHUNK_BYTES))


def share_size(secret_len: int) -> int:
    """Serialized size in bytes of one share of a ``secret_len``-byte secret."""
    return 2 + _ELEMENT_BYTES * chunk_count(secret_len)


def random_field_element(random_bytes: RandomBytes) -> int:
    """Uniform element of GF(PRIME) by rejection sampling 127-bit draws."""
    while True:
        raw = random_bytes(_ELEMENT_BYTES)
        if len(raw) != _ELEMENT_BYTES:
            raise ConfigError("random_bytes returned the wrong number of bytes")
        value = int.from_bytes(raw, "big") & PRIME
        if value < PRIME:
            return value


def _check_threshold_and_xs(threshold: int, xs: Sequence[int]) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ConfigError(f"threshold must be a positive int, got {threshold!r}")
    if len(set(xs)) != len(xs):
        raise ConfigError("share points must be distinct")
    if any(isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= _MAX_X for x in xs):
        raise ConfigError(f"share points must be ints in [1, {_MAX_X}]")
    if threshold > len(xs):
        raise ConfigError(f"threshold {threshold} exceeds the number of shares {len(xs)}")


def _eval_poly(coeffs: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % PRIME
    return acc


def split_int(
    secret: int,
    *,
    threshold: int,
    xs: Sequence[int],
    random_bytes: RandomBytes = os.urandom,
) -> dict[int, int]:
    """Share the field element ``secret``: returns {x: f(x)} with f(0) = secret."""
    _check_threshold_and_xs(threshold, xs)
    if not 0 <= secret < PRIME:
        raise ConfigError("secret must be a field element")
    coeffs = [secret] + [random_field_element(random_bytes) for _ in range(threshold - 1)]
    return {x: _eval_poly(coeffs, x) for x in xs}


def lagrange_coefficients(xs: Sequence[int], *, at: int = 0) -> list[int]:
    """Coefficients l_j with f(at) = sum_j l_j * f(xs[j]) for any f of degree < len(xs)."""
    out = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (at - xm) % PRIME
                den = den * (xj - xm) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return out


def reconstruct_int(points: Mapping[int, int], *, threshold: int) -> int:
    """Recover f(0) from at least ``threshold`` points {x: y} (extra points are checked)."""
    interp = Interpolator(points.keys(), threshold=threshold)
    return interp.interpolate([dict(points)])[0]


def reconstruct_reference(points: Mapping[int, int]) -> int:
    """Slow Lagrange interpolation at 0 over the rationals, then reduced mod PRIME."""
    total = Fraction(0)
    for xj, yj in points.items():
        term = Fraction(yj)
        for xm in points:
            if xm != xj:
                term *= Fraction(-xm, xj - xm)
        total += term
    return total.numerator * pow(total.denominator, -1, PRIME) % PRIME


class Interpolator:
    """Lagrange interpolation at 0 for a fixed set of holders, reused across secrets.

    Uses the ``threshold`` smallest x for the value and checks every other x
    against the polynomial they define (so one inconsistent share is detected
    whenever more than ``threshold`` holders answered).
    """

    def __init__(self, xs: Iterable[int], *, threshold: int) -> None:
        xs = sorted(xs)
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ConfigError(f"threshold must be a positive int, got {threshold!r}")
        if len(xs) < threshold:
            raise TooFewSurvivors(f"need {threshold} shares to reconstruct, got {len(xs)}")
        if len(set(xs)) != len(xs):
            raise ProtocolViolation("duplicate share points")
        self.basis = xs[:threshold]
        self.extra = xs[threshold:]
        self._at_zero = lagrange_coefficients(self.basis, at=0)
        self._at_extra = {x: lagrange_coefficients(self.basis, at=x) for x in self.extra}

    def interpolate(self, columns: Sequence[Mapping[int, int]]) -> list[int]:
        """For each mapping {x: y} (one per chunk), return f(0); check extra points."""
        out = []
        for col in columns:
            ys = [col[x] for x in self.basis]
            for x, coeffs in self._at_extra.items():
                if sum(c * y for c, y in zip(coeffs, ys, strict=True)) % PRIME != col[x]:
                    raise ProtocolViolation("Shamir shares are inconsistent")
            out.append(sum(c * y for c, y in zip(self._at_zero, ys, strict=True)) % PRIME)
        return out

    def recover_bytes(self, shares: Mapping[int, Share], *, length: int) -> bytes:
        """Recover a ``length``-byte secret from shares keyed by x (= share.x)."""
        if set(shares) != set(self.basis) | set(self.extra):
            raise ProtocolViolation("shares do not match the interpolation points")
        n_chunks = chunk_count(length)
        for x, share in shares.items():
            if share.x != x or len(share.ys) != n_chunks:
                raise ProtocolViolation("malformed share for this secret")
        columns = [{x: s.ys[i] for x, s in shares.items()} for i in range(n_chunks)]
        return _join_chunks(self.interpolate(columns), length)


def _chunk_sizes(length: int) -> list[int]:
    sizes = [CHUNK_BYTES] * (length // CHUNK_BYTES)
    if length % CHUNK_BYTES or not sizes:
        sizes.append(length % CHUNK_BYTES)
    return sizes


def _join_chunks(values: Sequence[int], length: int) -> bytes:
    out = bytearray()
    for value, size in zip(values, _chunk_sizes(length), strict=True):
        if value >> (8 * size):
            raise ProtocolViolation("reconstructed chunk out of range (inconsistent shares)")
        out += value.to_bytes(size, "big")
    return bytes(out)


def split_bytes(
    secret: bytes,
    *,
    threshold: int,
    xs: Sequence[int],
    random_bytes: RandomBytes = os.urandom,
) -> list[Share]:
    """Share ``secret`` among the holders at ``xs``; returns shares in the order of ``xs``."""
    if not isinstance(secret, bytes):
        raise ConfigError("secret must be bytes")
    _check_threshold_and_xs(threshold, xs)
    offsets = [0]
    for size in _chunk_sizes(len(secret)):
        offsets.append(offsets[-1] + size)
    per_chunk = [
        split_int(
            int.from_bytes(secret[a:b], "big"),
            threshold=threshold,
            xs=xs,
            random_bytes=random_bytes,
        )
        for a, b in zip(offsets, offsets[1:], strict=False)
    ]
    return [Share(x=x, ys=tuple(col[x] for col in per_chunk)) for x in xs]


def reconstruct_bytes(shares: Iterable[Share], *, threshold: int, length: int) -> bytes:
    """Recover a ``length``-byte secret; raises TooFewSurvivors with < ``threshold`` shares."""
    by_x: dict[int, Share] = {}
    for share in shares:
        if share.x in by_x:
            raise ProtocolViolation(f"duplicate share for x={share.x}")
        by_x[share.x] = share
    return Interpolator(by_x, threshold=threshold).recover_bytes(by_x, length=length)
