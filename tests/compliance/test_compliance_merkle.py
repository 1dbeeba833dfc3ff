"""RFC 6962/9162 Merkle tree: published test vectors, fast code against the
slow recursive reference, and proofs that must fail once tampered with."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedward.compliance import merkle
from fedward.compliance.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    split_point,
    verify_consistency,
    verify_inclusion,
)
from fedward.compliance.merkle_reference import ref_consistency_proof, ref_inclusion_path, ref_root

# The Certificate Transparency reference leaves and roots for sizes 0..8, as
# published with transparency-dev/merkle (testonly) and used by Trillian and
# many other RFC 6962 implementations.  Test data only.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CT_CONSISTENCY = {
    (2, 8): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _ct_tree() -> MerkleTree:
    return MerkleTree(leaf_hash(d) for d in CT_LEAVES)


# -- hashing primitives and test vectors -------------------------------------
def test_empty_tree_hash_is_sha256_of_the_empty_string() -> None:
    # Prepare / Execute
    empty = MerkleTree()
    # Assert
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert empty.root() == EMPTY_ROOT
    assert merkle.root([]) == EMPTY_ROOT


def test_leaf_and_node_hashes_use_the_rfc_domain_prefixes() -> None:
    # Prepare
    left, right = leaf_hash(b"l"), leaf_hash(b"r")
    # Execute / Assert
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert node_hash(left, right) != node_hash(right, left)


@pytest.mark.parametrize(
    ("n", "k"), [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (1000, 512), (2**40 + 1, 2**40)]
)
def test_split_is_the_largest_power_of_two_below_n_not_the_midpoint(n: int, k: int) -> None:
    # Execute / Assert
    assert split_point(n) == k


def test_split_point_rejects_trees_too_small_to_split() -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        split_point(1)


def test_roots_match_the_published_rfc6962_vectors() -> None:
    # Prepare
    tree = _ct_tree()
    # Execute
    roots = [tree.root(tree_size=n).hex() for n in range(len(CT_LEAVES) + 1)]
    # Assert
    assert roots == CT_ROOTS


@pytest.mark.parametrize(("index", "size"), sorted(CT_INCLUSION))
def test_inclusion_proofs_match_the_published_vectors(index: int, size: int) -> None:
    # Prepare
    tree = _ct_tree()
    # Execute
    proof = tree.inclusion_proof(index=index, tree_size=size)
    # Assert
    assert [p.hex() for p in proof] == CT_INCLUSION[(index, size)]
    assert verify_inclusion(
        leaf=tree.leaf(index=index),
        index=index,
        tree_size=size,
        proof=proof,
        root_hash=bytes.fromhex(CT_ROOTS[size]),
    )


@pytest.mark.parametrize(("old", "new"), sorted(CT_CONSISTENCY))
def test_consistency_proofs_match_the_published_vectors(old: int, new: int) -> None:
    # Prepare
    tree = _ct_tree()
    # Execute
    proof = tree.consistency_proof(old_size=old, new_size=new)
    # Assert
    assert [p.hex() for p in proof] == CT_CONSISTENCY[(old, new)]
    assert verify_consistency(
        old_size=old,
        new_size=new,
        old_root=bytes.fromhex(CT_ROOTS[old]),
        new_root=bytes.fromhex(CT_ROOTS[new]),
        proof=proof,
    )


# -- fast code against the slow reference ------------------------------------
@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(min_value=1, max_value=300))
def test_fast_tree_agrees_with_the_recursive_reference(data: st.DataObject, n: int) -> None:
    # Prepare
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(min_value=0, max_value=n - 1), label="index")
    old = data.draw(st.integers(min_value=1, max_value=n), label="old_size")
    # Execute
    root = tree.root()
    path = tree.inclusion_proof(index=index)
    cons = tree.consistency_proof(old_size=old)
    # Assert
    assert root == ref_root(leaves)
    assert tree.root(tree_size=old) == ref_root(leaves[:old])
    assert path == ref_inclusion_path(index, leaves)
    assert cons == ref_consistency_proof(old, leaves)
    assert verify_inclusion(
        leaf=leaves[index], index=index, tree_size=n, proof=path, root_hash=root
    )
    assert verify_consistency(
        old_size=old, new_size=n, old_root=ref_root(leaves[:old]), new_root=root, proof=cons
    )


def test_incremental_roots_equal_batch_roots_at_every_size() -> None:
    # Prepare
    leaves = _leaves(130)
    tree = MerkleTree()
    # Execute
    incremental = []
    for leaf in leaves:
        tree.append(leaf)
        incremental.append(tree.root())
    # Assert
    assert incremental == [ref_root(leaves[: n + 1]) for n in range(len(leaves))]
    assert [tree.root(tree_size=n) for n in range(131)] == [
        ref_root(leaves[:n]) for n in range(131)
    ]


def test_append_costs_constant_hashing_amortised(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: count interior-node hashes done while appending
    calls = 0
    real = merkle.node_hash

    def counting(left: bytes, right: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return real(left, right)

    monkeypatch.setattr(merkle, "node_hash", counting)
    tree = MerkleTree()
    # Execute
    for leaf in _leaves(4096):
        tree.append(leaf)
    # Assert: a full binary tree of 4096 leaves has 4095 interior nodes, each hashed once
    assert calls == 4095


# -- proofs fail when tampered ------------------------------------------------
def _flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 0x01]) + h[1:]


@pytest.mark.parametrize("n", range(1, 34))
def test_every_inclusion_proof_verifies_and_every_tampered_one_fails(n: int) -> None:
    # Prepare
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    root = tree.root()
    for i in range(n):
        proof = tree.inclusion_proof(index=i)

        def ok(*, leaf: bytes = leaves[i], index: int = i, size: int = n, path=proof) -> bool:
            return verify_inclusion(
                leaf=leaf, index=index, tree_size=size, proof=path, root_hash=root
            )

        # Execute / Assert
        assert ok()
        assert not ok(leaf=_flip(leaves[i]))
        assert not ok(index=i + 1)
        # (A wrong tree_size alone can verify -- e.g. leaf 0 of 3 looks like leaf 0
        # of 4 -- which is why sizes are bound by a *signed* tree head.)
        assert not ok(path=[*proof, bytes(32)])
        if proof:
            assert not ok(path=proof[:-1])
            assert not ok(path=[_flip(proof[0]), *proof[1:]])
        if i > 0:
            assert not ok(index=i - 1)
        assert not verify_inclusion(
            leaf=leaves[i], index=i, tree_size=n, proof=proof, root_hash=_flip(root)
        )


@pytest.mark.parametrize("n", range(1, 34))
def test_every_consistency_proof_verifies_and_every_tampered_one_fails(n: int) -> None:
    # Prepare
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    new_root = tree.root()
    for m in range(0, n + 1):
        proof = tree.consistency_proof(old_size=m)
        old_root = tree.root(tree_size=m)

        def ok(*, old: bytes = old_root, new: bytes = new_root, size: int = m, path=proof) -> bool:
            return verify_consistency(
                old_size=size, new_size=n, old_root=old, new_root=new, proof=path
            )

        # Execute / Assert
        assert ok()
        assert not ok(old=_flip(old_root))
        if m > 0:
            assert not ok(new=_flip(new_root))
            assert not ok(path=[*proof, bytes(32)])
        if proof:
            assert not ok(path=proof[:-1])
            assert not ok(path=[_flip(proof[0]), *proof[1:]])
        if 1 < m < n:
            assert not ok(size=m - 1)
            assert not ok(size=m + 1)


def test_degenerate_consistency_cases_follow_the_usual_convention() -> None:
    # Prepare
    tree = MerkleTree(_leaves(8))
    r4, r8 = tree.root(tree_size=4), tree.root()
    # Execute / Assert
    assert verify_consistency(old_size=4, new_size=4, old_root=r4, new_root=r4, proof=[])
    assert not verify_consistency(old_size=4, new_size=4, old_root=r4, new_root=r8, proof=[])
    assert not verify_consistency(old_size=4, new_size=4, old_root=r4, new_root=r4, proof=[r4])
    assert verify_consistency(old_size=0, new_size=8, old_root=EMPTY_ROOT, new_root=r8, proof=[])
    assert not verify_consistency(old_size=0, new_size=8, old_root=r4, new_root=r8, proof=[])
    assert not verify_consistency(old_size=8, new_size=4, old_root=r8, new_root=r4, proof=[])
    assert not verify_consistency(old_size=4, new_size=8, old_root=r4, new_root=r8, proof=[])


def test_verifiers_answer_false_on_malformed_input_instead_of_raising() -> None:
    # Prepare
    tree = MerkleTree(_leaves(8))
    proof = tree.inclusion_proof(index=5)
    # Execute / Assert
    assert not verify_inclusion(
        leaf=b"short", index=5, tree_size=8, proof=proof, root_hash=tree.root()
    )
    assert not verify_inclusion(
        leaf=tree.leaf(index=5),
        index=5,
        tree_size=8,
        proof=[b"x", *proof[1:]],
        root_hash=tree.root(),
    )
    assert not verify_inclusion(
        leaf=tree.leaf(index=5), index=-1, tree_size=8, proof=proof, root_hash=tree.root()
    )
    assert not verify_inclusion(
        leaf=tree.leaf(index=5), index=8, tree_size=8, proof=proof, root_hash=tree.root()
    )


def test_generators_refuse_out_of_range_arguments() -> None:
    # Prepare
    tree = MerkleTree(_leaves(8))
    # Execute / Assert
    with pytest.raises(ValueError):
        tree.inclusion_proof(index=8)
    with pytest.raises(ValueError):
        tree.inclusion_proof(index=0, tree_size=9)
    with pytest.raises(ValueError):
        tree.consistency_proof(old_size=9)
    with pytest.raises(ValueError):
        tree.root(tree_size=-1)
    with pytest.raises(ValueError):
        tree.append(b"not a hash")
