"""Fixtures shared by every test folder: the real services the suite talks to.

Each one skips the test when its service is down (with the command that
starts it) and fails it instead under CI; tests/services.py holds that rule.
Session-scoped, so each service is probed once per run.
"""

from __future__ import annotations

import pytest

from tests.services import require_service

MOSQUITTO_START = "bash scripts/services.sh (or: mosquitto -d -c /etc/mosquitto/mosquitto.conf)"


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """The local Mosquitto, ``(host, port)``."""
    return require_service("Mosquitto (MQTT broker)", "127.0.0.1", 1883, start=MOSQUITTO_START)


@pytest.fixture(scope="session")
def postgres_server() -> tuple[str, int]:
    """The local PostgreSQL server, ``(host, port)``."""
    return require_service("PostgreSQL", "127.0.0.1", 5432)
