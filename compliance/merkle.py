"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Why this shape: the audit log must be checkable by people who do not run our
code.  Following the Certificate Transparency tree exactly (the same one
Sigstore Rekor and Trillian use) means an auditor can recheck a root, an
inclusion proof or a consistency proof with any RFC 9162 implementation.

* Hash: SHA-256.  Empty tree ``MTH({}) = SHA-256("")``.
* Leaf: ``MTH({d}) = SHA-256(0x00 || d)``; interior node
  ``SHA-256(0x01 || left || right)``.  The distinct prefixes stop a leaf from
  being passed off as an interior node (second-preimage attack).
* Split: for ``n > 1`` leaves, ``k`` is the largest power of two *strictly
  smaller* than ``n``; the left subtree holds ``D[0:k]``, the right ``D[k:n]``.
  (A midpoint split also produces "a tree", just not an interoperable one.)

:class:`MerkleTree` stores every leaf hash plus the hash of every *complete,
aligned* subtree (``2^p`` leaves starting at a multiple of ``2^p``).  Appending
costs O(1) hashes amortised (O(log n) worst case).  Every node of an RFC tree
covers a range whose start is a multiple of the next power of two at or above
its width, so its hash is the right fold of at most ``log2 n`` cached complete
subtrees (the range's "compact range").  For the whole tree that compact range
is the frontier, so the root, any historical root and every proof cost
O(log n) (proofs O(log^2 n) hash look-ups) without rehashing leaves.

All verifiers return ``bool`` and never raise on malformed input: a bad proof
is an answer, not an exception.  Generators raise ``ValueError`` on
out-of-range arguments, since that is a programming error by the caller.

Reference: RFC 9162 §2.1.1 (tree hash), §2.1.3 (inclusion proofs and their
verification), §2.1.4 (consistency proofs and their verification).
:mod:`fedward.compliance.merkle_reference` holds a literal recursive transcription of
the definitions that the tests compare this code against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "split_point",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Size in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root hash of the empty tree, ``SHA-256("")`` (RFC 9162 §2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """Hash a leaf's data: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two child hashes into their parent: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``): RFC 9162's ``k``."""
    if n < 2:
        raise ValueError(f"split_point needs n >= 2, got {n}")
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, *, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes")
    return bytes(value)


class MerkleTree:
    """Append-only RFC 6962 Merkle tree over leaf *hashes*.

    The tree never sees leaf data: callers hash with :func:`leaf_hash` (or use
    :meth:`append_data`).  ``levels[p][i]`` is the hash of the complete subtree
    of ``2^p`` leaves starting at leaf ``i * 2^p``; ``levels[0]`` are the leaf
    hashes themselves.  Not thread-safe on its own: the audit log serialises
    access with its lock.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    # -- growth --------------------------------------------------------------
    def append(self, leaf: bytes) -> int:
        """Append one leaf hash; return its index.  O(1) amortised hashing."""
        self._levels[0].append(_check_hash(leaf, what="leaf hash"))
        index = len(self._levels[0]) - 1
        level = 0
        # Each time a right child completes a pair, the parent becomes complete.
        while index % 2 == 1:
            parent = node_hash(self._levels[level][index - 1], self._levels[level][index])
            if len(self._levels) == level + 1:
                self._levels.append([])
            self._levels[level + 1].append(parent)
            index //= 2
            level += 1
        return len(self._levels[0]) - 1

    def append_data(self, data: bytes) -> bytes:
        """Hash ``data`` as a leaf, append it and return the leaf hash."""
        h = leaf_hash(data)
        self.append(h)
        return h

    # -- queries -------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def __len__(self) -> int:
        return self.size

    def leaf(self, *, index: int) -> bytes:
        """The stored hash of leaf ``index``."""
        if not 0 <= index < self.size:
            raise ValueError(f"leaf index {index} outside tree of size {self.size}")
        return self._levels[0][index]

    def root(self, *, tree_size: int | None = None) -> bytes:
        """Root of the first ``tree_size`` leaves (default: all).  O(log n)."""
        n = self._size_arg(tree_size)
        if n == 0:
            return EMPTY_ROOT
        return self._range_hash(0, n)

    def inclusion_proof(self, *, index: int, tree_size: int | None = None) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of the first ``tree_size``
        leaves (RFC 9162 §2.1.3.1), ordered leaf-to-root."""
        n = self._size_arg(tree_size)
        if not 0 <= index < n:
            raise ValueError(f"leaf index {index} outside tree of size {n}")
        path: list[bytes] = []
        lo, hi = 0, n
        # Walk down from the root; the recursion's "PATH(...) : MTH(sibling)"
        # appends each sibling after the deeper path, hence the final reverse.
        while hi - lo > 1:
            k = split_point(hi - lo)
            if index < lo + k:
                path.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._range_hash(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency_proof(self, *, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Proof that the tree of ``old_size`` leaves is a prefix of the tree of
        ``new_size`` leaves (RFC 9162 §2.1.4.1).  Empty when ``old_size`` is 0
        or equals ``new_size`` (nothing to prove)."""
        n = self._size_arg(new_size)
        if not 0 <= old_size <= n:
            raise ValueError(f"old size {old_size} outside 0..{n}")
        if old_size in (0, n):
            return []
        path: list[bytes] = []
        m, lo, hi = old_size, 0, n
        complete = True  # the RFC's flag b: is the old tree a complete subtree here?
        while True:
            width = hi - lo
            if m == width:
                if not complete:
                    path.append(self._range_hash(lo, hi))
                break
            k = split_point(width)
            if m <= k:
                path.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._range_hash(lo, lo + k))
                lo += k
                m -= k
                complete = False
        path.reverse()
        return path

    # -- internals -----------------------------------------------------------
    def _size_arg(self, tree_size: int | None) -> int:
        n = self.size if tree_size is None else tree_size
        if not 0 <= n <= self.size:
            raise ValueError(f"tree size {n} outside 0..{self.size}")
        return n

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range that is a node of some RFC tree.

        Such a range's start is a multiple of the largest power of two not
        above its width, so it decomposes into complete aligned subtrees of
        decreasing size whose cached hashes fold right-to-left into the node.
        """
        width = end - start
        if width <= 0 or end > self.size or start % (1 << (width.bit_length() - 1)) != 0:
            raise ValueError(f"[{start}, {end}) is not a node of this tree")
        pieces: list[bytes] = []
        pos = start
        for p in range(width.bit_length() - 1, -1, -1):
            if width >> p & 1:
                pieces.append(self._levels[p][pos >> p])
                pos += 1 << p
        acc = pieces.pop()
        while pieces:
            acc = node_hash(pieces.pop(), acc)
        return acc


# -- convenience functions over a list of leaf hashes ------------------------
def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Merkle tree hash of ``leaf_hashes`` (already leaf-hashed)."""
    return MerkleTree(leaf_hashes).root()


def inclusion_proof(leaf_hashes: Sequence[bytes], *, index: int) -> list[bytes]:
    """Inclusion proof for leaf ``index`` in the tree over all ``leaf_hashes``."""
    return MerkleTree(leaf_hashes).inclusion_proof(index=index)


def consistency_proof(leaf_hashes: Sequence[bytes], *, old_size: int) -> list[bytes]:
    """Consistency proof from the first ``old_size`` leaves to all of them."""
    return MerkleTree(leaf_hashes).consistency_proof(old_size=old_size)


# -- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ---------------------------
def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_SIZE


def verify_inclusion(
    *, leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root_hash: bytes
) -> bool:
    """True iff ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree of
    ``tree_size`` leaves whose root is ``root_hash`` (RFC 9162 §2.1.3.2)."""
    if not (_is_hash(leaf) and _is_hash(root_hash)) or not all(_is_hash(p) for p in proof):
        return False
    if not 0 <= index < tree_size:
        return False
    fn, sn = index, tree_size - 1
    r = bytes(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def verify_consistency(
    *,
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> bool:
    """True iff ``proof`` shows the tree (``old_size``, ``old_root``) is a
    prefix of the tree (``new_size``, ``new_root``) (RFC 9162 §2.1.4.2).

    The RFC's algorithm covers ``0 < old_size < new_size``.  For the edge cases
    we follow the usual convention (Trillian, transparency-dev/merkle): equal
    sizes need an empty proof and equal roots; an empty old tree needs an empty
    proof and the empty-tree root, and is consistent with any newer tree.
    """
    if not (_is_hash(old_root) and _is_hash(new_root)) or not all(_is_hash(p) for p in proof):
        return False
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if old_size == 0:
        return len(proof) == 0 and old_root == EMPTY_ROOT
    if len(proof) == 0:
        return False
    path = [bytes(p) for p in proof]
    if old_size & (old_size - 1) == 0:  # exact power of two: old root is a node
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
