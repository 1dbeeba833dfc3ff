"""Guards: policies the engine consults before it dispatches, admits or frees a task.

A guard decides; the engine acts. Every guard call returns one
:class:`GuardDecision` (always the same shape) and the engine applies it: it
moves the device to ``device_state`` if one is given, refuses the update with
``reject`` if ``allowed`` is False, and carries on otherwise. A guard never
changes the engine's devices, tasks or counters itself, so the engine stays
the one place where a study's state changes (and is saved).

The privacy guard (``fedward.coordinator.privacy.guard``) is the guard we
ship: a device whose budget cannot afford another task is EXHAUSTED, a forged
privacy claim REVOKED, and ``spend`` says what its ledger charged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fedward.privacy.ledger import SpendRecord

from ..errors import RejectReason
from ..strategies import ClientUpdate
from .records import Device, DeviceState, TaskOrder

__all__ = ["ALLOW", "EngineGuard", "GuardDecision", "StatefulGuard"]


@dataclass(frozen=True, kw_only=True)
class GuardDecision:
    """What a guard decided about a device, a task or an update.

    ``allowed``       dispatch the device / admit the update / (refusal) always False
    ``reject``        why an update is refused (admission only; counted and audited)
    ``detail``        free text for the rejection, at most 200 characters reach the log
    ``spend``         what the guard's ledger charged for this update, if anything
                      (a refused update may still have been charged: the server saw it)
    ``device_state``  the state the engine must move the device to (EXHAUSTED, REVOKED)
    ``state_reason``  why, for the device-state event
    """

    allowed: bool
    reject: RejectReason | None = None
    detail: str = ""
    spend: SpendRecord | None = None
    device_state: DeviceState | None = None
    state_reason: str = ""

    def __post_init__(self) -> None:
        if self.allowed and self.reject is not None:
            raise ValueError("an allowed decision carries no rejection reason")
        if self.device_state is not None and not self.state_reason:
            raise ValueError("a device state change needs a reason")


ALLOW = GuardDecision(allowed=True)


class EngineGuard(Protocol):
    """A policy the engine consults (e.g. privacy budgets); see the module docstring.

    ``may_dispatch``: may this idle device get a task now?
    ``admit``: may this update (for ``order``, from ``device``) reach the strategy?
    ``context`` is what the transport decoded beside the tensors (the device's
    privacy report), opaque to the engine.
    ``task_refused``: the device declined ``order`` for a reason this guard
    owns (its own budget); the engine fails the task and applies the decision.
    Optional ``task_dispatched(order, *, now) -> GuardDecision``: called for each
    task the engine has just issued (the privacy guard charges the task's
    mechanism then, not when the update arrives).
    """

    def may_dispatch(self, device: Device, *, now: float) -> GuardDecision: ...

    def admit(
        self,
        update: ClientUpdate,
        order: TaskOrder,
        device: Device,
        *,
        context: Any,
        now: float,
    ) -> GuardDecision: ...

    def task_refused(self, order: TaskOrder, *, now: float) -> GuardDecision: ...


@runtime_checkable
class StatefulGuard(Protocol):
    """A guard whose state must survive a restart (the privacy guard's ledger)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
