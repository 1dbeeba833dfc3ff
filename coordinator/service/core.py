"""The service's shared state and the one way a call changes a study.

Every call module (studies, lifecycle, devices, tasks, updates, refusals,
queries) extends :class:`ServiceCore`, which owns what they share: the
studies' runtimes, the lock, the audit trail, the clock, and
:meth:`ServiceCore._change`, the transaction every decision goes through
(committed at the end of the call, or the study reloaded from the database).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedward.compliance import AuditLog, SignedTreeHead, load_or_create_signing_key
from fedward.coordinator.audit import AuditRecord
from fedward.coordinator.errors import CoordinatorError
from fedward.coordinator.migrations import upgrade_to_head
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.store import BlobStore, Repository, StudyChanges, create_db_engine
from fedward.coordinator.store.audit_trail import AuditTrail
from fedward.coordinator.store.models import StudyRow
from fedward.coordinator.store.recorder import EventRecorder
from fedward.coordinator.store.runtime import RuntimeStore, StudyRuntime
from fedward.coordinator.study_spec import StudySpec
from fedward.tinytrain.models import Params

from .errors import StudyNotFound
from .views import StudyInfo, study_info

log = logging.getLogger(__name__)

UNKNOWN_TASK_ID = "unknown"
STUDY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Clock = Callable[[], float]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ServiceCore:
    """State shared by every call of :class:`fedward.coordinator.service.StudyService`."""

    def __init__(
        self,
        *,
        repository: Repository,
        blobs: BlobStore,
        pending: BlobStore,
        audit: AuditLog,
        clock: Clock,
        max_message_bytes: int,
        seed: int | None = None,
    ) -> None:
        self._repo = repository
        self._trail = AuditTrail(audit)
        self._runtimes = RuntimeStore(
            repository=repository, blobs=blobs, pending=pending, clock=clock
        )
        self._recorder = EventRecorder(trail=self._trail, runtimes=self._runtimes)
        self._clock = clock
        self._max_bytes = max_message_bytes
        self._seed = seed
        self._lock = threading.RLock()
        self._closed = False
        self._studies: dict[str, StudyRuntime] = {}
        self._reserved: set[str] = set()  # ids of studies being created
        for row in self._repo.studies():
            self._studies[row.id] = self._runtimes.load(
                row, on_event=self._recorder.on_event, on_guard_event=self._recorder.on_guard_event
            )

    @classmethod
    def open(
        cls,
        settings: CoordinatorSettings,
        *,
        clock: Clock = time.time,
        seed: int | None = None,
        migrate: bool = True,
    ) -> Self:
        """Build the service from settings: migrate the database, open blobs and audit log."""
        db = create_db_engine(settings.database_url)
        try:
            if migrate:
                upgrade_to_head(db)
            settings.signing_key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            settings.audit_log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            password = settings.audit_key_password
            key = load_or_create_signing_key(
                settings.signing_key_path,
                password=password.get_secret_value().encode() if password else None,
            )
            audit = AuditLog.open(settings.audit_log_path, signing_key=key, clock=clock)
        except BaseException:
            db.dispose()
            raise
        try:
            return cls(
                repository=Repository(db),
                blobs=BlobStore(settings.blob_dir),
                pending=BlobStore(settings.pending_dir),
                audit=audit,
                clock=clock,
                max_message_bytes=settings.max_message_bytes,
                seed=seed,
            )
        except BaseException:
            audit.close()
            db.dispose()
            raise

    def close(self) -> None:
        """Sign the audit log's tail and release the database (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._trail.close()
            finally:
                self._repo.close()

    @property
    def audit_public_key(self) -> Ed25519PublicKey:
        return self._trail.public_key

    @property
    def repository(self) -> Repository:
        return self._repo

    # -- helpers of every call ---------------------------------------------------
    def _require(self, study_id: str) -> StudyRuntime:
        study = self._studies.get(study_id)
        if study is None:
            raise StudyNotFound(f"no study {study_id!r}")
        return study

    def _info(self, study: StudyRuntime) -> StudyInfo:
        return study_info(study)

    def _new_runtime(
        self, row: StudyRow, spec: StudySpec, *, params: Params | None = None
    ) -> StudyRuntime:
        return self._runtimes.build(
            row,
            spec,
            on_event=self._recorder.on_event,
            on_guard_event=self._recorder.on_guard_event,
            params=params,
        )

    def _reload(self, study_id: str) -> None:
        """Replace a study's runtime by what the database holds (after a failed call)."""
        row = self._repo.study(study_id)
        if row is None:
            self._studies.pop(study_id, None)
            return
        self._studies[study_id] = self._runtimes.load(
            row, on_event=self._recorder.on_event, on_guard_event=self._recorder.on_guard_event
        )

    @contextmanager
    def _change(self, study: StudyRuntime, *, new: bool = False) -> Iterator[StudyChanges]:
        """One service call's changes to a study: committed at the end, or rolled back."""
        if self._closed:
            raise CoordinatorError("the study service is closed")
        changes = StudyChanges(study_id=study.id, at=self._clock())
        study.changes = changes
        try:
            yield changes
            self._runtimes.commit(study, changes)
        except BaseException:
            study.changes = None
            if not new:
                try:
                    self._reload(study.id)
                except Exception:
                    log.exception("could not reload study %s after a failed change", study.id)
            raise
        finally:
            study.changes = None

    def _audit(self, entry: AuditRecord, *, study_id: str | None) -> None:
        """Append an entry formatted by ``fedward.coordinator.audit`` (the one place)."""
        self._trail.write(entry, study_id=study_id)

    def record_audit(self, entry: AuditRecord, *, study_id: str | None = None) -> None:
        """Append an entry the API decided (failed logins, downloads, tokens)."""
        with self._lock:
            if self._closed:
                raise CoordinatorError("the study service is closed")
            self._audit(entry, study_id=study_id)

    def sign_audit_head(self) -> SignedTreeHead:
        """Sign a tree head over the audit log now (an auditor asks for a fresh one)."""
        with self._lock:
            if self._closed:
                raise CoordinatorError("the study service is closed")
            return self._trail.sign_tree_head()
