"""The coordinator's privacy guard: budgets enforced at dispatch and at admission.

An ``EngineGuard`` holding the study's ``PrivacyLedger``:

- ``may_dispatch``: a device whose ledger cannot afford one more task (the
  task's mechanism is fixed by ``StudyPrivacy``, so its cost is known) is
  refused with ``DeviceState.EXHAUSTED`` and a reason, and never scheduled again;
- ``task_dispatched``: the task's whole mechanism is charged to the device's
  ledger the moment the engine dispatches it (``PrivacyLedger.reserve``):
  what the coordinator asked for is what is spent, whatever the device later
  reports and whether or not its update ever arrives;
- ``admit``: the update must carry a ``PrivacyReport`` (the transport's
  ``context``) with the task's mechanism; its reservation is confirmed and the
  device's claimed cumulative epsilon reconciled by task id (between the
  confirmed tasks' epsilon and every dispatched task's), so a claim outside
  that range is a ``BAD_PRIVACY_CLAIM`` and the device is revoked;
- every spend, exhaustion, refusal and rejection is emitted as a
  ``PrivacyEvent`` (facts: ``fedward.coordinator.privacy.events``);
  ``fedward.coordinator.audit`` is the one place that turns them into audit
  entries.

The guard decides, the engine acts: each call returns a ``GuardDecision``
(allowed or a rejection reason, the spend, the device state to apply) and
the guard never changes the engine's devices or tasks itself.

Why at dispatch (issue 9, items 3 and 4): charging the steps a device reports
let a device that reported 1 step per 8-step task be admitted for 59 tasks
(real epsilon 26.35), and a lost or late update left the ledger short of what
the device had spent, so its next honest claim disagreed and it was revoked
for good. Charging the dispatched mechanism errs only on the side of the data
subject (a task the device never trained still counts), and reconciling the
claim by task id keeps an honest device whose updates were lost in the study.
A task in flight from a state saved before reservations is charged when its
update arrives, with the task's mechanism.

Secure-aggregation fills (issue 11): a fill member's task is reserved at
dispatch like any other, and the guard remembers which fill it belongs to
(with cohorts bound at arrival, from the fill's ``FILL_OPENED`` event).
No member's update ever reaches the coordinator, so nothing is confirmed at
admission: when the engine releases the fill's sum (``FILL_MERGED``) the
survivors' reservations are confirmed and the dropped members' released
(their input is in no sum: ``PrivacyLedger.settle_fill``); an aborted fill
(``FILL_ABORTED``: nothing was unmasked) releases every member's. Under
distributed DP (``DistributedPrivacy``) this is the per-fill ledger of the
Skellam release. Under sample-level DP-SGD the same settlement applies: a
member whose noised update is in no released sum has released nothing (its
own accountant, which charged the steps it trained, stays the more
conservative of the two).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fedward.privacy.accounting import MechanismStep
from fedward.privacy.budget import PrivacyUnit
from fedward.privacy.errors import (
    BudgetExceeded,
    DuplicateCharge,
    ForgedClaim,
    LedgerStateError,
    PrivacyError,
)
from fedward.privacy.ledger import PrivacyLedger, SpendRecord
from fedward.privacy.skellam import SkellamStep
from fedward.protocol.messages import DpParams, PrivacyReport
from fedward.saved_state import open_envelope, seal

from ..engine import (
    ALLOW,
    Device,
    DeviceState,
    Engine,
    EngineEvent,
    EventKind,
    GuardDecision,
    TaskOrder,
)
from ..errors import GuardStateError, RejectReason
from ..strategies import ClientUpdate
from .events import PrivacyEvent, PrivacyEventKind, PrivacyListener
from .settings import (
    DistributedPrivacy,
    GuardSettings,
    PatientPrivacy,
    StudyPrivacy,
    settings_of_unit,
)

STATE_KIND = "fedward.coordinator.privacy_guard"
STATE_FORMAT = 2  # 1: a flat dict with "format"/"version" keys, before the envelope


@dataclass
class _Status:
    """What the guard remembers besides the ledger (persisted with it)."""

    device_classes: dict[str, str] = field(default_factory=dict)
    exhausted: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    fills: dict[str, dict[str, str]] = field(default_factory=dict)  # fill -> device -> task


class PrivacyGuard:
    """Per-device budgets of one study, composed over all its tasks."""

    def __init__(
        self,
        settings: GuardSettings,
        *,
        listeners: Iterable[PrivacyListener] = (),
        claim_tolerance: float = 1e-6,
    ) -> None:
        if not isinstance(settings, StudyPrivacy | PatientPrivacy | DistributedPrivacy):
            raise TypeError("settings must be a StudyPrivacy, PatientPrivacy or DistributedPrivacy")
        self.settings = settings
        self._claim_tolerance = claim_tolerance
        self.ledger = PrivacyLedger(settings.policy(), claim_tolerance=claim_tolerance)
        self.listeners: list[PrivacyListener] = list(listeners)
        self._step = settings.task_step()
        self._dp = settings.task_dp()
        self._status = _Status()
        self._affordable: dict[str, bool] = {}  # cache, invalidated on every charge

    # -- what tasks carry --------------------------------------------------------

    def task_dp(self, order: TaskOrder) -> DpParams | None:
        """The ``Task.dp`` to send with ``order`` (the same mechanism for every task;
        None for patient-level DP, where the coordinator's merge adds the noise)."""
        del order  # every task of a study runs the study's mechanism
        return self._dp

    @property
    def unit(self) -> PrivacyUnit:
        """What each epsilon of this guard's ledger protects (a 10-s window, a patient)."""
        return self.settings.unit

    @property
    def task_step(self) -> MechanismStep | SkellamStep:
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

    def task_dispatched(self, order: TaskOrder, *, now: float) -> GuardDecision:
        """Charge ``order``'s mechanism now: the device may train it from this moment.

        ``may_dispatch`` has just checked that the ledger affords one more task,
        so the reservation fits; exhaustion is decided at the next dispatch.
        """
        device_id = order.device_id
        record = self.ledger.reserve(
            device_id,
            order.task_id,
            self._step,
            at=now,
            max_grad_norm=self.settings.max_grad_norm,
        )
        self._affordable.pop(device_id, None)
        if order.fill_id is not None:
            self._status.fills.setdefault(order.fill_id, {})[device_id] = order.task_id
        self._spent(record, now=now)
        return GuardDecision(allowed=True, spend=record)

    def engine_event(self, event: EngineEvent) -> None:
        """Settle a fill's reservations when its sum is released or it aborts.

        A fill formed from tasks dispatched before it (cohorts bound at arrival) is
        learnt when it opens: its members' tasks were reserved as plain tasks.
        """
        if event.kind is EventKind.FILL_OPENED:
            fill_id = str(event.details.get("fill_id"))
            pairs = zip(
                event.details.get("cohort", ()), event.details.get("task_ids", ()), strict=True
            )
            if fill_id not in self._status.fills:
                self._status.fills[fill_id] = {str(d): str(t) for d, t in pairs}
            return
        if event.kind not in (EventKind.FILL_MERGED, EventKind.FILL_ABORTED):
            return
        members = self._status.fills.pop(str(event.details.get("fill_id")), None)
        if not members:
            return  # a fill dispatched before this guard tracked fills: stays charged
        reserved = {d: t for d, t in members.items() if self.ledger.is_reserved(d, t)}
        if event.kind is EventKind.FILL_MERGED:
            survivors = [d for d in event.details.get("survivors", ()) if d in reserved]
            self.ledger.settle_fill(reserved, survivors=survivors)
        else:  # aborted: no sum was unmasked, no member's input was released
            for device, task_id in reserved.items():
                self.ledger.release(device, task_id)
        for device in members:
            self._affordable.pop(device, None)

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
        if self.unit is PrivacyUnit.PATIENT:
            return self._admit_participation(order, now=now)
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
        if not self.ledger.is_reserved(device_id, order.task_id):
            try:  # a task dispatched before reservations existed: charge it now, in full
                self.task_dispatched(order, now=now)
            except DuplicateCharge as exc:  # confirmed already: a replayed update
                return self._reject(
                    RejectReason.DUPLICATE,
                    str(exc),
                    device_id=device_id,
                    task_id=order.task_id,
                    now=now,
                )
            except BudgetExceeded as exc:
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
        try:
            record = self.ledger.confirm(
                device_id, order.task_id, claimed_epsilon=report.claimed_epsilon
            )
        except ForgedClaim as exc:
            return self._forged(exc, order, report, now=now)
        except DuplicateCharge as exc:
            return self._reject(
                RejectReason.DUPLICATE,
                str(exc),
                device_id=device_id,
                task_id=order.task_id,
                now=now,
            )
        if not self.can_afford_task(device_id):
            exhausted = self._exhaust(device_id, now=now)
            return GuardDecision(
                allowed=True,
                spend=record,
                device_state=exhausted.device_state,
                state_reason=exhausted.state_reason,
            )
        return GuardDecision(allowed=True, spend=record)

    def _admit_participation(self, order: TaskOrder, *, now: float) -> GuardDecision:
        """Patient-level DP: the update joins a noised merge; its task was charged at dispatch.

        The device reports nothing (it ran no DP-SGD); the coordinator's merge is
        the mechanism, so there is no claim to reconcile.
        """
        device_id = order.device_id
        if not self.ledger.is_reserved(device_id, order.task_id):
            try:
                self.task_dispatched(order, now=now)
            except (BudgetExceeded, DuplicateCharge) as exc:
                reason = (
                    RejectReason.BUDGET_EXCEEDED
                    if isinstance(exc, BudgetExceeded)
                    else RejectReason.DUPLICATE
                )
                return self._reject(
                    reason, str(exc), device_id=device_id, task_id=order.task_id, now=now
                )
        record = self.ledger.confirm(device_id, order.task_id)
        if not self.can_afford_task(device_id):
            exhausted = self._exhaust(device_id, now=now)
            return replace(exhausted, allowed=True, spend=record, reject=None, detail="")
        return GuardDecision(allowed=True, spend=record)

    def task_refused(self, order: TaskOrder, *, now: float) -> GuardDecision:
        """The device refused ``order`` because its own budget cannot afford it.

        The engine fails the task (its slot freed) and the device is never
        scheduled again: a device's budget only shrinks. The device's free-text
        detail is not logged (it is device-controlled text headed for a
        permanent log).
        """
        # The device declined before training: its accountant does not count the task,
        # and the engine fails it first, so an update for it could only be refused as
        # unknown. Its reservation goes, or the ledger and the device would disagree.
        if self.ledger.is_reserved(order.device_id, order.task_id):
            self.ledger.release(order.device_id, order.task_id)
            self._affordable.pop(order.device_id, None)
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
                "unit": self.unit.value,
                "distributed": isinstance(self.settings, DistributedPrivacy),
                "settings": self.settings.model_dump(mode="json"),
                "fills": {
                    f: dict(sorted(m.items())) for f, m in sorted(self._status.fills.items())
                },
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
            model = settings_of_unit(
                payload.get("unit", PrivacyUnit.WINDOW.value),
                distributed=payload.get("distributed", False) is True,
            )
            stored = model.model_validate_json(json.dumps(payload["settings"]))
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
        fills = payload.get("fills", {})  # absent in states from before fills
        if not isinstance(fills, Mapping) or not all(
            isinstance(f, str)
            and isinstance(m, Mapping)
            and all(isinstance(d, str) and isinstance(t, str) for d, t in m.items())
            for f, m in fills.items()
        ):
            raise GuardStateError("fills must map fill ids to {device id: task id}")
        status = _Status(
            device_classes=dict(classes),
            exhausted=set(_names(payload.get("exhausted", []))),
            revoked=set(_names(payload.get("revoked", []))),
            fills={f: dict(m) for f, m in fills.items()},
        )
        self.ledger, self._status = ledger, status
        self._affordable.clear()

    # -- internals -------------------------------------------------------------------------

    def _mechanism_problem(self, report: PrivacyReport) -> str:
        dp = self._dp
        if dp is None:  # patient-level: never reached (admit takes the other path)
            return "this study's devices run no DP-SGD"
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
        report: PrivacyReport,
        *,
        now: float,
    ) -> GuardDecision:
        """Revoke: the device's accountant and the ledger disagree for good.

        The task stays charged (it was at dispatch): the server saw the update.
        """
        device_id = order.device_id
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
            unit=self.unit,
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
