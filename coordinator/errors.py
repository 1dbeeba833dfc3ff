"""Errors raised by the coordinator.

Hierarchy (catch the narrowest you can handle):

    CoordinatorError                 base of everything the coordinator raises on purpose
    ├── UpdateRejected               an incoming update was refused; ``reason`` says why (counted, audited)
    ├── StrategyConfigError          a strategy was built with unsafe or inconsistent parameters
    ├── StateLoadError               saved state failed its checks on load (version, hash, shape)
    └── NotReadyError                ``aggregate`` was called before the strategy was ready
"""

from __future__ import annotations

import enum


class RejectReason(enum.StrEnum):
    """Why an update was refused. Every value is counted and audited."""

    UNKNOWN_TASK = "unknown_task"
    WRONG_SUBSET = "wrong_subset"
    UNEXPECTED_TENSOR = "unexpected_tensor"
    MISSING_TENSOR = "missing_tensor"
    SHAPE_MISMATCH = "shape_mismatch"
    NON_FINITE = "non_finite"
    TOO_STALE = "too_stale"
    BAD_SAMPLE_COUNT = "bad_sample_count"
    DUPLICATE = "duplicate"
    NOT_IN_COHORT = "not_in_cohort"
    BUDGET_EXCEEDED = "budget_exceeded"
    BAD_PRIVACY_CLAIM = "bad_privacy_claim"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"


class CoordinatorError(Exception):
    """Base class for errors the coordinator raises deliberately."""


class UpdateRejected(CoordinatorError):
    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"update rejected ({reason.value}){': ' + detail if detail else ''}")


class StrategyConfigError(CoordinatorError, ValueError):
    pass


class StateLoadError(CoordinatorError):
    pass


class NotReadyError(CoordinatorError):
    pass
