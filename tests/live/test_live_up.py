"""``fedward up`` end to end on the embedded amqtt broker (no external broker needed)."""

from __future__ import annotations

from typer.testing import CliRunner

from fedward.cli import app


def test_fedward_up_runs_a_tiny_live_study_on_the_embedded_broker(tmp_path):
    # Prepare
    runner = CliRunner()
    # Execute
    result = runner.invoke(
        app,
        [
            "up",
            "--devices",
            "4",
            "--scenario",
            "tiny",
            "--updates",
            "16",
            "--data-dir",
            str(tmp_path),
        ],
    )
    # Assert: the study finished and left a verifiable audit log behind
    assert result.exit_code == 0, result.output
    assert "final accuracy" in result.output
    assert "mqtt://127.0.0.1:" in result.output
    log = tmp_path / "audit" / "coordinator.jsonl"  # one layout: the folder up printed
    assert log.exists() and "model_merged" in log.read_text()
    assert (tmp_path / "devices" / "d0000" / "device.key").stat().st_mode & 0o077 == 0
