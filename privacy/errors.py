"""Errors raised by the privacy layer.

Every error is a ``PrivacyError`` so a caller that must not continue after any
privacy failure (the coordinator's scheduler, the device's task runner) can
catch one type. The subclasses carry the figures that explain the refusal, so
the audit log can record *why* without parsing a message.

Hierarchy (hangs from :class:`fedward.errors.FedwardError`)::

    PrivacyError
    ├── BudgetExceeded    a task would take a device past its epsilon budget
    ├── ForgedClaim       a device's claimed epsilon disagrees with the recomputation
    ├── PolicyError       an unsafe budget policy, or an attempt to change one
    ├── LedgerStateError  a persisted ledger state that is malformed or tampered with
    │                     (also a fedward.errors.SavedStateError)
    ├── DuplicateCharge   the same (device, task) charged twice
    └── SecAggError       secure aggregation (fedward.privacy.secagg.errors has its subtree)

``fedward.edge.budget.TaskRefused`` (a device declining a task) is a
``PrivacyError`` too, defined with the device budget it guards.
"""

from __future__ import annotations

from fedward.errors import FedwardError, SavedStateError


class PrivacyError(FedwardError):
    """Base class: training or scheduling must not proceed."""


class BudgetExceeded(PrivacyError):
    """Charging the task would take ``device`` past ``budget``.

    ``spent`` is the cumulative epsilon before the task, ``requested`` the
    cumulative epsilon the task would have reached. Nothing was recorded.
    """

    def __init__(self, *, device: str, spent: float, requested: float, budget: float) -> None:
        self.device = device
        self.spent = spent
        self.requested = requested
        self.budget = budget
        super().__init__(
            f"device {device!r}: task would raise epsilon from {spent:.6g} to "
            f"{requested:.6g}, past the budget {budget:.6g}"
        )

    @property
    def increment(self) -> float:
        return self.requested - self.spent


class ForgedClaim(PrivacyError):
    """A device claimed an epsilon the reported mechanism history does not give.

    The coordinator trusts the history (noise multiplier, sample rate, steps)
    and recomputes; a claim outside tolerance means the device's accountant and
    the ledger disagree, whether by a bug or a lie, and the update is discarded.
    """

    def __init__(
        self,
        *,
        device: str,
        claimed: float,
        recomputed: float,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        self.device = device
        self.claimed = claimed
        self.recomputed = recomputed
        self.bounds = bounds
        if bounds is None:
            detail = f"its reported history gives {recomputed!r}"
        else:  # reconciled by task id: confirmed tasks .. every dispatched task
            detail = f"its tasks give between {bounds[0]!r} and {bounds[1]!r}"
        super().__init__(f"device {device!r} claimed epsilon {claimed!r}; {detail}")


class PolicyError(PrivacyError):
    """An unsafe budget policy, an accountant misuse, or a policy change."""


class LedgerStateError(PrivacyError, SavedStateError):
    """A ledger state that cannot be loaded: wrong format, bad checksum, inconsistent."""


class DuplicateCharge(PrivacyError):
    """The task was already charged to this device (a replay or a retry bug)."""
