"""Shared fixtures for the compliance tests: a deterministic clock, a fresh
signing key, actors, and a helper that fills a log with realistic events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.compliance import (
    Actor,
    ActorKind,
    AuditAction,
    AuditLog,
    AuditReceipt,
    Outcome,
    sha256_hex,
)


class StepClock:
    """A clock that advances by a fixed step on every reading."""

    def __init__(self, *, start: datetime, step: timedelta) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


@pytest.fixture
def clock() -> StepClock:
    return StepClock(start=datetime(2026, 11, 2, 8, 0, tzinfo=UTC), step=timedelta(seconds=1))


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def device() -> Actor:
    return Actor(kind=ActorKind.DEVICE, id="dev-0007")


@pytest.fixture
def operator() -> Actor:
    return Actor(kind=ActorKind.OPERATOR, id="alice@site-a")


@pytest.fixture
def append_updates(device: Actor) -> Callable[..., list[AuditReceipt]]:
    """Append ``count`` UPDATE_ACCEPTED events (each with a distinct update hash)."""

    def append(log: AuditLog, *, count: int, start: int = 0) -> list[AuditReceipt]:
        return [
            log.append(
                actor=device,
                action=AuditAction.UPDATE_ACCEPTED,
                outcome=Outcome.SUCCESS,
                study_id="sleep-apnea-01",
                details={
                    "update_hash": sha256_hex(f"update-{i}".encode()),
                    "base_version": i,
                    "staleness": 1,
                },
            )
            for i in range(start, start + count)
        ]

    return append
