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
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedward.compliance import AuditLog, SignedTreeHead, load_or_create_signing_key
from fedward.coordinator.audit import AuditRecord, study_restore_failed
from fedward.coordinator.errors import CoordinatorError
from fedward.coordinator.migrations import upgrade_to_head
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.store import BlobStore, Repository, StudyChanges, create_db_engine
from fedward.coordinator.store.audit_trail import AuditTrail
from fedward.coordinator.store.models import StudyRow
from fedward.coordinator.store.recorder import EventRecorder
from fedward.coordinator.store.runtime import RuntimeStore, StudyRuntime
from fedward.coordinator.study_spec import StudySpec
from fedward.errors import FedwardError
from fedward.protocol.enrolment import load_or_create_master_key
from fedward.tinytrain.models import Params

from .deadlines import TaskTimes
from .errors import StudyNotFound, StudyRestoreFailed
from .holdout import Holdout
from .views import StudyInfo, study_info

if TYPE_CHECKING:
    from .secagg import SecAggCounters

log = logging.getLogger(__name__)

UNKNOWN_TASK_ID = "unknown"
STUDY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Clock = Callable[[], float]
# What a study's own saved state can raise on restore (a blob, a spec, a snapshot);
# anything else (the database is down) still stops the coordinator.
_RESTORE_ERRORS = (FedwardError, ValueError, LookupError, TypeError, OSError)


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
        enrolment_key: bytes | None = None,
        sign_interval_s: float = 0.0,
    ) -> None:
        self._enrolment_key = enrolment_key  # None: enrolment secrets are not available
        self._wire_refusals: dict[str, Counter[str]] = {}  # per study, since start (/metrics)
        # secure aggregation, per study, since start (/metrics; see .secagg)
        self._secagg_counters: dict[str, SecAggCounters] = {}
        self._secagg_watched: weakref.WeakSet[Any] = weakref.WeakSet()
        self._secagg_evidence: dict[str, Any] = {}  # study -> EnrolmentEvidence
        self._task_times = TaskTimes()  # deadlines sized from observed task durations
        self._repo = repository
        self._trail = AuditTrail(audit)
        self._runtimes = RuntimeStore(
            repository=repository, blobs=blobs, pending=pending, clock=clock
        )
        self._recorder = EventRecorder(trail=self._trail, runtimes=self._runtimes)
        self._clock = clock
        self._max_bytes = max_message_bytes
        self._seed = seed
        self._holdouts: dict[str, Holdout] = {}  # study id -> held-out set (not persisted)
        self._lock = threading.RLock()
        self._closed = False
        self._studies: dict[str, StudyRuntime] = {}
        self._reserved: set[str] = set()  # ids of studies being created
        self._failed: dict[str, str] = {}  # studies that could not be restored: why
        # Committed records a crash kept from the log go in first (see store.audit_trail).
        self._trail.recover(self._repo)
        for row in self._repo.studies():
            self._restore(row)
        self._stop_timer = threading.Event()
        self._timer: threading.Thread | None = None
        if sign_interval_s > 0:
            self._timer = threading.Thread(
                target=self._sign_periodically,
                args=(sign_interval_s,),
                name="fedward-audit-heads",
                daemon=True,
            )
            self._timer.start()

    def _restore(self, row: StudyRow) -> None:
        """Rebuild one study; one that cannot be rebuilt is set aside, not fatal.

        Why: a missing or corrupted blob, or a spec saved under an old format,
        concerns that study only. It is marked failed (not served: calls on it
        raise :class:`StudyRestoreFailed`), audited as STUDY_RESTORE_FAILED with
        the reason, and its rows and blobs are left untouched, so a later start
        retries it once the cause is fixed. The other studies keep serving.
        """
        try:
            self._studies[row.id] = self._runtimes.load(
                row, on_event=self._recorder.on_event, on_guard_event=self._recorder.on_guard_event
            )
        except _RESTORE_ERRORS as exc:
            log.exception("study %s could not be restored; it is not served", row.id)
            reason = f"{type(exc).__name__}: {exc}"
            self._failed[row.id] = reason
            entry = study_restore_failed(error=type(exc).__name__, detail=str(exc))
            self._trail.write(entry, study_id=row.id)

    def failed_studies(self) -> dict[str, str]:
        """Studies that could not be restored at start, and why (they are not served)."""
        with self._lock:
            return dict(self._failed)

    @property
    def latest_tree_head(self) -> SignedTreeHead | None:
        """The audit log's newest signed tree head (an auditor keeps it to detect a
        later truncation: ``fedward.compliance.verify_log(..., trusted_head=)``)."""
        return self._trail.latest_tree_head

    def _sign_periodically(self, interval_s: float) -> None:
        # Why a timer: entries after the newest signed head can be rewritten
        # undetected; signing every interval bounds that window in time, not
        # only in entries (the log also signs every DEFAULT_STH_INTERVAL entries).
        while not self._stop_timer.wait(interval_s):
            try:
                self._trail.checkpoint()
            except Exception:  # a broken log: calls will fail loudly; keep the thread quiet
                log.exception("could not sign a periodic audit tree head")

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
            # A torn last line (a crash mid-write) is cut off and the repair audited.
            audit = AuditLog.open(
                settings.audit_log_path, signing_key=key, clock=clock, repair_torn_tail=True
            )
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
                enrolment_key=load_or_create_master_key(settings.enrolment_key_path),
                sign_interval_s=settings.audit_sign_interval_s,
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
            self._stop_timer.set()
            if self._timer is not None:
                self._timer.join()
            try:
                self._trail.finish(self._repo)  # fsync, final signed head, outbox emptied
            finally:
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
            if study_id in self._failed:
                raise StudyRestoreFailed(
                    f"study {study_id!r} could not be restored at start and is not served: "
                    f"{self._failed[study_id]}"
                )
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
        """One service call's changes to a study: committed at the end, or rolled back.

        The call's audit records are committed with it (outbox rows) and appended
        to the log only once the commit succeeded; a rolled-back call leaves no
        entry (see :mod:`fedward.coordinator.store.audit_trail`).
        """
        if self._closed:
            raise CoordinatorError("the study service is closed")
        changes = StudyChanges(
            study_id=study.id, at=self._clock(), audit_done_upto=self._trail.deletable()
        )
        study.changes = changes
        try:
            yield changes
            ids = self._runtimes.commit(study, changes)
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
        self._trail.publish(
            changes.audit, ids, deleted_upto=changes.audit_done_upto if ids is not None else 0
        )

    def _audit(self, entry: AuditRecord, *, study_id: str | None) -> None:
        """Record an entry formatted by ``fedward.coordinator.audit`` (the one place):
        staged with the open change of its study (committed with it), else appended."""
        study = self._studies.get(study_id) if study_id is not None else None
        if study is not None and study.changes is not None:
            study.changes.audit.append(self._trail.stage(entry, study_id=study_id))
        else:
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
