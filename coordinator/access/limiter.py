"""Failed authentication: counted per source and interval, audited in aggregate, rate-limited.

Why aggregate: a brute-force run is thousands of requests a second; one audit
entry each would flood the log an auditor must read (and fill the disk).
Per source (the client address) and fixed interval, the log gets at most
three entries: the first failure, the moment the source is locked out, and a
summary with the count when the interval is over. Why lock the source rather
than the token: a source that guesses must stop being able to test guesses,
valid or not; every request from a locked source is answered 429 with
``Retry-After`` until its lock ends, without looking at the token.

The table of sources is bounded (``max_sources``); when it is full, new
sources share one bucket (``"*"``), so an attacker rotating addresses cannot
make it grow, and is still limited as a whole.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

OVERFLOW_SOURCE = "*"


class FailureNote(enum.StrEnum):
    """Why an audit entry of failed authentication is written now."""

    FIRST = "first_failure"
    LOCKED = "source_locked"
    SUMMARY = "interval_summary"


@dataclass(frozen=True, kw_only=True)
class FailureReport:
    """One audit entry to write: ``failures`` in the interval that began at ``since``."""

    source: str
    note: FailureNote
    failures: int
    since: float
    claimed_token_id: str | None = None


@dataclass
class _Bucket:
    since: float
    failures: int = 0
    locked_until: float = 0.0
    lock_reported: bool = False


class AuthFailureLimiter:
    def __init__(
        self,
        *,
        max_failures: int,
        interval_s: float,
        lockout_s: float,
        max_sources: int = 10_000,
    ) -> None:
        if max_failures < 1 or interval_s <= 0 or lockout_s <= 0 or max_sources < 1:
            raise ValueError("limits must be positive")
        self._max = max_failures
        self._interval = interval_s
        self._lockout = lockout_s
        self._max_sources = max_sources
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._last_sweep = float("-inf")

    def _key(self, source: str) -> str:
        if source in self._buckets or len(self._buckets) < self._max_sources:
            return source
        return OVERFLOW_SOURCE

    def retry_after(self, source: str, *, now: float) -> float | None:
        """Seconds until ``source`` may try again, or None if it is not locked."""
        with self._lock:
            bucket = self._buckets.get(self._key(source))
            if bucket is None or now >= bucket.locked_until:
                return None
            bucket.failures += 1  # a locked-out attempt is still an attempt
            return bucket.locked_until - now

    def failure(
        self, source: str, *, now: float, claimed_token_id: str | None = None
    ) -> list[FailureReport]:
        """Count one failure; return the audit entries due (closed intervals first)."""
        with self._lock:
            reports = self._close_intervals(now)
            key = self._key(source)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(since=now)
            bucket.failures += 1
            if bucket.failures == 1:
                reports.append(
                    FailureReport(
                        source=key,
                        note=FailureNote.FIRST,
                        failures=1,
                        since=bucket.since,
                        claimed_token_id=claimed_token_id,
                    )
                )
            if bucket.failures >= self._max and not bucket.lock_reported:
                bucket.locked_until = now + self._lockout
                bucket.lock_reported = True
                reports.append(
                    FailureReport(
                        source=key,
                        note=FailureNote.LOCKED,
                        failures=bucket.failures,
                        since=bucket.since,
                        claimed_token_id=claimed_token_id,
                    )
                )
            return reports

    def sweep(self, *, now: float) -> list[FailureReport]:
        """Summaries of intervals that are over, at most once an interval (cheap to call
        on every request, so a summary is written soon after its interval ends)."""
        with self._lock:
            if now - self._last_sweep < self._interval:
                return []
            self._last_sweep = now
            return self._close_intervals(now)

    def flush(self, *, now: float, everything: bool = False) -> list[FailureReport]:
        """Summaries of intervals that are over (all of them with ``everything``)."""
        with self._lock:
            return self._close_intervals(float("inf") if everything else now)

    def _close_intervals(self, now: float) -> list[FailureReport]:
        reports: list[FailureReport] = []
        for key, bucket in list(self._buckets.items()):
            if now < bucket.since + self._interval or now < bucket.locked_until:
                continue
            del self._buckets[key]
            if bucket.failures > 1:
                reports.append(
                    FailureReport(
                        source=key,
                        note=FailureNote.SUMMARY,
                        failures=bucket.failures,
                        since=bucket.since,
                    )
                )
        return reports
