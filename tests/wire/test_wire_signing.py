"""Signed envelopes, counters and enrolment secrets, on their own (no broker)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.protocol.enrolment import (
    ack_proof,
    check_ticket,
    enrol_proof,
    issue_secret,
    load_or_create_master_key,
    parse_secret,
)
from fedward.protocol.errors import BadSignature, EnrolmentDenied, Replayed, Unsigned
from fedward.protocol.messages import Ack, AckStatus, ModelDownload, encode_frame
from fedward.protocol.signing import (
    CounterFile,
    ReplayGuard,
    Role,
    SealContext,
    open_seal,
    seal,
    verify,
)

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes_raw()
CONTEXT = SealContext(Role.COORDINATOR, "s1", "d1")


def _model_frame() -> bytes:
    tensors = {"w": np.ones((4, 4), np.float32)}
    return encode_frame(ModelDownload(model_version=3, subset_id="full", names=("w",)), tensors)


def test_a_sealed_frame_verifies_and_gives_back_the_frame():
    # Prepare
    frame = _model_frame()
    # Execute
    opened = verify(
        open_seal(seal(frame, key=KEY, context=CONTEXT, counter=7)),
        public_key=PUBLIC,
        context=CONTEXT,
    )
    # Assert
    assert opened == frame


@pytest.mark.parametrize("where", ["header", "payload", "counter"])
def test_any_change_to_a_sealed_frame_is_refused(where):
    # Prepare
    sealed = bytearray(seal(_model_frame(), key=KEY, context=CONTEXT, counter=7))
    offset = {"header": 100, "payload": len(sealed) - 5, "counter": 7}[where]
    sealed[offset] ^= 0x01
    # Execute / Assert
    with pytest.raises(BadSignature):
        verify(open_seal(bytes(sealed)), public_key=PUBLIC, context=CONTEXT)


@pytest.mark.parametrize(
    "context",
    [
        SealContext(Role.COORDINATOR, "s2", "d1"),  # another study
        SealContext(Role.COORDINATOR, "s1", "d2"),  # another device's topic
        SealContext(Role.DEVICE, "s1", "d1"),  # the other direction
    ],
)
def test_a_signature_is_bound_to_study_device_and_direction(context):
    # Prepare
    sealed = open_seal(seal(_model_frame(), key=KEY, context=CONTEXT, counter=1))
    # Execute / Assert
    with pytest.raises(BadSignature):
        verify(sealed, public_key=PUBLIC, context=context)


def test_another_key_and_an_unsigned_frame_are_refused():
    # Prepare
    frame = encode_frame(Ack(task_id="t1", status=AckStatus.MERGED))
    forged = seal(frame, key=Ed25519PrivateKey.generate(), context=CONTEXT, counter=1)
    # Execute / Assert
    with pytest.raises(BadSignature):
        verify(open_seal(forged), public_key=PUBLIC, context=CONTEXT)
    with pytest.raises(Unsigned):
        open_seal(frame)


def test_replayed_and_out_of_order_counters_are_refused():
    # Prepare
    guard = ReplayGuard()
    guard.check("d1", 5)
    # Execute / Assert
    for counter in (5, 4):
        with pytest.raises(Replayed):
            guard.check("d1", counter)
    guard.check("d1", 6)
    guard.check("d2", 1)  # per sender


def test_a_counter_never_repeats_across_restarts(tmp_path):
    # Prepare
    first = CounterFile(tmp_path / "c", block=4)
    used = [first.next() for _ in range(6)]
    # Execute: a crash, then a restart from the file
    again = CounterFile(tmp_path / "c", block=4)
    # Assert
    assert again.next() > max(used)
    assert used == sorted(set(used))


def test_an_enrolment_secret_proves_one_device_and_expires():
    # Prepare
    master = os.urandom(32)
    secret = parse_secret(
        issue_secret(master, study_id="s1", device_id="d1", expires_at=2000).text()
    )
    proof = enrol_proof(secret.mac, study_id="s1", device_id="d1", public_key=PUBLIC)
    ticket = dict(expires_at=secret.expires_at, nonce=secret.nonce, proof=proof, public_key=PUBLIC)
    # Execute / Assert: valid once for its device and key, before it expires
    assert check_ticket(master, study_id="s1", device_id="d1", now=1000, **ticket) == secret.mac
    with pytest.raises(EnrolmentDenied, match="no valid"):
        check_ticket(master, study_id="s1", device_id="d2", now=1000, **ticket)
    with pytest.raises(EnrolmentDenied, match="no valid"):
        check_ticket(os.urandom(32), study_id="s1", device_id="d1", now=1000, **ticket)
    with pytest.raises(EnrolmentDenied, match="no valid"):
        check_ticket(
            master, study_id="s1", device_id="d1", now=1000, **(ticket | {"public_key": b"\0" * 32})
        )
    with pytest.raises(EnrolmentDenied, match="expired"):
        check_ticket(master, study_id="s1", device_id="d1", now=3000, **ticket)
    # the coordinator's answer is bound to the key it announces
    good = ack_proof(
        secret.mac,
        study_id="s1",
        device_id="d1",
        public_key=PUBLIC,
        coordinator_key=b"\1" * 32,
        accepted=True,
    )
    other = ack_proof(
        secret.mac,
        study_id="s1",
        device_id="d1",
        public_key=PUBLIC,
        coordinator_key=b"\2" * 32,
        accepted=True,
    )
    assert good != other


@pytest.mark.parametrize("text", ["", "fwe1.abc", "fwe2.YQ.YQ", "fwe1.!!!.YQ", "fwe1.YQ.YQ"])
def test_a_malformed_secret_is_refused_with_a_reason(text):
    with pytest.raises(EnrolmentDenied):
        parse_secret(text)


def test_the_master_key_file_must_be_private(tmp_path):
    # Prepare
    path = tmp_path / "keys" / "enrolment.key"
    key = load_or_create_master_key(path)
    # Execute / Assert: stable, 0600; readable by others it is refused
    assert load_or_create_master_key(path) == key and path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(EnrolmentDenied, match="chmod 600"):
        load_or_create_master_key(path)
