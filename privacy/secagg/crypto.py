"""Key agreement, key derivation, share encryption and advertisement signatures.

Every derived key is bound to the instance context (``session_context``: the
session id, round, cohort, vector length, index-set digest and config
fingerprint) through HKDF-SHA256's salt, and to the device ids through its
info. Pairwise mask keys use the two ids in canonical order (both ends derive
the same key); share-encryption keys are directional (sender, recipient), so
the two directions of a pair never share a key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .config import SecAggConfig, SecAggSession, canonical_order
from .errors import ConfigError, ProtocolViolation

PROTOCOL_LABEL = b"fedward/secagg/v1"
KEY_BYTES = 32
AEAD_NONCE_BYTES = 12
AEAD_TAG_BYTES = 16

RandomBytes = Callable[[int], bytes]
"""``random_bytes(n)`` returns ``n`` bytes; it must be cryptographically secure (``os.urandom``)."""


def lp(data: bytes) -> bytes:
    """Length-prefixed bytes (4-byte big-endian length), for unambiguous concatenation."""
    return len(data).to_bytes(4, "big") + data


def _id(device_id: str) -> bytes:
    return lp(device_id.encode("utf-8"))


def session_context(session: SecAggSession, config: SecAggConfig) -> bytes:
    """32-byte digest naming this instance; bound into every key, AAD and signature."""
    h = hashlib.sha256(lp(PROTOCOL_LABEL))
    h.update(lp(session.session_id))
    h.update(session.round_index.to_bytes(8, "big"))
    h.update(len(session.cohort).to_bytes(4, "big"))
    for device in session.cohort:
        h.update(_id(device))
    h.update(session.vector_length.to_bytes(8, "big"))
    h.update(lp(session.index_set_digest))
    h.update(lp(config.fingerprint()))
    return h.digest()


def derive_key(ikm: bytes, *, context: bytes, label: bytes, ids: tuple[str, ...]) -> bytes:
    """HKDF-SHA256(ikm, salt=context, info=label || ids) -> 32 bytes."""
    info = lp(PROTOCOL_LABEL + b"/" + label) + b"".join(_id(d) for d in ids)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=context, info=info).derive(ikm)


def new_x25519(random_bytes: RandomBytes = os.urandom) -> X25519PrivateKey:
    raw = random_bytes(KEY_BYTES)
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise ConfigError("random_bytes returned the wrong number of bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def private_raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def public_raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def load_private(raw: bytes) -> X25519PrivateKey:
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise ProtocolViolation("X25519 private key must be 32 bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret; a malformed or low-order public key is a ProtocolViolation."""
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        raise ProtocolViolation("X25519 public key must be 32 bytes")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise ProtocolViolation(f"X25519 key agreement failed: {exc}") from None


def pairwise_mask_key(
    private: X25519PrivateKey, peer_public: bytes, *, context: bytes, me: str, peer: str
) -> bytes:
    """Key of the pairwise mask between ``me`` and ``peer`` (same at both ends)."""
    shared = agree(private, peer_public)
    return derive_key(
        shared, context=context, label=b"pairwise-mask", ids=canonical_order((me, peer))
    )


def self_mask_key(seed: bytes, *, context: bytes, device_id: str) -> bytes:
    """Key of a device's self mask, from its 32-byte seed b_i."""
    return derive_key(seed, context=context, label=b"self-mask", ids=(device_id,))


def _share_key(
    private: X25519PrivateKey, peer_public: bytes, *, context: bytes, sender: str, recipient: str
) -> bytes:
    shared = agree(private, peer_public)
    return derive_key(shared, context=context, label=b"share-aead", ids=(sender, recipient))


def _aad(context: bytes, sender: str, recipient: str) -> bytes:
    return lp(context) + _id(sender) + _id(recipient)


def encrypt_share(
    plaintext: bytes,
    *,
    private: X25519PrivateKey,
    peer_public: bytes,
    context: bytes,
    sender: str,
    recipient: str,
    random_bytes: RandomBytes = os.urandom,
) -> tuple[bytes, bytes]:
    """ChaCha20-Poly1305 under a directional key; returns (nonce, ciphertext)."""
    key = _share_key(private, peer_public, context=context, sender=sender, recipient=recipient)
    nonce = random_bytes(AEAD_NONCE_BYTES)
    if not isinstance(nonce, bytes) or len(nonce) != AEAD_NONCE_BYTES:
        raise ConfigError("random_bytes returned the wrong number of bytes")
    aad = _aad(context, sender, recipient)
    return nonce, ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def decrypt_share(
    nonce: bytes,
    ciphertext: bytes,
    *,
    private: X25519PrivateKey,
    peer_public: bytes,
    context: bytes,
    sender: str,
    recipient: str,
) -> bytes:
    """Inverse of :func:`encrypt_share`; a failed tag is a ProtocolViolation."""
    if not isinstance(nonce, bytes) or len(nonce) != AEAD_NONCE_BYTES:
        raise ProtocolViolation("share nonce must be 12 bytes")
    if not isinstance(ciphertext, bytes):
        raise ProtocolViolation("share ciphertext must be bytes")
    key = _share_key(private, peer_public, context=context, sender=sender, recipient=recipient)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, _aad(context, sender, recipient))
    except InvalidTag:
        raise ProtocolViolation(
            f"share from {sender!r} to {recipient!r} failed authentication (tampered or "
            "encrypted for another session)"
        ) from None


def advertisement_payload(
    context: bytes, device_id: str, enc_public: bytes, mask_public: bytes
) -> bytes:
    return (
        lp(PROTOCOL_LABEL + b"/advertise")
        + lp(context)
        + _id(device_id)
        + lp(enc_public)
        + lp(mask_public)
    )


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    return key.sign(payload)


def verify(key: Ed25519PublicKey, signature: bytes, payload: bytes, *, device_id: str) -> None:
    if not isinstance(signature, bytes) or not signature:
        raise ProtocolViolation(f"advertisement of {device_id!r} is not signed")
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise ProtocolViolation(f"bad signature on the advertisement of {device_id!r}") from None
