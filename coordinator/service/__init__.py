"""The live coordinator's one façade: studies, devices, tasks, updates, models.

The REST API and the MQTT bridge both call :class:`StudyService`; neither
touches the engine, the database or the audit log directly. Why one façade:
every decision (enrol, dispatch, accept, reject, merge, lifecycle) must be made
under one lock, persisted in one transaction and audited once, whichever
transport it came through.

How a call works: under the service lock, the study's :class:`Engine` makes the
decision; an engine listener stages its audit record, writes new model blobs
and collects the rows to write; then one transaction stores the rows, the
receipts, the counters, an engine snapshot and the audit records (an outbox),
which reach the log only after that commit, so the log never records a
decision the database lost. If anything fails, the study is reloaded from
the database, so memory never runs ahead of what a restart would see.

Time comes from the injected ``clock`` (POSIX seconds), never from the system
directly, so tests and replays control it.

The calls live in small modules, one concern each, all extending
:class:`~fedward.coordinator.service.core.ServiceCore` (the shared state, the lock and
the per-call transaction):

* ``studies``    create, list, status, evaluations
* ``lifecycle``  start, pause, resume, stop
* ``devices``    enrol, revoke, heartbeat, listings
* ``tasks``      dispatch, tasks in flight, deadlines
* ``updates``    update frames: decode, dedupe, judge, persist
* ``refusals``   what the transport reports besides updates: dropped messages,
                 tasks a device declines (its own privacy budget is spent)
* ``queries``    model versions and blobs, privacy budget reports
* ``views``      the frozen objects callers get back; ``errors`` what they may catch
"""

from .core import STUDY_ID_PATTERN, UNKNOWN_TASK_ID, Clock
from .errors import (
    DeviceNotFound,
    InvalidHoldout,
    InvalidInitialModel,
    InvalidStudyId,
    InvalidTransition,
    ModelVersionNotFound,
    NoPrivacyPolicy,
    ServiceError,
    StudyExists,
    StudyNotFound,
    StudyRestoreFailed,
    UnsupportedRefusal,
)
from .facade import StudyService
from .views import DeviceInfo, ModelVersionInfo, OutboundTask, StudyInfo, StudyStatus

__all__ = [
    "STUDY_ID_PATTERN",
    "UNKNOWN_TASK_ID",
    "Clock",
    "DeviceInfo",
    "DeviceNotFound",
    "InvalidHoldout",
    "InvalidInitialModel",
    "InvalidStudyId",
    "InvalidTransition",
    "ModelVersionInfo",
    "ModelVersionNotFound",
    "NoPrivacyPolicy",
    "OutboundTask",
    "ServiceError",
    "StudyExists",
    "StudyInfo",
    "StudyNotFound",
    "StudyRestoreFailed",
    "StudyService",
    "StudyStatus",
    "UnsupportedRefusal",
]
