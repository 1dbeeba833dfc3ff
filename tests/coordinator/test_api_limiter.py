"""The failed-login limiter on its own: per-source buckets, lockout, summaries, a
bounded table (an attacker rotating addresses shares one bucket)."""

from __future__ import annotations

from fedward.coordinator.access import AuthFailureLimiter, FailureNote
from fedward.coordinator.access.limiter import OVERFLOW_SOURCE


def test_sources_are_counted_apart_and_summaries_come_after_the_interval() -> None:
    # Prepare
    limiter = AuthFailureLimiter(max_failures=3, interval_s=60, lockout_s=120)
    # Execute
    first = [limiter.failure("a", now=0.0) for _ in range(3)]
    other = limiter.failure("b", now=1.0)
    locked = limiter.retry_after("a", now=10.0)
    free = limiter.retry_after("b", now=10.0)
    early = limiter.sweep(now=30.0)
    later = limiter.sweep(now=200.0)
    # Assert
    assert [r.note for rs in first for r in rs] == [FailureNote.FIRST, FailureNote.LOCKED]
    assert [r.source for r in other] == ["b"]
    assert locked == 110.0 and free is None
    assert early == []  # the lock and the interval are not over
    assert [(r.source, r.note, r.failures) for r in later] == [("a", FailureNote.SUMMARY, 4)]


def test_the_table_of_sources_is_bounded() -> None:
    # Prepare
    limiter = AuthFailureLimiter(max_failures=5, interval_s=60, lockout_s=60, max_sources=2)
    # Execute
    for i in range(10):
        limiter.failure(f"10.0.0.{i}", now=0.0)
    # Assert: sources 3..10 share one bucket, which is now locked as a whole
    assert limiter.retry_after("10.0.0.9", now=1.0) is not None
    assert limiter.retry_after("10.0.0.0", now=1.0) is None
    reports = limiter.flush(now=0.0, everything=True)
    assert {r.source for r in reports} == {OVERFLOW_SOURCE}
