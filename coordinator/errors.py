"""Errors raised by the coordinator.

Hierarchy (hangs from :class:`fedward.errors.FedwardError`; catch the narrowest
you can handle)::

    CoordinatorError                 base of everything the coordinator raises on purpose
    ├── UpdateRejected               an incoming update was refused; ``reason`` says why (counted, audited)
    ├── StrategyConfigError          a strategy was built with unsafe or inconsistent parameters
    ├── StateLoadError               saved state failed its checks on load (version, hash, shape);
    │   │                            also a fedward.errors.SavedStateError
    │   └── GuardStateError          a privacy guard's saved state (also a privacy PolicyError)
    ├── NotReadyError                ``aggregate`` was called before the strategy was ready
    ├── DoesNotFit                   engine.planning: not even the smallest tier fits a device
    ├── MigrationsMissing            migrations: no migration scripts (an incomplete install)
    ├── BlobError                    store.blobs: content-addressed model blobs
    │   ├── BlobNotFound             (also a KeyError)
    │   └── BlobCorrupted            the bytes no longer hash to their name
    ├── ServiceError                 service.errors: a caller's mistake (the API maps each to HTTP)
    │   └── StudyNotFound, DeviceNotFound, ModelVersionNotFound, NoPrivacyPolicy (also
    │       KeyErrors); InvalidStudyId, UnsupportedRefusal, InvalidInitialModel, InvalidHoldout (also
    │       ValueErrors); StudyExists, InvalidTransition
    └── ApiError                     api.errors: raised from a route to answer with a status

Not in the tree: ``service.updates._FrameCrashed``, private control flow that
never leaves ``submit_updates``; it marks a bug (any exception while judging
one frame), which is not a deliberate refusal, so it stays a bare ``Exception``.
"""

from __future__ import annotations

import enum

from fedward.errors import FedwardError, SavedStateError
from fedward.privacy.errors import PolicyError


class RejectReason(enum.StrEnum):
    """Why an update was refused. Every value is counted and audited."""

    UNKNOWN_TASK = "unknown_task"
    WRONG_SUBSET = "wrong_subset"
    UNEXPECTED_TENSOR = "unexpected_tensor"
    MISSING_TENSOR = "missing_tensor"
    SHAPE_MISMATCH = "shape_mismatch"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"  # a coordinate beyond the study's public max_delta_abs
    TOO_STALE = "too_stale"
    BAD_SAMPLE_COUNT = "bad_sample_count"
    DUPLICATE = "duplicate"
    NOT_IN_COHORT = "not_in_cohort"
    BUDGET_EXCEEDED = "budget_exceeded"
    BAD_PRIVACY_CLAIM = "bad_privacy_claim"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"


class CoordinatorError(FedwardError):
    """Base class for errors the coordinator raises deliberately."""


class UpdateRejected(CoordinatorError):
    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"update rejected ({reason.value}){': ' + detail if detail else ''}")


class StrategyConfigError(CoordinatorError, ValueError):
    pass


class StateLoadError(CoordinatorError, SavedStateError):
    pass


class GuardStateError(StateLoadError, PolicyError):
    """A privacy guard's saved state that cannot be loaded: wrong kind or format, other
    settings than the study's (they are immutable), or content that fails its checks."""


class NotReadyError(CoordinatorError):
    pass
