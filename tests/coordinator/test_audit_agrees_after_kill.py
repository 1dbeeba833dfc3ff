"""kill -9 at random points never makes the audit log and the database disagree.

Each round forks a real coordinator process (``StudyService`` on the real
database and audit log, see ``tests/coordinator/audit_crash_worker.py``) that
restarts from what the last one left, checks the agreement of log and database
right after its start-up (torn tail repaired, committed records recovered),
then works until it is killed: by itself at a random occurrence of a random
point of a commit (before it, right after it, between two appends of its
records, halfway through writing one), or by this test after a random delay.
Every decision the database holds must be in the log exactly once, the log
must hold no decision the database lost, and the log must verify.

One more test runs the old order (records appended before the commit) through
the same kill and check, to show that the check catches what the issue saw.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedward.cli import app
from tests.coordinator.audit_crash_worker import CRASH_POINTS

ROOT = Path(__file__).resolve().parents[2]
KILLS = 22
"""Rounds that must end in SIGKILL, per backend (the issue asks for at least 20)."""


class ForkServer:
    """The worker's fork server: send a command, get the child's pid and its end."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.coordinator.audit_crash_worker"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, command: dict) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["pid"])

    def end(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("the fork server died")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


def run_round(
    server: ForkServer, command: dict, *, kill_after_s: float | None
) -> tuple[dict, dict | None]:
    check = Path(command["check_path"])
    check.unlink(missing_ok=True)
    pid = server.start(command)
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it finished first
    end = server.end()
    return end, (json.loads(check.read_text()) if check.exists() else None)


def log_entries(data_dir: Path) -> list[dict]:
    path = data_dir / "audit" / "coordinator.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_kill_9_at_random_points_leaves_log_and_database_agreeing(
    backend, request, tmp_path, fork_server
) -> None:
    # Prepare
    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgres"
        else f"sqlite:///{tmp_path / 'coordinator.db'}"
    )
    data_dir = tmp_path / "data"
    rng = random.Random(f"kill-9/{backend}")  # injected: the same points on every run
    base = {"url": url, "data_dir": str(data_dir), "check_path": str(tmp_path / "check.json")}
    kills, checks, rounds = 0, [], 0
    # Execute: rounds until KILLS of them ended in SIGKILL (a timed kill may come too late)
    while kills < KILLS:
        rounds += 1
        assert rounds <= 3 * KILLS, "children keep finishing before they are killed"
        point = rng.choice([*CRASH_POINTS, "timed"])
        if point == "timed":
            command = {**base, "steps": 60}
            end, check = run_round(fork_server, command, kill_after_s=rng.uniform(0.05, 1.5))
        else:
            command = {**base, "steps": 12, "point": point, "after": rng.randint(1, 10)}
            end, check = run_round(fork_server, command, kill_after_s=None)
        assert end["code"] in (None, 0), f"round {rounds} ({point}) failed: {end}"
        kills += end["signal"] == signal.SIGKILL
        if check is not None:
            checks.append((rounds, point, check))
    end, final = run_round(fork_server, {**base, "steps": 0}, kill_after_s=None)
    verify = CliRunner().invoke(app, ["audit", "verify", "--data-dir", str(data_dir)])
    # Assert: after every restart the log agreed with the database, and verifies
    bad = [(r, p, c["problems"]) for r, p, c in checks if not c["ok"]]
    assert bad == []
    assert end == {"pid": end["pid"], "signal": None, "code": 0} and final is not None
    assert final["ok"], final["problems"]
    assert verify.exit_code == 0 and "intact" in verify.output, verify.output
    # ... and the kills hit real work and the windows that matter
    assert final["merges"] >= 3 and final["accepted"] >= 6 and final["rejected"] >= 1, final
    entries = log_entries(data_dir)
    assert any(e["action"] == "log_repaired" for e in entries)  # a torn write was cut off
    assert any(e["details"].get("recovered") for e in entries)  # a committed record caught up


def test_the_check_catches_records_appended_before_their_commit(tmp_path, fork_server) -> None:
    # Prepare: the order the issue measured (append, then commit), killed in between
    base = {
        "url": f"sqlite:///{tmp_path / 'coordinator.db'}",
        "data_dir": str(tmp_path / "data"),
        "check_path": str(tmp_path / "check.json"),
        "write_ahead": True,
    }
    found = []
    # Execute: kill before the n-th commit, restart (the check runs first), repeat
    for after in (3, 5, 4, 6):
        run_round(
            fork_server,
            {**base, "steps": 12, "point": "before_commit", "after": after},
            kill_after_s=None,
        )
        _, check = run_round(fork_server, {**base, "steps": 0}, kill_after_s=None)
        assert check is not None
        found += check["problems"]
    # Assert: entries for decisions the database never committed
    assert found, "the old write-ahead order went unnoticed"
    assert any("phantom" in p or "twice" in p for p in found), found
