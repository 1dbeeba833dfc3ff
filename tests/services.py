"""The one place the tests decide what a missing service means: skip, or fail under CI.

Locally, a test that needs Mosquitto or PostgreSQL skips when the service is
not running, saying how to start it. Under CI (``CI`` set to a true value, as
every CI system does) the same test fails instead: CI starts both services
(scripts/test.sh), so a missing one is a broken run, and a green run that
quietly skipped every broker and database test would lie.

The fixtures that hand the services to tests (``mqtt_broker``,
``postgres_server``) are in tests/conftest.py; code that is not a fixture
imports these functions as ``tests.services``.
"""

from __future__ import annotations

import importlib
import os
import socket
from types import ModuleType
from typing import NoReturn

import pytest

START_SERVICES = "bash scripts/services.sh"
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def under_ci() -> bool:
    """``CI`` is set to a true value (``CI=false`` or ``CI=0`` is a local run)."""
    return os.environ.get("CI", "").strip().lower() in TRUE_VALUES


def unavailable(problem: str, *, fix: str) -> NoReturn:
    """Skip the test (fail it under CI), naming the problem and how to fix it."""
    hint = f"{problem}; {fix}"
    if under_ci():
        pytest.fail(f"{hint} (CI is set, so a missing service fails the run)", pytrace=False)
    pytest.skip(hint)


def require_service(
    name: str, host: str, port: int, *, start: str = START_SERVICES
) -> tuple[str, int]:
    """``(host, port)`` when something accepts TCP connections there, else skip (CI: fail)."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        refused = str(exc)  # reported outside the handler: the failure shows no traceback
    else:
        return host, port
    unavailable(f"{name} is not reachable on {host}:{port} ({refused})", fix=f"start it: {start}")


def require_module(name: str, *, install: str) -> ModuleType:
    """The imported module, else skip (CI: fail): a service's client library, not a service."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing = str(exc)
    unavailable(f"{name} is not installed ({missing})", fix=f"install it: {install}")
