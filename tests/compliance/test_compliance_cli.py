"""``fedward audit verify`` on a real log: intact, tampered, recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from fedward.cli import app
from fedward.compliance import Actor, ActorKind, AuditAction, AuditLog, Outcome
from fedward.compliance.keys import load_or_create_signing_key, public_key_hex

runner = CliRunner()


def make_log(data_dir: Path, entries: int = 5) -> tuple[Path, str]:
    (data_dir / "keys").mkdir(mode=0o700)
    key = load_or_create_signing_key(data_dir / "keys" / "audit-signing-key.pem")
    path = data_dir / "audit" / "coordinator.jsonl"
    path.parent.mkdir(parents=True)
    with AuditLog.open(path, signing_key=key, clock=time.time) as log:
        for i in range(entries):
            log.append(
                actor=Actor(kind=ActorKind.DEVICE, id=f"dev-{i}"),
                action=AuditAction.UPDATE_ACCEPTED,
                outcome=Outcome.SUCCESS,
                study_id="s1",
                details={"task_id": f"t{i}", "update_sha256": "ab" * 32},
            )
    return path, public_key_hex(key)


def test_intact_log_verifies_with_only_the_public_key(tmp_path: Path) -> None:
    path, pub = make_log(tmp_path)
    out = tmp_path / "report.json"
    result = runner.invoke(
        app, ["audit", "verify", "--log", str(path), "--public-key", pub, "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["ok"] and report["entries"] == 5 and report["sth_checked"] >= 1


def test_a_tampered_entry_fails_verification(tmp_path: Path) -> None:
    path, pub = make_log(tmp_path)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("dev-2", "dev-9")
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["audit", "verify", "--log", str(path), "--public-key", pub])
    assert result.exit_code == 1
    assert "problem" in result.output


def test_record_appends_the_verification_to_the_log(tmp_path: Path) -> None:
    path, _ = make_log(tmp_path)
    result = runner.invoke(app, ["audit", "verify", "--data-dir", str(tmp_path), "--record"])
    assert result.exit_code == 0, result.output
    last = json.loads(path.read_text().splitlines()[-1])
    assert "log_verified" in json.dumps(last).lower()
    again = runner.invoke(app, ["audit", "verify", "--data-dir", str(tmp_path)])
    assert again.exit_code == 0, again.output
