"""Cache files written whole or not at all, by any number of processes at once.

Why a unique temporary name: the data, warm-start and own-start caches are
shared by every worker and every concurrent ``fedward bench`` on the machine;
with one fixed ``<name>.tmp.npz`` two processes generating the same entry
renamed each other's file away and one crashed with ``FileNotFoundError``.
Each writer now writes its own temporary file in the cache's folder and
renames it over the entry (atomic on one file system), so the last complete
write wins and a reader never sees a partial file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_npz"]


def write_npz(path: Path, **arrays: Any) -> None:
    """``np.savez(path, **arrays)`` through a temporary file of this process's own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, allow_pickle=False, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
