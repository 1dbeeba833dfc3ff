"""The errors the service raises for a caller's mistake (the API maps each to a status)."""

from __future__ import annotations

from fedward.coordinator.errors import CoordinatorError


class ServiceError(CoordinatorError):
    """Base of the errors the service raises for a caller's mistake."""


class StudyNotFound(ServiceError, KeyError):
    pass


class StudyRestoreFailed(StudyNotFound):
    """The study exists but could not be restored at start: it is not served (the
    reason is in the message and the audit log's STUDY_RESTORE_FAILED entry)."""


class DeviceNotFound(ServiceError, KeyError):
    pass


class ModelVersionNotFound(ServiceError, KeyError):
    pass


class NoPrivacyPolicy(ServiceError, KeyError):
    """The study has no DP policy, so it has no privacy budgets to report or refuse."""


class StudyExists(ServiceError):
    pass


class InvalidTransition(ServiceError):
    """The study's state does not allow this lifecycle call."""


class InvalidStudyId(ServiceError, ValueError):
    pass


class UnsupportedRefusal(ServiceError, ValueError):
    """A device declined a task for a reason the coordinator does not act on."""


class InvalidInitialModel(ServiceError, ValueError):
    """Warm-start parameters that are not the study's model (names or shapes differ)."""


class InvalidHoldout(ServiceError, ValueError):
    """A held-out set that does not fit the study's model (shape, labels)."""
