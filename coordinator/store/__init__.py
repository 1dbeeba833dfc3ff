"""Persistence of the live coordinator: tables, blobs, engine snapshots.

* :mod:`fedward.coordinator.store.models`      SQLAlchemy tables
* :mod:`fedward.coordinator.store.db`          engines for SQLite / PostgreSQL
* :mod:`fedward.coordinator.store.repository`  reads and one-transaction writes
* :mod:`fedward.coordinator.store.blobs`       content-addressed blob files
* :mod:`fedward.coordinator.store.snapshot`    engine state <-> JSON (restart)
"""

from .blobs import BlobCorrupted, BlobError, BlobNotFound, BlobStore, sha256_of
from .db import create_db_engine, is_sqlite
from .models import Base, StudyState, TaskStatus
from .repository import Repository, StudyChanges
from .snapshot import engine_snapshot, restore_engine

__all__ = [
    "Base",
    "BlobCorrupted",
    "BlobError",
    "BlobNotFound",
    "BlobStore",
    "Repository",
    "StudyChanges",
    "StudyState",
    "TaskStatus",
    "create_db_engine",
    "engine_snapshot",
    "is_sqlite",
    "restore_engine",
    "sha256_of",
]
