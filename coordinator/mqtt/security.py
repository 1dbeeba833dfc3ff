"""The coordinator's side of trust on the wire: its key, its counter, what it has seen.

:class:`WireSecurity` is what a :class:`~fedward.coordinator.mqtt.bridge.StudyBridge`
needs to sign every downlink message and to refuse uplink ones that are
unsigned, forged, replayed or out of order (:mod:`fedward.protocol.signing`):

* the coordinator's Ed25519 wire key (devices pin its public half at enrolment);
* its downlink counter (:class:`~fedward.protocol.signing.CounterFile`: never repeats,
  even after a crash);
* the highest counter accepted from each device (:class:`~fedward.protocol.signing.ReplayGuard`),
  saved on a timer and at stop so a restart does not reopen the replay window
  (messages between the last save and a crash may be replayed once; the
  service's receipts still refuse a second merge of an update);
* rate limits on enrolment attempts (per device id and in total) and on the
  audit entries of refused messages (a flood of junk becomes one summary
  entry per second with its count, not one entry per message).

One instance serves every study of a coordinator (one key, one counter).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.compliance import load_or_create_signing_key
from fedward.compliance.keys import public_key_raw
from fedward.coordinator.settings import CoordinatorSettings
from fedward.protocol.signing import (
    CounterFile,
    MemoryCounter,
    ReplayGuard,
    Role,
    SealContext,
    seal,
)

Clock = Callable[[], float]


@dataclass
class TokenBucket:
    """``rate`` events per second on average, ``burst`` at once."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimits:
    """Enrolment attempts: per claimed device id and for the whole coordinator."""

    def __init__(
        self,
        *,
        per_device_rate: float = 0.2,
        per_device_burst: float = 3,
        total_rate: float = 20.0,
        total_burst: float = 100,
        max_tracked: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self._per_device = (per_device_rate, per_device_burst)
        self._total = TokenBucket(total_rate, total_burst)
        self._buckets: dict[str, TokenBucket] = {}
        self._max_tracked = max_tracked
        self._clock = clock
        self._lock = threading.Lock()

    def allow_enrol(self, device_id: str) -> bool:
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(device_id)
            if bucket is None:
                if len(self._buckets) >= self._max_tracked:
                    self._buckets.clear()  # bounded memory; the total bucket still holds
                bucket = self._buckets[device_id] = TokenBucket(*self._per_device)
            return bucket.take(now) and self._total.take(now)


class AuditThrottle:
    """At most ``burst`` audit entries at once per reason, then one per ``every_s``.

    ``admit`` returns how many refusals the entry to write now stands for (0: write
    none, the refusal is counted for the next one).
    """

    def __init__(self, *, burst: int = 20, every_s: float = 1.0, clock: Clock = time.monotonic):
        self.burst = burst
        self.every_s = every_s
        self._clock = clock
        self._state: dict[str, tuple[int, float, int]] = {}  # reason -> (free, last, pending)
        self._lock = threading.Lock()

    def admit(self, reason: str) -> int:
        with self._lock:
            now = self._clock()
            free, last, pending = self._state.get(reason, (self.burst, now, 0))
            if now - last >= self.every_s:
                free = self.burst
            if free > 0:
                self._state[reason] = (free - 1, now, 0)
                return pending + 1
            self._state[reason] = (free, last, pending + 1)
            return 0


class WireSecurity:
    """Signing key, counters, replay state and rate limits of one coordinator."""

    def __init__(
        self,
        *,
        signing_key: Ed25519PrivateKey,
        counter: CounterFile | MemoryCounter,
        replay: ReplayGuard | None = None,
        replay_path: Path | None = None,
        limits: RateLimits | None = None,
        throttle: AuditThrottle | None = None,
    ) -> None:
        self.signing_key = signing_key
        self.public_key = public_key_raw(signing_key)
        self.counter = counter
        self.replay = replay if replay is not None else ReplayGuard()
        self.replay_path = replay_path
        self.limits = limits if limits is not None else RateLimits()
        self.throttle = throttle if throttle is not None else AuditThrottle()
        self._save_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: CoordinatorSettings) -> WireSecurity:
        """The coordinator's wire identity under its data dir (created on first use)."""
        settings.wire_key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = load_or_create_signing_key(settings.wire_key_path)
        state = settings.wire_state_dir
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        replay_path = state / "replay.json"
        return cls(
            signing_key=key,
            counter=CounterFile(state / "downlink-counter"),
            replay=ReplayGuard(_load_replay(replay_path)),
            replay_path=replay_path,
        )

    @classmethod
    def ephemeral(cls) -> WireSecurity:
        """A fresh key and in-memory counters (tests, in-process studies)."""
        return cls(signing_key=Ed25519PrivateKey.generate(), counter=MemoryCounter())

    def seal(self, frame: bytes, *, study_id: str, device_id: str = "") -> bytes:
        """Sign a downlink frame for ``device_id``'s topic ("" for a model broadcast)."""
        context = SealContext(Role.COORDINATOR, study_id, device_id)
        return seal(frame, key=self.signing_key, context=context, counter=self.counter.next())

    def save(self) -> None:
        """Persist the replay state (atomic replace; called on a timer and at stop)."""
        if self.replay_path is None:
            return
        with self._save_lock:
            tmp = self.replay_path.with_name(self.replay_path.name + ".tmp")
            data = json.dumps(self.replay.snapshot(), sort_keys=True).encode()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.replay_path)


def _load_replay(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # unreadable: start empty (receipts still refuse a second merge)
    if not isinstance(data, dict):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int) and v > 0}


__all__ = ["AuditThrottle", "RateLimits", "TokenBucket", "WireSecurity"]
