"""What the audit log hands out as evidence: receipts, signed tree heads and
Merkle proofs.

Why separate objects: HIPAA 164.312(c) asks us to *corroborate* that records
were not altered.  A receipt given to the actor at append time, a tree head
signed by the log's Ed25519 key, and an inclusion or consistency proof can all
be checked by an auditor with nothing but the public key and any RFC 9162
implementation; none of them needs trust in the process that wrote the log.

All hashes travel as lower-case hex so the objects serialise to plain JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_serializer,
    field_validator,
)

from fedward.compliance import merkle
from fedward.compliance.events import Sha256Hex, canonical_json, format_ts, to_utc

__all__ = [
    "STH_CONTEXT",
    "AuditReceipt",
    "ConsistencyProof",
    "InclusionProof",
    "SignedTreeHead",
    "build_consistency_proof",
    "build_inclusion_proof",
]

STH_CONTEXT = b"fedward/audit/tree-head/v1\x00"
"""Domain-separation prefix of every tree-head signature, so a signature made
for a tree head can never be replayed as a signature over anything else."""

_SignatureHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")]
_Size = Annotated[int, Field(ge=0)]

_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")


class AuditReceipt(BaseModel):
    """Returned by ``AuditLog.append``: where the entry landed and the tree it
    is now part of.  Keep it: it lets the actor later demand an inclusion proof
    for ``seq`` against any newer signed tree head."""

    model_config = _STRICT

    seq: _Size
    leaf_hash: Sha256Hex
    tree_size: _Size
    root_hash: Sha256Hex


class SignedTreeHead(BaseModel):
    """``(tree_size, root_hash, timestamp)`` signed with the log's Ed25519 key.

    The signed message is ``STH_CONTEXT || canonical_json({root_hash,
    timestamp, tree_size})``; the stored form adds the hex signature.
    """

    model_config = _STRICT

    tree_size: _Size
    root_hash: Sha256Hex
    timestamp: datetime
    signature: _SignatureHex

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return to_utc(value)

    @field_serializer("timestamp")
    def _ts_text(self, value: datetime) -> str:
        return format_ts(value)

    @staticmethod
    def message(*, tree_size: int, root_hash: str, timestamp: datetime) -> bytes:
        """The exact bytes that are signed."""
        body = {"root_hash": root_hash, "timestamp": format_ts(timestamp), "tree_size": tree_size}
        return STH_CONTEXT + canonical_json(body)

    @classmethod
    def sign(
        cls, key: Ed25519PrivateKey, *, tree_size: int, root_hash: str, timestamp: datetime
    ) -> SignedTreeHead:
        """Sign a tree head with ``key``."""
        msg = cls.message(tree_size=tree_size, root_hash=root_hash, timestamp=timestamp)
        return cls(
            tree_size=tree_size,
            root_hash=root_hash,
            timestamp=to_utc(timestamp),
            signature=key.sign(msg).hex(),
        )

    def verify_signature(self, public_key: Ed25519PublicKey) -> bool:
        """True iff the signature is valid for this head under ``public_key``."""
        msg = self.message(
            tree_size=self.tree_size, root_hash=self.root_hash, timestamp=self.timestamp
        )
        try:
            public_key.verify(bytes.fromhex(self.signature), msg)
        except InvalidSignature:
            return False
        return True

    def to_line(self) -> bytes:
        """Canonical JSON, as stored one per line in the tree-head file."""
        return canonical_json(self.model_dump(mode="json"))


class InclusionProof(BaseModel):
    """Evidence that entry ``seq`` (leaf hash ``leaf_hash``) is in the tree of
    ``tree_size`` entries with root ``root_hash`` (RFC 9162 §2.1.3)."""

    model_config = _STRICT

    seq: _Size
    tree_size: _Size
    leaf_hash: Sha256Hex
    root_hash: Sha256Hex
    path: tuple[Sha256Hex, ...]

    def verify(self) -> bool:
        """Recompute the root from the path (RFC 9162 §2.1.3.2)."""
        return merkle.verify_inclusion(
            leaf=bytes.fromhex(self.leaf_hash),
            index=self.seq,
            tree_size=self.tree_size,
            proof=[bytes.fromhex(p) for p in self.path],
            root_hash=bytes.fromhex(self.root_hash),
        )


class ConsistencyProof(BaseModel):
    """Evidence that the log of ``old_size`` entries (root ``old_root``) is a
    prefix of the log of ``new_size`` entries (root ``new_root``): nothing
    signed earlier was changed or dropped (RFC 9162 §2.1.4)."""

    model_config = _STRICT

    old_size: _Size
    new_size: _Size
    old_root: Sha256Hex
    new_root: Sha256Hex
    path: tuple[Sha256Hex, ...]

    def verify(self) -> bool:
        """Check the proof (RFC 9162 §2.1.4.2)."""
        return merkle.verify_consistency(
            old_size=self.old_size,
            new_size=self.new_size,
            old_root=bytes.fromhex(self.old_root),
            new_root=bytes.fromhex(self.new_root),
            proof=[bytes.fromhex(p) for p in self.path],
        )


def build_inclusion_proof(tree: merkle.MerkleTree, *, seq: int, tree_size: int) -> InclusionProof:
    """The inclusion proof of entry ``seq`` in the first ``tree_size`` leaves of
    ``tree``; the writer (``AuditLog``) and the reader (``AuditReader``) both hand
    out this one. Range checks stay with the caller (each has its own error)."""
    path = tree.inclusion_proof(index=seq, tree_size=tree_size)
    return InclusionProof(
        seq=seq,
        tree_size=tree_size,
        leaf_hash=tree.leaf(index=seq).hex(),
        root_hash=tree.root(tree_size=tree_size).hex(),
        path=tuple(p.hex() for p in path),
    )


def build_consistency_proof(
    tree: merkle.MerkleTree, *, old_size: int, new_size: int
) -> ConsistencyProof:
    """The consistency proof from ``old_size`` to ``new_size`` leaves of ``tree``
    (see ``build_inclusion_proof``: one builder, range checks with the caller)."""
    path = tree.consistency_proof(old_size=old_size, new_size=new_size)
    return ConsistencyProof(
        old_size=old_size,
        new_size=new_size,
        old_root=tree.root(tree_size=old_size).hex(),
        new_root=tree.root(tree_size=new_size).hex(),
        path=tuple(p.hex() for p in path),
    )
