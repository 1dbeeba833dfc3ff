"""``fedward audit public-key``: the key devices and auditors are provisioned with."""

from __future__ import annotations

from typer.testing import CliRunner

from fedward.cli import app
from fedward.compliance.keys import create_signing_key, public_key_hex


def test_it_prints_the_data_folders_audit_public_key(tmp_path) -> None:
    # Prepare
    (tmp_path / "keys").mkdir()
    key = create_signing_key(tmp_path / "keys" / "audit-signing-key.pem")
    # Execute
    result = CliRunner().invoke(app, ["audit", "public-key", "--data-dir", str(tmp_path)])
    missing = CliRunner().invoke(app, ["audit", "public-key", "--data-dir", str(tmp_path / "x")])
    # Assert
    assert result.exit_code == 0 and result.output.strip() == public_key_hex(key)
    assert missing.exit_code != 0 and "no audit signing key" in missing.output
