"""Slow, literal transcription of the RFC 9162 §2.1 definitions.

Why it exists: :mod:`fedward.compliance.merkle` is optimised (cached subtrees, an
iterative walk), and optimised code is where off-by-one errors hide.  This
module copies the recursive definitions from the RFC almost word for word,
slicing lists and recomputing every subtree from scratch, so that tests (and a
sceptical auditor) can compare the fast code against something that is
obviously right.  Cost is O(n) per root and O(n log n) per proof: never use it
in the log itself.

Inputs are leaf *hashes* (``fedward.compliance.merkle.leaf_hash(data)``), like the fast
code, so the two can be compared directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["ref_consistency_proof", "ref_inclusion_path", "ref_root"]


def _k(n: int) -> int:
    """Largest power of two strictly smaller than ``n``, found by counting."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes, by the recursive definition."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = _k(n)
    return hashlib.sha256(b"\x01" + ref_root(leaves[:k]) + ref_root(leaves[k:])).digest()


def ref_inclusion_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (RFC 9162 §2.1.3.1)."""
    n = len(leaves)
    if n <= 1:
        return []
    k = _k(n)
    if m < k:
        return ref_inclusion_path(m, leaves[:k]) + [ref_root(leaves[k:])]
    return ref_inclusion_path(m - k, leaves[k:]) + [ref_root(leaves[:k])]


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [ref_root(leaves)]
    k = _k(n)
    if m <= k:
        return _subproof(m, leaves[:k], complete) + [ref_root(leaves[k:])]
    return _subproof(m - k, leaves[k:], False) + [ref_root(leaves[:k])]


def ref_consistency_proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (RFC 9162 §2.1.4.1), for 0 < m <= n."""
    return _subproof(m, leaves, True)
