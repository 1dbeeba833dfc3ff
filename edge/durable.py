"""Files on the device that are either whole on disk or not there: one way to write them.

The outbox (an update frame), the SecAgg store (its journal, each session's
state) and the peer-evidence memory (the largest audit head seen) all promise
"on disk before anything is sent": a crash or kill -9 at any point leaves the
old file or the new one, never a torn one, and a rename that a power loss
could undo is made durable too. So each write goes to a temporary file
created 0600 (secrets and shares live in some of them), is fsynced, renamed
over the target, and the folder is fsynced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["TMP_SUFFIX", "fsync_dir", "replace_durably", "write_all"]

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace_durably(
    path: Path, content: bytes | Callable[[BinaryIO], None], *, buffering: int = -1
) -> None:
    """Replace ``path`` with ``content`` (bytes, or a function writing to the open file)
    atomically and durably; returns once the new file and its name are on disk."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb", buffering=buffering) as handle:
        if isinstance(content, bytes | bytearray | memoryview):
            handle.write(content)
        else:
            content(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
