"""Task deadlines sized from how long tasks really take.

Why: a fixed default (an hour) leaves a lost task's slot empty for that long,
whatever the device class; a wearable that takes 40 s per task is overdue long
before. So once a study has seen ``MIN_OBSERVED`` tasks of a device class
complete, a new task's deadline is ``DEADLINE_FACTOR`` x the median duration
(dispatch to accepted update) of the last ``WINDOW`` of them, at least
``MIN_DEADLINE_S`` and at most the spec's ``task_deadline_s`` (the ceiling, and
the deadline until enough tasks were seen). A task keeps the deadline it was
dispatched with. Observations live in memory: after a restart deadlines start
from the ceiling again, which errs on the side of waiting.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque

WINDOW = 50
MIN_OBSERVED = 5
DEADLINE_FACTOR = 4.0
MIN_DEADLINE_S = 30.0


class TaskTimes:
    """Observed task durations per (study, device class), and each task's deadline."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self._fixed: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def observe(self, study_id: str, device_class: str, seconds: float) -> None:
        if seconds < 0:
            return
        with self._lock:
            self._seen.setdefault((study_id, device_class), deque(maxlen=WINDOW)).append(seconds)

    def expected(self, study_id: str, device_class: str) -> float | None:
        """Median duration of the class's recent tasks, or None before ``MIN_OBSERVED``."""
        with self._lock:
            seen = self._seen.get((study_id, device_class))
            if seen is None or len(seen) < MIN_OBSERVED:
                return None
            return statistics.median(seen)

    def deadline(self, study_id: str, device_class: str, *, ceiling: float) -> float:
        expected = self.expected(study_id, device_class)
        if expected is None:
            return ceiling
        return min(ceiling, max(MIN_DEADLINE_S, DEADLINE_FACTOR * expected))

    def fix(self, study_id: str, task_id: str, deadline: float) -> float:
        """Remember the deadline a task was dispatched with (the first one sticks)."""
        with self._lock:
            return self._fixed.setdefault((study_id, task_id), deadline)

    def of(self, study_id: str, task_id: str, *, default: float) -> float:
        with self._lock:
            return self._fixed.get((study_id, task_id), default)

    def forget(self, study_id: str, task_id: str) -> None:
        with self._lock:
            self._fixed.pop((study_id, task_id), None)
