"""Fixtures for the live tests: the local broker and unique study ids."""

from __future__ import annotations

import socket
import uuid

import pytest

BROKER = ("127.0.0.1", 1883)


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """The local Mosquitto, or skip (start it: mosquitto -d -c /etc/mosquitto/mosquitto.conf)."""
    try:
        socket.create_connection(BROKER, timeout=1).close()
    except OSError:
        pytest.skip(f"no MQTT broker on {BROKER[0]}:{BROKER[1]}")
    return BROKER


@pytest.fixture
def study_id() -> str:
    """A fresh study id: every test has its own topic tree on a shared broker."""
    return "live-" + uuid.uuid4().hex[:16]
