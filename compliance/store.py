"""Where audit records live: a small append-only storage seam.

Why records are raw bytes: tamper evidence is about the bytes on disk.  The
store hands back exactly what was written (each record is one canonical JSON
line *including* its ``\\n``), and the verifier decides what it means.  A
record without its trailing newline is how a torn or truncated write shows.

Two implementations:

* :class:`JsonlAuditStore` -- two append-only files: ``<path>`` with one entry
  per line and ``<path>.sth`` with one signed tree head per line.  Files are
  created ``0600``; writes use ``O_APPEND``; ``fsync=True`` makes every record
  durable before ``append`` returns.  One writer at a time, enforced with an
  exclusive ``flock`` (a second writer would fork the hash chain).
* :class:`MemoryAuditStore` -- lists in memory, for tests and simulation.

A crash (``kill -9``, power loss) in the middle of a write can leave a last
record without its newline.  The writer of a JSONL log can cut such a torn
tail off (:meth:`JsonlAuditStore.cut_torn_tails`): the fragment is first
copied to ``<file>.torn-<n>`` (evidence is moved aside, never destroyed),
then the file is truncated to its last whole record.  ``AuditLog.open``
decides when that is safe and audits it.

A read-only store may run beside a live writer.  It reads the tree heads
*before* the entries (a head is written after the entries it covers, so every
head read is covered by the entries read after it), and a last line caught
half-written is read again a few times before it is reported as torn.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from fedward.compliance.errors import AuditStoreBusy, ComplianceError

__all__ = ["AuditStore", "JsonlAuditStore", "MemoryAuditStore", "TornTail", "tree_head_path"]

_TORN_REREADS = 5
"""How often a read-only store rereads a file whose last line is incomplete."""
_TORN_REREAD_WAIT_S = 0.05
"""Pause between those rereads: a live writer finishes one line in microseconds."""


@runtime_checkable
class AuditStore(Protocol):
    """Append-only storage of entry records and tree-head records.

    A record is one line of canonical JSON terminated by ``b"\\n"``.  Readers
    return records in append order, byte for byte; a final record lacking its
    newline is returned as-is so that the verifier can report it.
    """

    def read_entry_records(self) -> list[bytes]: ...

    def read_tree_head_records(self) -> list[bytes]: ...

    def append_entry_record(self, record: bytes) -> None: ...

    def append_tree_head_record(self, record: bytes) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


def _check_record(record: bytes) -> bytes:
    if not record.endswith(b"\n") or b"\n" in record[:-1]:
        raise ComplianceError("an audit record is exactly one line ending in a newline")
    return bytes(record)


class MemoryAuditStore:
    """Records kept in two lists.  The lists are public so tests can tamper
    with them the way an attacker would tamper with files."""

    def __init__(self) -> None:
        self.entry_records: list[bytes] = []
        self.tree_head_records: list[bytes] = []

    def read_entry_records(self) -> list[bytes]:
        return list(self.entry_records)

    def read_tree_head_records(self) -> list[bytes]:
        return list(self.tree_head_records)

    def append_entry_record(self, record: bytes) -> None:
        self.entry_records.append(_check_record(record))

    def append_tree_head_record(self, record: bytes) -> None:
        self.tree_head_records.append(_check_record(record))

    def sync(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class TornTail:
    """A torn last record cut off a log file: which file, how many bytes, their
    SHA-256, and where the fragment was kept."""

    file: Path
    removed_bytes: int
    removed_sha256: str
    kept_at: Path


def tree_head_path(path: Path) -> Path:
    """The tree-head file that belongs to entry file ``path``: ``<path>.sth``."""
    return path.with_name(path.name + ".sth")


def _split_records(data: bytes) -> list[bytes]:
    records = data.split(b"\n")
    tail = records.pop()  # b"" if the data ended with a newline, else a torn record
    out = [r + b"\n" for r in records]
    if tail:
        out.append(tail)
    return out


class JsonlAuditStore:
    """Entries in ``path`` (JSON lines), tree heads in ``path.sth``.

    ``read_only=True`` opens nothing for writing and takes no lock: that is
    how ``verify_log`` reads a log another process may still be writing.
    Otherwise both files are created if missing (the parent directory must
    exist) and an exclusive lock is held on the entry file until :meth:`close`.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fsync: bool = False, read_only: bool = False
    ) -> None:
        self.path = Path(path)
        self.sth_path = tree_head_path(self.path)
        self.fsync = fsync
        self.read_only = read_only
        self._entry_fd: int | None = None
        self._sth_fd: int | None = None
        if read_only:
            return
        created = not self.path.exists()
        self._entry_fd = self._open_append(self.path)
        try:
            fcntl.flock(self._entry_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._entry_fd)
            self._entry_fd = None
            raise AuditStoreBusy(f"{self.path} is already open for writing") from None
        self._sth_fd = self._open_append(self.sth_path)
        if created and fsync:
            self._fsync_dir()

    @staticmethod
    def _open_append(path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _fsync_dir(self) -> None:
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _read(self, path: Path) -> list[bytes]:
        for attempt in range(_TORN_REREADS if self.read_only else 1):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return []
            if not data or data.endswith(b"\n"):
                break
            if attempt + 1 < _TORN_REREADS and self.read_only:
                time.sleep(_TORN_REREAD_WAIT_S)  # a live writer may be mid-line: look again
        return _split_records(data)

    def read_entry_records(self) -> list[bytes]:
        return self._read(self.path)

    def read_tree_head_records(self) -> list[bytes]:
        return self._read(self.sth_path)

    def _write(self, fd: int | None, record: bytes) -> None:
        if fd is None:
            raise ComplianceError(f"{self.path} is open read-only or closed")
        view = memoryview(_check_record(record))
        while view:  # os.write may write less than asked
            written = os.write(fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(fd)

    def append_entry_record(self, record: bytes) -> None:
        self._write(self._entry_fd, record)

    def append_tree_head_record(self, record: bytes) -> None:
        self._write(self._sth_fd, record)

    def sync(self) -> None:
        """Make every record written so far durable (``fsync`` both files)."""
        for fd in (self._entry_fd, self._sth_fd):
            if fd is not None:
                os.fsync(fd)

    def torn_tails(self) -> list[Path]:
        """The files (entries, tree heads) whose last record has no newline."""
        torn = []
        for path in (self.path, self.sth_path):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size:
                with path.open("rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        torn.append(path)
        return torn

    def cut_torn_tails(self) -> list[TornTail]:
        """Cut every torn last record off, keeping each fragment aside first.

        Only the writer may do this (it holds the lock, so no other process is
        mid-write); the caller checks that the rest of the log verifies.
        """
        if self.read_only or self._entry_fd is None:
            raise ComplianceError(f"{self.path} is open read-only or closed")
        cuts = []
        for path in self.torn_tails():
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            fragment = data[keep:]
            kept_at = self._free_torn_path(path)
            fd = os.open(kept_at, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, fragment)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.truncate(path, keep)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            cuts.append(
                TornTail(
                    file=path,
                    removed_bytes=len(fragment),
                    removed_sha256=hashlib.sha256(fragment).hexdigest(),
                    kept_at=kept_at,
                )
            )
        if cuts:
            self._fsync_dir()
        return cuts

    @staticmethod
    def _free_torn_path(path: Path) -> Path:
        n = 1
        while (candidate := path.with_name(f"{path.name}.torn-{n}")).exists():
            n += 1
        return candidate

    def close(self) -> None:
        """Release the files and the writer lock.  Safe to call twice."""
        for attr in ("_sth_fd", "_entry_fd"):  # closing the entry fd drops the flock
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)
