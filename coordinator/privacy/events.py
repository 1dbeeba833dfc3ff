"""The privacy guard's decisions as facts, for the audit log and metrics.

The guard emits one :class:`PrivacyEvent` per decision (a charge, an
exhaustion, a rejection, a device's refusal, a revocation) carrying what was
decided and the numbers behind it; ``fedward.coordinator.audit`` is the one
place that turns an event into an audit entry.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from fedward.privacy.accounting import MechanismStep
from fedward.privacy.budget import BudgetPolicy, PrivacyUnit
from fedward.privacy.ledger import SpendRecord
from fedward.protocol.messages import PrivacyReport

from ..errors import RejectReason

__all__ = ["PrivacyEvent", "PrivacyEventKind", "PrivacyListener"]


class PrivacyEventKind(enum.StrEnum):
    SPENT = "spent"  # a task's mechanism was charged to a device
    EXHAUSTED = "exhausted"  # a device cannot afford another task: no more scheduling
    REJECTED = "rejected"  # an update refused for a privacy reason
    REFUSED = "refused"  # the device itself refused a task (its own budget)
    REVOKED = "revoked"  # the device's accounting disagrees with the ledger for good


@dataclass(frozen=True, kw_only=True)
class PrivacyEvent:
    """One privacy decision about ``device_id`` (the fields its kind needs are set).

    SPENT      ``record``: the ledger's record of the charge (made when the task was
               dispatched: ``record.confirmed`` is False until its update arrives)
    EXHAUSTED  ``step`` (the next task's mechanism), ``spent``, ``remaining``,
               ``next_task_epsilon``
    REJECTED   ``reason``, ``detail``, ``report`` (what the device claimed, if it
               sent a usable one), ``claimed_epsilon``/``recomputed_epsilon`` for
               a forged claim
    REFUSED    ``detail``: why (the device's own text is never kept)
    REVOKED    ``detail``: why

    ``policy`` and ``clip_norm`` are the study's, so an entry can state the
    mechanism and the budget without asking the guard.
    """

    kind: PrivacyEventKind
    at: float
    device_id: str
    policy: BudgetPolicy
    clip_norm: float
    unit: PrivacyUnit = PrivacyUnit.WINDOW  # what the epsilon protects: a window, a patient
    task_id: str | None = None
    record: SpendRecord | None = None
    step: MechanismStep | None = None
    spent: float | None = None
    remaining: float | None = None
    next_task_epsilon: float | None = None
    report: PrivacyReport | None = None
    reason: RejectReason | None = None
    detail: str = ""
    claimed_epsilon: float | None = None
    recomputed_epsilon: float | None = None


PrivacyListener = Callable[[PrivacyEvent], None]
