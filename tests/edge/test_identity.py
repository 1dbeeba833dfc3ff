"""Device identity: an Ed25519 key made once, kept 0600, refused if exposed."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedward.edge.identity import KEY_FILE_NAME, KeyFileError, load_or_create_identity


def test_first_use_creates_an_owner_only_key_and_reuses_it(tmp_path):
    # Execute
    first = load_or_create_identity(tmp_path / "state", device_id="d1")
    again = load_or_create_identity(tmp_path / "state", device_id="d1")
    # Assert
    mode = stat.S_IMODE((tmp_path / "state" / KEY_FILE_NAME).stat().st_mode)
    assert mode == 0o600
    assert len(first.public_key) == 32
    assert again.public_key == first.public_key


def test_signatures_verify_with_the_enrolled_public_key(tmp_path):
    identity = load_or_create_identity(tmp_path, device_id="d1")
    signature = identity.sign(b"enrol d1")
    Ed25519PublicKey.from_public_bytes(identity.public_key).verify(signature, b"enrol d1")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_readable_by_group_or_others_is_refused(tmp_path, mode):
    # Prepare
    load_or_create_identity(tmp_path, device_id="d1")
    os.chmod(tmp_path / KEY_FILE_NAME, mode)
    # Execute / Assert
    with pytest.raises(KeyFileError):
        load_or_create_identity(tmp_path, device_id="d1")


def test_a_symlinked_key_is_refused(tmp_path):
    load_or_create_identity(tmp_path / "real", device_id="d1")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / KEY_FILE_NAME).symlink_to(tmp_path / "real" / KEY_FILE_NAME)
    with pytest.raises(KeyFileError):
        load_or_create_identity(tmp_path / "link", device_id="d1")
