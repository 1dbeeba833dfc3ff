"""SecAggServer.bind_identity_keys: once, while advertising, after checking what it holds."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.privacy.secagg import (
    ProtocolViolation,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    SecAggSession,
    StateError,
    digest_index_set,
)

COHORT = ("a", "b", "c", "d")
KEYS = {d: Ed25519PrivateKey.generate() for d in COHORT}
CONFIG = SecAggConfig(threshold=3, scale=2.0**10, clip=1.0)
SESSION = SecAggSession(
    session_id=b"bind-keys-session-01",
    round_index=0,
    cohort=COHORT,
    vector_length=3,
    index_set_digest=digest_index_set(range(3), model_size=3),
)
PUBLIC = {d: k.public_key() for d, k in KEYS.items()}


def client(device: str, *, signed: bool) -> SecAggClient:
    key = KEYS[device] if signed else None
    return SecAggClient(config=CONFIG, session=SESSION, device_id=device, signing_key=key)


def test_binding_checks_the_advertisements_already_held() -> None:
    # Prepare: one signed and one unsigned advertisement accepted without keys
    server = SecAggServer(config=CONFIG, session=SESSION)
    server.receive_advertisement(client("a", signed=True).advertise())
    server.receive_advertisement(client("b", signed=False).advertise())
    # Execute / Assert: the unsigned one fails the check, nothing is bound
    with pytest.raises(ProtocolViolation):
        server.bind_identity_keys(PUBLIC)
    assert not server.checks_identities


def test_keys_bind_once_and_only_while_advertising() -> None:
    # Prepare
    server = SecAggServer(config=CONFIG, session=SESSION)
    server.receive_advertisement(client("a", signed=True).advertise())
    # Execute
    server.bind_identity_keys(PUBLIC)
    # Assert: bound, never replaced; an unsigned advertisement is now refused
    assert server.checks_identities
    with pytest.raises(StateError):
        server.bind_identity_keys(PUBLIC)
    with pytest.raises(ProtocolViolation):
        server.receive_advertisement(client("b", signed=False).advertise())
    for device in ("b", "c"):
        server.receive_advertisement(client(device, signed=True).advertise())
    server.close_advertisements()
    late = SecAggServer(config=CONFIG, session=SESSION)
    for device in ("a", "b", "c"):
        late.receive_advertisement(client(device, signed=True).advertise())
    late.close_advertisements()
    with pytest.raises(StateError):
        late.bind_identity_keys(PUBLIC)
