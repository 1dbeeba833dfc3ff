"""Signing-key files: created private, refused when exposed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedward.compliance import (
    KeyFileError,
    create_signing_key,
    load_or_create_signing_key,
    load_signing_key,
    public_key_from_raw,
    public_key_hex,
    public_key_raw,
)


def test_a_new_key_file_is_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "audit.key"
    old = os.umask(0)
    try:
        # Execute
        key = create_signing_key(path)
    finally:
        os.umask(old)
    # Assert
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_key_raw(load_signing_key(path)) == public_key_raw(key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601, 0o700 | 0o020])
def test_a_key_file_others_can_touch_is_refused(tmp_path: Path, mode: int) -> None:
    # Prepare
    path = tmp_path / "audit.key"
    create_signing_key(path)
    path.chmod(mode)
    # Execute / Assert
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_signing_key(path)


def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    # Prepare
    real = tmp_path / "real.key"
    create_signing_key(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    # Execute / Assert
    with pytest.raises(KeyFileError):
        load_signing_key(link)


def test_an_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "audit.key"
    first = create_signing_key(path)
    # Execute / Assert
    with pytest.raises(FileExistsError):
        create_signing_key(path)
    assert public_key_raw(load_or_create_signing_key(path)) == public_key_raw(first)


def test_load_or_create_creates_once(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "audit.key"
    # Execute
    a = load_or_create_signing_key(path)
    b = load_or_create_signing_key(path)
    # Assert
    assert public_key_raw(a) == public_key_raw(b)


def test_a_passphrase_protected_key_round_trips(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "audit.key"
    key = create_signing_key(path, password=b"correct horse")
    # Execute / Assert
    assert public_key_raw(load_signing_key(path, password=b"correct horse")) == public_key_raw(key)
    with pytest.raises(KeyFileError):
        load_signing_key(path, password=b"wrong")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def test_a_key_of_another_type_or_garbage_is_refused(tmp_path: Path) -> None:
    # Prepare
    x25519 = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(tmp_path / "x.key", x25519)
    _write_private(tmp_path / "junk.key", b"not a key")
    # Execute / Assert
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        load_signing_key(tmp_path / "x.key")
    with pytest.raises(KeyFileError, match="PEM"):
        load_signing_key(tmp_path / "junk.key")
    with pytest.raises(FileNotFoundError):
        load_signing_key(tmp_path / "absent.key")


def test_the_public_key_exports_as_32_raw_bytes(tmp_path: Path) -> None:
    # Prepare
    key = create_signing_key(tmp_path / "audit.key")
    # Execute
    raw = public_key_raw(key)
    # Assert
    assert len(raw) == 32 and public_key_hex(key) == raw.hex()
    assert public_key_raw(public_key_from_raw(raw)) == raw
    with pytest.raises(KeyFileError):
        public_key_from_raw(raw[:31])


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file away")
def test_a_key_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "audit.key"
    create_signing_key(path)
    os.chown(path, 4242, -1)
    # Execute / Assert
    with pytest.raises(KeyFileError, match="owned by uid 4242"):
        load_signing_key(path)
