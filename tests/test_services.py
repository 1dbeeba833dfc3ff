"""tests/services.py: a missing service skips a test locally and fails it under CI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import require_module, require_service, under_ci

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nothing listens on: bound (so nobody else takes it) but never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def open_port() -> Iterator[int]:
    sock = socket.create_server(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def run_pytest_on(tmp_path: Path, port: int, ci: str | None) -> subprocess.CompletedProcess[str]:
    """Run pytest in a subprocess on one test that needs a service on ``port``."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # keeps the repo's config out
    (tmp_path / "test_needs_a_service.py").write_text(
        "from tests.services import require_service\n\n\n"
        "def test_needs_the_broker():\n"
        f"    require_service('Mosquitto', '127.0.0.1', {port}, start='mosquitto -d')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env |= {"PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_missing_service_skips_a_local_run(tmp_path: Path, closed_port: int) -> None:
    # Execute
    proc = run_pytest_on(tmp_path, closed_port, ci=None)
    # Assert
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout
    assert f"Mosquitto is not reachable on 127.0.0.1:{closed_port}" in proc.stdout
    assert "start it: mosquitto -d" in proc.stdout


def test_a_missing_service_fails_a_ci_run(tmp_path: Path, closed_port: int) -> None:
    # Execute
    proc = run_pytest_on(tmp_path, closed_port, ci="true")
    # Assert
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed" in proc.stdout
    assert f"Mosquitto is not reachable on 127.0.0.1:{closed_port}" in proc.stdout
    assert "start it: mosquitto -d" in proc.stdout


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("YES", True), (" on ", True), ("false", False), ("0", False)],
)
def test_ci_counts_only_a_true_value(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    # Prepare
    monkeypatch.setenv("CI", value)
    # Execute / Assert
    assert under_ci() is expected


def test_ci_unset_is_a_local_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.delenv("CI", raising=False)
    # Execute / Assert
    assert under_ci() is False


@pytest.mark.parametrize("ci", ["true", None])
def test_a_running_service_is_handed_back(
    monkeypatch: pytest.MonkeyPatch, open_port: int, ci: str | None
) -> None:
    # Prepare
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    # Execute
    address = require_service("PostgreSQL", "127.0.0.1", open_port)
    # Assert
    assert address == ("127.0.0.1", open_port)


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), (None, pytest.skip.Exception)]
)
def test_a_missing_client_library_follows_the_same_rule(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: type[BaseException]
) -> None:
    # Prepare
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    # Execute
    with pytest.raises(outcome) as caught:
        require_module("fedward_no_such_driver", install="pip install it")
    # Assert
    assert "fedward_no_such_driver is not installed" in str(caught.value)
    assert "install it: pip install it" in str(caught.value)
