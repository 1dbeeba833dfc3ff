"""The on-disk outbox: an update is durable before it is published.

Why: an update is hours of a wearable's battery and a patient's data. The
agent writes the encoded frame here (atomic write + fsync of file and
directory) *before* publishing, and deletes it only when the coordinator's
Ack for that task id arrives. Anything still here after a crash, a broker
restart or a network outage is published again; the coordinator de-duplicates
by task id, so a frame sent twice is merged once.

One file per task (``<task_id>.frame``): task ids use the protocol's id
alphabet (no ``/``), so they are safe file names, and a rename is the atomic
commit. Files are ``0600``: a frame is derived from health data.
"""

from __future__ import annotations

import threading
from pathlib import Path

from fedward.errors import EdgeError
from fedward.protocol.ids import is_valid_id

from .durable import TMP_SUFFIX, fsync_dir, replace_durably

SUFFIX = ".frame"


class OutboxError(EdgeError):
    """The outbox cannot store or read an entry."""


class Outbox:
    """Durable, per-task-id store of update frames awaiting an Ack."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for stale in directory.glob(f"*{TMP_SUFFIX}"):  # a crash mid-write: never committed
            stale.unlink(missing_ok=True)

    def _path(self, task_id: str) -> Path:
        if not is_valid_id(task_id):
            raise OutboxError(f"invalid task id {task_id!r}")
        return self.directory / f"{task_id}{SUFFIX}"

    def put(self, task_id: str, frame: bytes) -> None:
        """Store ``frame`` durably; returns only after it is on disk."""
        with self._lock:
            replace_durably(self._path(task_id), frame)

    def get(self, task_id: str) -> bytes | None:
        try:
            return self._path(task_id).read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, task_id: str) -> bool:
        """Forget an acknowledged entry; False if it was not there."""
        path = self._path(task_id)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            fsync_dir(self.directory)
            return True

    def pending(self) -> list[tuple[str, bytes]]:
        """Every unacknowledged entry, oldest first (by modification time)."""
        with self._lock:
            paths = sorted(self.directory.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime_ns)
        out = []
        for path in paths:
            try:
                out.append((path.name[: -len(SUFFIX)], path.read_bytes()))
            except FileNotFoundError:  # acknowledged meanwhile
                continue
        return out

    def task_ids(self) -> list[str]:
        """Task ids of every unacknowledged entry (no file contents read)."""
        return [p.name[: -len(SUFFIX)] for p in self.directory.glob(f"*{SUFFIX}")]

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob(f"*{SUFFIX}"))

    def __contains__(self, task_id: object) -> bool:
        return isinstance(task_id, str) and self._path(task_id).exists()
