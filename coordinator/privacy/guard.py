"""The coordinator's privacy guard: budgets enforced at dispatch and at admission.

An ``EngineGuard`` holding the study's ``PrivacyLedger``:

- ``may_dispatch``: a device whose ledger cannot afford one more task (the
  task's mechanism is fixed by ``StudyPrivacy``, so its cost is known) is
  refused with ``DeviceState.EXHAUSTED`` and a reason, and never scheduled again;
- ``admit``: the update must carry a ``PrivacyReport`` (the transport's
  ``context``) with exactly the task's mechanism; the ledger charges it and
  *recomputes* the device's cumulative epsilon, so a claim that disagrees is
  a ``BAD_PRIVACY_CLAIM`` and a spend past the budget a ``BUDGET_EXCEEDED``;
- every spend, exhaustion, refusal and rejection is emitted as a
  ``PrivacyEvent`` (facts: ``fedward.coordinator.privacy.events``);
  ``fedward.coordinator.audit`` is the one place that turns them into audit
  entries.

The guard decides, the engine acts: each call returns a ``GuardDecision``
(allowed or a rejection reason, the spend, the device state to apply) and
the guard never changes the engine's devices or tasks itself.

Charging happens before the strategy sees the update: the server has seen a
data-derived update even if the strategy then drops it (too stale), so the
spend is real. For the same reason a forged claim is still charged with the
mechanism the device reported (a lower bound of what it spent) before the
update is discarded, and the device is revoked: its own accountant and the
ledger disagree for good, so every later update would be rejected while still
spending the patient's budget.

Known limit: an update that trained but never reached ``admit`` (lost, or
arriving after its task timed out: the engine rejects unknown tasks before
the guards) is spent on the device but not in the ledger; the device's next
claim then disagrees and it is revoked. That errs on the side of privacy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fedward.privacy.accounting import MechanismStep
from fedward.privacy.errors import (
    BudgetExceeded,
    DuplicateCharge,
    ForgedClaim,
    LedgerStateError,
    PrivacyError,
)
from fedward.privacy.ledger import PrivacyLedger, SpendRecord
from fedward.protocol.messages import DpParams, PrivacyReport
from fedward.saved_state import open_envelope, seal

from ..engine import ALLOW, Device, DeviceState, Engine, GuardDecision, TaskOrder
from ..errors import GuardStateError, RejectReason
from ..strategies import ClientUpdate
from .events import PrivacyEvent, PrivacyEventKind, PrivacyListener
from .settings import StudyPrivacy

STATE_KIND = "fedward.coordinator.privacy_guard"
STATE_FORMAT = 2  # 1: a flat dict with "format"/"version" keys, before the envelope


@dataclass
class _Status:
    """What the guard remembers besides the ledger (persisted with it)."""

    device_classes: dict[str, str] = field(default_factory=dict)
    exhausted: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)


class PrivacyGuard:
    """Per-device budgets of one study, composed over all its tasks."""

    def __init__(
        self,
        settings: StudyPrivacy,
        *,
        listeners: Iterable[PrivacyListener] = (),
        claim_tolerance: float = 1e-6,
    ) -> None:
        if not isinstance(settings, StudyPrivacy):
            raise TypeError("settings must be a StudyPrivacy")
        self.settings = settings
        self._claim_tolerance = claim_tolerance
        self.ledger = PrivacyLedger(settings.policy(), claim_tolerance=claim_tolerance)
        self.listeners: list[PrivacyListener] = list(listeners)
        self._step = settings.task_step()
        self._dp = settings.task_dp()
        self._status = _Status()
        self._affordable: dict[str, bool] = {}  # cache, invalidated on every charge

    # -- what tasks carry --------------------------------------------------------

    def task_dp(self, order: TaskOrder) -> DpParams:
        """The ``Task.dp`` to send with ``order`` (the same mechanism for every task)."""
        del order  # every task of a study runs the study's mechanism
        return self._dp

    @property
    def task_step(self) -> MechanismStep:
        return self._step

    # -- queries -------------------------------------------------------------------

    def can_afford_task(self, device_id: str) -> bool:
        cached = self._affordable.get(device_id)
        if cached is None:
            cached = self.ledger.can_afford(device_id, self._step)
            self._affordable[device_id] = cached
        return cached

    def exhausted_devices(self) -> set[str]:
        return set(self._status.exhausted)

    def revoked_devices(self) -> set[str]:
        return set(self._status.revoked)

    def device_classes(self) -> dict[str, str]:
        return dict(self._status.device_classes)

    # -- EngineGuard: decisions, applied by the engine ---------------------------------

    def may_dispatch(self, device: Device, *, now: float) -> GuardDecision:
        device_id = device.device_id
        self._status.device_classes.setdefault(device_id, device.device_class)
        if device_id in self._status.revoked:
            return GuardDecision(
                allowed=False,
                device_state=DeviceState.REVOKED,
                state_reason="privacy accounting diverged",
            )
        if device_id in self._status.exhausted or not self.can_afford_task(device_id):
            return self._exhaust(device_id, now=now)
        return ALLOW

    def admit(
        self,
        update: ClientUpdate,
        order: TaskOrder,
        device: Device,
        *,
        context: Any,
        now: float,
    ) -> GuardDecision:
        """Charge the update's mechanism to the device's ledger, or refuse it.

        Refusals are decisions (``allowed=False`` with a ``reject`` reason), not
        exceptions: the engine counts and audits them like any rejection.
        """
        del update  # the mechanism, not the tensors, is what the guard judges
        device_id = order.device_id
        self._status.device_classes.setdefault(device_id, device.device_class)
        report = context
        if not isinstance(report, PrivacyReport):
            return self._reject(
                RejectReason.BAD_PRIVACY_CLAIM,
                "a DP study's update must carry a privacy report",
                device_id=device_id,
                task_id=order.task_id,
                now=now,
            )
        problem = self._mechanism_problem(report)
        if problem:
            return self._reject(
                RejectReason.BAD_PRIVACY_CLAIM,
                f"mechanism differs from the task's: {problem}",
                device_id=device_id,
                task_id=order.task_id,
                now=now,
                report=report,
            )
        step = MechanismStep(
            noise_multiplier=report.noise_multiplier,
            sample_rate=report.sample_rate,
            steps=report.steps,
        )
        try:
            record = self.ledger.charge(
                device_id,
                order.task_id,
                step,
                at=now,
                max_grad_norm=report.max_grad_norm,
                claimed_epsilon=report.claimed_epsilon,
            )
        except ForgedClaim as exc:
            return self._forged(exc, order, step, report, now=now)
        except BudgetExceeded as exc:
            self._affordable.pop(device_id, None)
            exhausted = self._exhaust(device_id, now=now, reason="update past the budget")
            rejected = self._reject(
                RejectReason.BUDGET_EXCEEDED,
                str(exc),
                device_id=device_id,
                task_id=order.task_id,
                now=now,
                report=report,
            )
            return replace(
                rejected,
                device_state=exhausted.device_state,
                state_reason=exhausted.state_reason,
            )
        except DuplicateCharge as exc:
            return self._reject(
                RejectReason.DUPLICATE,
                str(exc),
                device_id=device_id,
                task_id=order.task_id,
                now=now,
            )
        self._affordable.pop(device_id, None)
        self._spent(record, now=now)
        if not self.can_afford_task(device_id):
            exhausted = self._exhaust(device_id, now=now)
            return GuardDecision(
                allowed=True,
                spend=record,
                device_state=exhausted.device_state,
                state_reason=exhausted.state_reason,
            )
        return GuardDecision(allowed=True, spend=record)

    def task_refused(self, order: TaskOrder, *, now: float) -> GuardDecision:
        """The device refused ``order`` because its own budget cannot afford it.

        The engine fails the task (its slot freed) and the device is never
        scheduled again: a device's budget only shrinks. The device's free-text
        detail is not logged (it is device-controlled text headed for a
        permanent log).
        """
        self._emit(
            PrivacyEventKind.REFUSED,
            now,
            order.device_id,
            task_id=order.task_id,
            detail="device budget cannot afford the task",
        )
        return self._exhaust(order.device_id, now=now, reason="the device refused: own budget")

    # -- persistence ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready envelope: settings, the ledger's state, classes, exhausted and revoked."""
        return seal(
            STATE_KIND,
            STATE_FORMAT,
            {
                "settings": self.settings.model_dump(mode="json"),
                "ledger": self.ledger.state_dict(),
                "device_classes": dict(sorted(self._status.device_classes.items())),
                "exhausted": sorted(self._status.exhausted),
                "revoked": sorted(self._status.revoked),
            },
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore after a restart, all or nothing; ``GuardStateError`` for anything
        this guard could not have written, including other settings (immutable)."""
        payload = open_envelope(
            state, kind=STATE_KIND, format_version=STATE_FORMAT, error=GuardStateError
        )
        try:
            stored = StudyPrivacy.model_validate_json(json.dumps(payload["settings"]))
        except (KeyError, TypeError, ValueError) as exc:  # pydantic's error is a ValueError
            raise GuardStateError(f"privacy guard state has no valid settings: {exc}") from exc
        if stored != self.settings:
            raise GuardStateError(
                "a study's privacy settings are immutable: the stored state was written "
                f"under {stored.model_dump(mode='json')}"
            )
        saved_ledger = payload.get("ledger")
        if not isinstance(saved_ledger, Mapping):
            raise GuardStateError("privacy guard state holds no ledger")
        ledger = PrivacyLedger(self.settings.policy(), claim_tolerance=self._claim_tolerance)
        try:  # the ledger checks its checksum and recomputes every epsilon
            ledger.load_state_dict(saved_ledger)
        except LedgerStateError:
            raise  # precise already, and a SavedStateError
        except PrivacyError as exc:  # e.g. the ledger was written under another policy
            raise GuardStateError(f"privacy guard state: {exc}") from exc
        classes = payload.get("device_classes", {})
        if not isinstance(classes, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in classes.items()
        ):
            raise GuardStateError("device_classes must map device ids to class names")
        status = _Status(
            device_classes=dict(classes),
            exhausted=set(_names(payload.get("exhausted", []))),
            revoked=set(_names(payload.get("revoked", []))),
        )
        self.ledger, self._status = ledger, status
        self._affordable.clear()

    # -- internals -------------------------------------------------------------------------

    def _mechanism_problem(self, report: PrivacyReport) -> str:
        dp = self._dp
        if report.noise_multiplier != dp.noise_multiplier:
            return f"noise_multiplier {report.noise_multiplier} != {dp.noise_multiplier}"
        if report.sample_rate != dp.sample_rate:
            return f"sample_rate {report.sample_rate} != {dp.sample_rate}"
        if report.max_grad_norm != dp.max_grad_norm:
            return f"max_grad_norm {report.max_grad_norm} != {dp.max_grad_norm}"
        if not 1 <= report.steps <= (dp.max_steps or 0):
            return f"steps {report.steps} outside [1, {dp.max_steps}]"
        if report.accountant.value != dp.accountant.value:
            return f"accountant {report.accountant.value} != {dp.accountant.value}"
        if report.delta != dp.delta:
            return f"delta {report.delta} != {dp.delta}"
        return ""

    def _forged(
        self,
        exc: ForgedClaim,
        order: TaskOrder,
        step: MechanismStep,
        report: PrivacyReport,
        *,
        now: float,
    ) -> GuardDecision:
        device_id = order.device_id
        record: SpendRecord | None = None
        try:  # the server saw the update: charge what the device says it ran
            record = self.ledger.charge(
                device_id, order.task_id, step, at=now, max_grad_norm=report.max_grad_norm
            )
            self._spent(record, now=now)
        except (BudgetExceeded, DuplicateCharge):
            pass
        self._affordable.pop(device_id, None)
        self._status.revoked.add(device_id)
        self._emit(
            PrivacyEventKind.REVOKED,
            now,
            device_id,
            task_id=order.task_id,
            detail="privacy claim disagrees with the ledger",
        )
        rejected = self._reject(
            RejectReason.BAD_PRIVACY_CLAIM,
            str(exc),
            device_id=device_id,
            task_id=order.task_id,
            now=now,
            report=report,
            claimed=float(exc.claimed),
            recomputed=exc.recomputed,
        )
        return replace(
            rejected,
            spend=record,
            device_state=DeviceState.REVOKED,
            state_reason="privacy claim disagrees with ledger",
        )

    def _exhaust(self, device_id: str, *, now: float, reason: str = "") -> GuardDecision:
        """Mark the device exhausted (audited once) and say so to the engine."""
        first = device_id not in self._status.exhausted
        self._status.exhausted.add(device_id)
        if first:
            self._emit(
                PrivacyEventKind.EXHAUSTED,
                now,
                device_id,
                step=self._step,
                spent=self.ledger.spent(device_id),
                remaining=self.ledger.remaining(device_id),
                next_task_epsilon=self.ledger.epsilon_with(device_id, self._step),
            )
        return GuardDecision(
            allowed=False,
            device_state=DeviceState.EXHAUSTED,
            state_reason=reason or "privacy budget cannot afford another task",
        )

    def _spent(self, record: SpendRecord, *, now: float) -> None:
        self._emit(
            PrivacyEventKind.SPENT, now, record.device, task_id=record.task_id, record=record
        )

    def _reject(
        self,
        reason: RejectReason,
        detail: str,
        *,
        device_id: str,
        task_id: str,
        now: float,
        report: PrivacyReport | None = None,
        claimed: float | None = None,
        recomputed: float | None = None,
    ) -> GuardDecision:
        self._emit(
            PrivacyEventKind.REJECTED,
            now,
            device_id,
            task_id=task_id,
            reason=reason,
            detail=detail,
            report=report,
            claimed_epsilon=claimed,
            recomputed_epsilon=recomputed,
        )
        return GuardDecision(allowed=False, reject=reason, detail=detail)

    def _emit(self, kind: PrivacyEventKind, at: float, device_id: str, **facts: Any) -> None:
        event = PrivacyEvent(
            kind=kind,
            at=at,
            device_id=device_id,
            policy=self.ledger.policy,
            clip_norm=self.settings.max_grad_norm,
            **facts,
        )
        for listener in self.listeners:
            listener(event)


def privacy_guard_of(engine: Engine) -> PrivacyGuard | None:
    """The engine's privacy guard (``build_engine`` attaches one for a DP study)."""
    for guard in engine.guards:
        if isinstance(guard, PrivacyGuard):
            return guard
    return None


def _names(values: Any) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise GuardStateError("expected a list of device ids")
    return values
