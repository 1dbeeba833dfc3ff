"""The audit log's Ed25519 signing key on disk.

Why the fuss: whoever holds this key can sign a tree head over a rewritten
log, which is the one forgery the verifier cannot see.  So the key file is
created ``0600`` (owner read/write only, whatever the umask), and loading
refuses a file that anybody else could read or that another user owns --
the same rule OpenSSH applies to private keys.  The file is opened with
``O_NOFOLLOW`` and checked with ``fstat`` on the open descriptor, so the file
checked is the file read.

Format: PKCS#8 PEM, optionally encrypted with a passphrase.  Export the public
half with :func:`public_key_raw` (32 bytes) or :func:`public_key_hex` and hand
it to auditors; ``verify_log`` accepts either form.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedward.compliance.errors import KeyFileError

__all__ = [
    "create_signing_key",
    "load_or_create_signing_key",
    "load_signing_key",
    "public_key_from_raw",
    "public_key_hex",
    "public_key_raw",
]

_KEY_MODE = 0o600
_MAX_KEY_FILE = 64 * 1024


def create_signing_key(
    path: str | os.PathLike[str], *, password: bytes | None = None
) -> Ed25519PrivateKey:
    """Generate a new key and write it to ``path`` with mode 0600.

    Refuses (``FileExistsError``) to overwrite an existing file: replacing the
    key silently would orphan every tree head signed with the old one.
    """
    key = Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=encryption,
    )
    fd = os.open(
        Path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _KEY_MODE
    )
    try:
        os.fchmod(fd, _KEY_MODE)  # the umask may have removed bits, never added: be explicit
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_signing_key(
    path: str | os.PathLike[str], *, password: bytes | None = None
) -> Ed25519PrivateKey:
    """Load an Ed25519 key from ``path``, refusing an unsafe file.

    Raises :class:`KeyFileError` if the file is a symlink or not a regular
    file, is owned by another user, is readable or writable by group or others,
    or does not hold an Ed25519 private key.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ELOOP for a symlink
        raise KeyFileError(f"cannot open key file {p} safely: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {p} is not a regular file")
        if info.st_uid != os.getuid():
            raise KeyFileError(f"key file {p} is owned by uid {info.st_uid}, not by us")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"key file {p} has mode {stat.S_IMODE(info.st_mode):04o}: "
                "group/others must have no access (chmod 600)"
            )
        if info.st_size > _MAX_KEY_FILE:
            raise KeyFileError(f"key file {p} is too large to be a key")
        data = os.read(fd, _MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {p} does not hold a usable PEM key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"key file {p} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_or_create_signing_key(
    path: str | os.PathLike[str], *, password: bytes | None = None
) -> Ed25519PrivateKey:
    """Load the key at ``path``, creating it first if there is none."""
    try:
        return create_signing_key(path, password=password)
    except FileExistsError:
        return load_signing_key(path, password=password)


def public_key_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32-byte raw public key (RFC 8032 encoding)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw public key as hex, e.g. for a config file or a report."""
    return public_key_raw(key).hex()


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    """Rebuild a public key from its 32 raw bytes."""
    if len(raw) != 32:
        raise KeyFileError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)
