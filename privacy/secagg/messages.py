"""Messages of one SecAgg instance, as plain frozen dataclasses.

The wire contract (versioning, encoding) lives in ``protocol/``; these are the
in-memory shapes. Receivers validate every field: a message may have been
built by a decoder from untrusted bytes.

Flow (server = coordinator, which only relays ciphertexts)::

    client.advertise()            -> KeyAdvertisement   -> server
    server.close_advertisements() -> KeyRoster          -> every client
    client.share_keys(roster)     -> ShareBundle        -> server
    server.close_shares()         -> ShareDelivery      -> each client
    client.mask_input(delivery, update=..., weight=..., counts=...)
                                  -> MaskedInput        -> server
    server.close_masked_inputs()  -> UnmaskRequest      -> every survivor
    client.unmask(request)        -> UnmaskResponse     -> server
    server.finalize()             -> AggregateResult (sums only)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyAdvertisement:
    """A device's two X25519 public keys (share encryption, mask agreement)."""

    session_id: bytes
    round_index: int
    device_id: str
    enc_public_key: bytes
    mask_public_key: bytes
    signature: bytes = b""  # Ed25519 over advertisement_payload(), if identities are used


@dataclass(frozen=True)
class KeyRoster:
    """All advertisements the server accepted (U1), broadcast to every device.

    ``evidence``: empty, or one opaque blob per advertisement (same order) that
    lets a device check the advertiser's identity key against something the
    server cannot rewrite alone (fedward attaches each member's enrolment record
    from the signed audit log, see ``fedward.edge.peer_evidence``). This package
    only carries the bytes; it never parses them.
    """

    session_id: bytes
    round_index: int
    advertisements: tuple[KeyAdvertisement, ...]
    evidence: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class EncryptedShare:
    """Shares of the sender's mask key and self-mask seed, AEAD-encrypted to the recipient."""

    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class ShareBundle:
    """One device's encrypted shares, one for every other member of U1."""

    session_id: bytes
    round_index: int
    sender: str
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class ShareDelivery:
    """The shares addressed to one device by every other member of U2."""

    session_id: bytes
    round_index: int
    recipient: str
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class MaskedInput:
    """A device's masked vector: ``session.total_words(config)`` words of Z_{2^b}, packed
    b = ``config.modulus_bits`` bits each, little-endian (``quantize.words_to_bytes``)."""

    session_id: bytes
    round_index: int
    device_id: str
    data: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Survivors (U3: reveal self-mask seed shares) and dropped (U2 minus U3: reveal key shares).

    The two sets must be disjoint: a device is never unmasked both ways.
    """

    session_id: bytes
    round_index: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class RevealedShare:
    """One decrypted Shamir share of ``owner``'s secret (serialized ``shamir.Share``)."""

    owner: str
    share: bytes


@dataclass(frozen=True)
class UnmaskResponse:
    """A survivor's answer: seed shares of survivors, key shares of dropped devices."""

    session_id: bytes
    round_index: int
    device_id: str
    seed_shares: tuple[RevealedShare, ...]
    key_shares: tuple[RevealedShare, ...]
