"""Settings refuse unsafe values; ``fedward coordinator migrate`` and ``serve`` start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from fedward.cli import app
from fedward.coordinator.migrations import is_at_head
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.store import create_db_engine
from fedward.protocol.mqtt_settings import MqttProtocol


@pytest.mark.parametrize(
    "token",
    [
        "",
        "short",
        "changeme",
        "changemechangeme",
        "aaaaaaaaaaaaaaaaaaaa",
        " padded-token-abcdefgh ",
    ],
)
def test_weak_operator_tokens_are_refused(token, tmp_path) -> None:
    # Execute / Assert
    with pytest.raises(ValidationError):
        CoordinatorSettings(operator_token=token, data_dir=tmp_path)


def test_the_operator_token_is_required(monkeypatch) -> None:
    # Prepare
    monkeypatch.delenv("FEDWARD_OPERATOR_TOKEN", raising=False)
    # Execute / Assert
    with pytest.raises(ValidationError):
        CoordinatorSettings()


def test_settings_come_from_the_environment(monkeypatch, tmp_path, token) -> None:
    # Prepare
    monkeypatch.setenv("FEDWARD_OPERATOR_TOKEN", token)
    monkeypatch.setenv("FEDWARD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FEDWARD_API_PORT", "9001")
    monkeypatch.setenv("FEDWARD_MQTT__HOST", "broker.local")
    monkeypatch.setenv("FEDWARD_MQTT__PROTOCOL", "3.1.1")
    # Execute
    s = CoordinatorSettings()
    # Assert
    assert s.operator_token.get_secret_value() == token
    assert token not in repr(s)
    assert (s.api_port, s.mqtt.host, s.mqtt.protocol) == (
        9001,
        "broker.local",
        MqttProtocol.MQTT311,
    )
    assert s.audit_log_path.parent.parent == tmp_path
    assert s.mqtt.client_settings().client_id == "fedward-coordinator"


def test_unknown_database_backends_are_refused(token) -> None:
    # Execute / Assert
    with pytest.raises(ValidationError):
        CoordinatorSettings(operator_token=token, database_url="mysql://x/y")


def test_cli_migrate_brings_a_database_to_head(tmp_path) -> None:
    # Prepare
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    # Execute
    first = CliRunner().invoke(app, ["coordinator", "migrate", "--database-url", url])
    again = CliRunner().invoke(app, ["coordinator", "migrate", "--database-url", url])
    # Assert
    assert first.exit_code == 0 and again.exit_code == 0, first.output
    engine = create_db_engine(url)
    assert is_at_head(engine)
    engine.dispose()


def test_cli_serve_refuses_a_weak_token_before_starting(monkeypatch, tmp_path) -> None:
    # Prepare
    monkeypatch.setenv("FEDWARD_OPERATOR_TOKEN", "changeme")
    # Execute
    result = CliRunner().invoke(app, ["coordinator", "serve", "--data-dir", str(tmp_path)])
    # Assert
    assert result.exit_code == 2
    assert not (tmp_path / "audit").exists()


def test_cli_serve_says_what_to_do_when_the_broker_is_unreachable(monkeypatch, tmp_path) -> None:
    # Prepare: a loopback port with nothing listening (bound, then released)
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("FEDWARD_OPERATOR_TOKEN", "a-long-and-unguessable-operator-token-0123")
    monkeypatch.setenv("FEDWARD_MQTT__HOST", "127.0.0.1")
    monkeypatch.setenv("FEDWARD_MQTT__PORT", str(closed_port))
    # Execute
    result = CliRunner().invoke(
        app,
        [
            "coordinator",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--database-url",
            f"sqlite:///{tmp_path / 'coordinator.db'}",
            "--port",
            "1",
        ],
    )
    # Assert: a plain message naming the broker and the way out, no traceback
    assert result.exit_code == 1, result.output
    assert f"127.0.0.1:{closed_port}" in result.output and "--no-bridge" in result.output
    assert (
        "Traceback" not in result.output
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
