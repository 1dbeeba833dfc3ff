"""Shamir t-of-n sharing over GF(2^127 - 1), checked against a Fraction-based reference."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedward.privacy.secagg import ProtocolViolation, TooFewSurvivors
from fedward.privacy.secagg.shamir import (
    PRIME,
    Share,
    lagrange_coefficients,
    reconstruct_bytes,
    reconstruct_int,
    reconstruct_reference,
    share_size,
    split_bytes,
    split_int,
)


@st.composite
def sharing_cases(draw: st.DrawFn) -> tuple[bytes, int, list[int], list[int]]:
    secret = draw(st.binary(min_size=0, max_size=64))
    n = draw(st.integers(min_value=1, max_value=12))
    threshold = draw(st.integers(min_value=1, max_value=n))
    xs = draw(st.lists(st.integers(1, 500), min_size=n, max_size=n, unique=True))
    k = draw(st.integers(min_value=threshold, max_value=n))
    chosen = draw(st.permutations(range(n)))[:k]
    return secret, threshold, xs, chosen


@settings(max_examples=80, deadline=None)
@given(sharing_cases())
def test_any_t_shares_recover_the_secret(case: tuple[bytes, int, list[int], list[int]]) -> None:
    # Prepare
    secret, threshold, xs, chosen = case
    shares = split_bytes(secret, threshold=threshold, xs=xs, random_bytes=os.urandom)
    # Execute
    got = reconstruct_bytes([shares[i] for i in chosen], threshold=threshold, length=len(secret))
    # Assert
    assert got == secret
    assert all(len(s.to_bytes()) == share_size(len(secret)) for s in shares)


@settings(max_examples=40, deadline=None)
@given(sharing_cases())
def test_fewer_than_t_shares_raise(case: tuple[bytes, int, list[int], list[int]]) -> None:
    secret, threshold, xs, chosen = case
    shares = split_bytes(secret, threshold=threshold, xs=xs)
    with pytest.raises(TooFewSurvivors):
        reconstruct_bytes(shares[: threshold - 1], threshold=threshold, length=len(secret))


@settings(max_examples=60, deadline=None)
@given(
    secret=st.integers(0, PRIME - 1),
    threshold=st.integers(1, 8),
    extra=st.integers(0, 4),
)
def test_fast_reconstruction_matches_fraction_reference(
    secret: int, threshold: int, extra: int
) -> None:
    xs = list(range(3, 3 + threshold + extra))
    points = split_int(secret, threshold=threshold, xs=xs)
    subset = dict(list(points.items())[:threshold])
    assert reconstruct_reference(subset) == secret
    assert reconstruct_int(subset, threshold=threshold) == secret
    assert reconstruct_int(points, threshold=threshold) == secret


@settings(max_examples=30, deadline=None)
@given(candidate=st.integers(0, PRIME - 1), threshold=st.integers(2, 6))
def test_t_minus_1_shares_are_consistent_with_any_secret(candidate: int, threshold: int) -> None:
    # Prepare: t - 1 real shares of one secret
    xs = list(range(1, threshold + 1))
    real = dict(list(split_int(12345, threshold=threshold, xs=xs).items())[: threshold - 1])
    # Execute: the polynomial through them and (0, candidate) gives a t-th share at x = t
    nodes = [0, *real]
    coeffs = lagrange_coefficients(nodes, at=threshold)
    forged = sum(c * y for c, y in zip(coeffs, [candidate, *real.values()], strict=True)) % PRIME
    # Assert: together with the real ones it reconstructs the candidate, whatever it is,
    # so t - 1 shares exclude no secret
    assert reconstruct_int({**real, threshold: forged}, threshold=threshold) == candidate


def test_inconsistent_extra_share_is_detected() -> None:
    shares = split_bytes(b"\x01" * 32, threshold=3, xs=[1, 2, 3, 4, 5])
    bad = Share(x=shares[4].x, ys=(shares[4].ys[0] ^ 1, *shares[4].ys[1:]))
    with pytest.raises(ProtocolViolation):
        reconstruct_bytes([*shares[:4], bad], threshold=3, length=32)


def test_duplicate_and_malformed_shares_are_rejected() -> None:
    shares = split_bytes(b"abc", threshold=2, xs=[1, 2, 3])
    with pytest.raises(ProtocolViolation):
        reconstruct_bytes([shares[0], shares[0]], threshold=2, length=3)
    with pytest.raises(ProtocolViolation):
        Share.from_bytes(b"\x00" * 5, secret_len=3)


def test_shares_of_the_same_secret_differ_between_splits() -> None:
    a = split_bytes(b"\x02" * 32, threshold=2, xs=[1, 2])
    b = split_bytes(b"\x02" * 32, threshold=2, xs=[1, 2])
    assert a != b
