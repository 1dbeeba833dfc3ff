"""Operator-issued enrolment secrets, and the proofs that travel instead of them.

Why: a device id on a topic proves nothing, so a device enrols only with a
secret an operator issued for that device id and study. The secret itself
never goes on the wire (the broker may be hostile): the device proves it
knows the secret with an HMAC over what it enrols (study, device, public key),
and the coordinator answers with an HMAC over the same plus its own wire key,
so the device pins the genuine coordinator key, not whatever a fake
coordinator sent first.

Why stateless: the secret is ``public part | HMAC(master key, public part)``,
so the coordinator checks it with its master key and stores nothing until the
device enrols. It is one-time because a device id enrols once: a second
enrolment with another key is refused as impersonation, one after revocation
as revoked. It expires (``expires_at``) so a leaked, unused secret dies.

Text form: ``fwe1.<base64url public part>.<base64url mac>``; the public part is
``len8 study | study | len8 device | device | expires_at u64 | nonce 16``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from fedward.protocol.errors import EnrolmentDenied
from fedward.protocol.ids import is_valid_id

PREFIX = "fwe1"
NONCE_BYTES = 16
MAC_BYTES = 32
MASTER_KEY_BYTES = 32
_ISSUE = b"fedward-enrolment-secret-v1"
_PROOF = b"fedward-enrol-proof-v1"
_ACK = b"fedward-enrol-ack-v1"


@dataclass(frozen=True, slots=True)
class EnrolmentSecret:
    """A parsed secret; ``mac`` is the part only the operator and the device know."""

    study_id: str
    device_id: str
    expires_at: int
    nonce: bytes
    mac: bytes

    def public_part(self) -> bytes:
        return _public(self.study_id, self.device_id, self.expires_at, self.nonce)

    def text(self) -> str:
        def b64(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).decode("ascii").rstrip("=")

        return f"{PREFIX}.{b64(self.public_part())}.{b64(self.mac)}"


def _public(study_id: str, device_id: str, expires_at: int, nonce: bytes) -> bytes:
    study, device = study_id.encode(), device_id.encode()
    return (
        bytes((len(study),))
        + study
        + bytes((len(device),))
        + device
        + struct.pack("<Q", expires_at)
        + nonce
    )


def _mac(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(struct.pack("<I", len(part)))
        mac.update(part)
    return mac.digest()


def new_master_key() -> bytes:
    return os.urandom(MASTER_KEY_BYTES)


def load_or_create_master_key(path: Path) -> bytes:
    """The coordinator's enrolment master key (32 random bytes, file mode 0600).

    Whoever reads it can mint enrolment secrets, so, as for the audit key, a
    file that group or others can read, a symlink or another user's file is
    refused (:class:`EnrolmentDenied` names the path and the fix).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, new_master_key())
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise EnrolmentDenied(f"cannot open the enrolment key {path}: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise EnrolmentDenied(f"the enrolment key {path} is not a regular file of this user")
        if info.st_mode & 0o077:
            raise EnrolmentDenied(f"the enrolment key {path} is readable by others: chmod 600 it")
        key = os.read(fd, MASTER_KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != MASTER_KEY_BYTES:
        raise EnrolmentDenied(f"the enrolment key {path} is not {MASTER_KEY_BYTES} bytes")
    return key


def issue_secret(
    master_key: bytes, *, study_id: str, device_id: str, expires_at: int, nonce: bytes | None = None
) -> EnrolmentSecret:
    """A new secret for ``device_id`` in ``study_id``, valid until ``expires_at`` (POSIX s)."""
    if not (is_valid_id(study_id) and is_valid_id(device_id)):
        raise EnrolmentDenied("study and device ids must match [A-Za-z0-9_.-]{1,64}")
    if type(expires_at) is not int or expires_at < 0:
        raise EnrolmentDenied("expires_at must be a non-negative int")
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    mac = _mac(master_key, _ISSUE, _public(study_id, device_id, expires_at, nonce))
    return EnrolmentSecret(study_id, device_id, expires_at, nonce, mac)


def parse_secret(text: str) -> EnrolmentSecret:
    """Parse the text form; :class:`EnrolmentDenied` says what is wrong with it."""
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise EnrolmentDenied(f"an enrolment secret starts with {PREFIX}. and has three parts")
    try:
        public, mac = (base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in parts[1:])
    except ValueError:
        raise EnrolmentDenied("an enrolment secret is base64url") from None
    try:
        n = public[0]
        study = public[1 : 1 + n].decode()
        m = public[1 + n]
        device = public[2 + n : 2 + n + m].decode()
        rest = public[2 + n + m :]
        (expires_at,) = struct.unpack_from("<Q", rest)
        nonce = rest[8:]
    except (IndexError, UnicodeDecodeError, struct.error):
        raise EnrolmentDenied("the enrolment secret's public part is malformed") from None
    if len(nonce) != NONCE_BYTES or len(mac) != MAC_BYTES:
        raise EnrolmentDenied("the enrolment secret has the wrong length")
    if not (is_valid_id(study) and is_valid_id(device)):
        raise EnrolmentDenied("the enrolment secret names an invalid study or device id")
    return EnrolmentSecret(study, device, expires_at, nonce, mac)


def enrol_proof(mac: bytes, *, study_id: str, device_id: str, public_key: bytes) -> bytes:
    """What the device sends: proves it holds the secret for this enrolment."""
    return _mac(mac, _PROOF, study_id.encode(), device_id.encode(), public_key)


def ack_proof(
    mac: bytes,
    *,
    study_id: str,
    device_id: str,
    public_key: bytes,
    coordinator_key: bytes,
    accepted: bool,
) -> bytes:
    """What the coordinator sends back: proves it knows the secret too (pin this key)."""
    return _mac(
        mac,
        _ACK,
        study_id.encode(),
        device_id.encode(),
        public_key,
        coordinator_key,
        b"\x01" if accepted else b"\x00",
    )


def check_ticket(
    master_key: bytes,
    *,
    study_id: str,
    device_id: str,
    expires_at: int,
    nonce: bytes,
    proof: bytes,
    public_key: bytes,
    now: float,
) -> bytes:
    """The secret's mac if the device's proof is valid and unexpired; else EnrolmentDenied."""
    mac = _mac(master_key, _ISSUE, _public(study_id, device_id, expires_at, nonce))
    expected = enrol_proof(mac, study_id=study_id, device_id=device_id, public_key=public_key)
    if not hmac.compare_digest(expected, proof):
        raise EnrolmentDenied("no valid enrolment secret for this device")
    if expires_at < now:
        raise EnrolmentDenied("the enrolment secret has expired")
    return mac


__all__ = [
    "EnrolmentSecret",
    "ack_proof",
    "check_ticket",
    "enrol_proof",
    "issue_secret",
    "load_or_create_master_key",
    "new_master_key",
    "parse_secret",
]
