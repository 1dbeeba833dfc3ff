"""A device's identity: an Ed25519 key pair made at first enrolment.

Why a key at all when the wire contract only carries the public half: the
coordinator pins the public key it saw at enrolment (trust on first use), so
a later enrolment under the same device id with another key is detectable,
and the same key can sign enrolments and updates once the contract carries a
signature field. The private key never leaves the device.

The key file is created ``0600`` and loading refuses a file that group or
others can read, a symlink, or a file owned by another user (the rules of
:mod:`fedward.compliance.keys`, which this module reuses rather than repeats).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.compliance.errors import KeyFileError
from fedward.compliance.keys import load_or_create_signing_key, public_key_raw

KEY_FILE_NAME = "device.key"

__all__ = ["KEY_FILE_NAME", "DeviceIdentity", "KeyFileError", "load_or_create_identity"]


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    key: Ed25519PrivateKey
    key_path: Path

    @property
    def public_key(self) -> bytes:
        """The 32-byte raw public key that travels in ``Enrol.public_key``."""
        return public_key_raw(self.key)

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``data`` (for when the contract carries one)."""
        return self.key.sign(data)


def load_or_create_identity(state_dir: Path, *, device_id: str) -> DeviceIdentity:
    """The device's key from ``state_dir``, creating it (0600) on first use.

    ``state_dir`` is created ``0700`` if missing. Raises :class:`KeyFileError`
    for an unsafe or unreadable key file; the agent must not enrol with it.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / KEY_FILE_NAME
    return DeviceIdentity(device_id=device_id, key=load_or_create_signing_key(path), key_path=path)
