"""The coordinator's engine: tasks out, updates in, merges, events for audit.

The engine is the one place where a study's state lives (model, version,
devices, tasks in flight, the strategy's buffer). It never does I/O and never
reads a clock: callers pass ``now`` (seconds; virtual in the simulator, wall
time in the live service) and get back plain objects to send or record. Every
decision is also emitted as an ``EngineEvent`` to the listeners (audit log,
metrics, persistence), so the simulator and the live coordinator produce the
same audit trail.

The engine knows no strategy by name: how many tasks to issue and when a
round closes are the strategy's schedule hooks (``Strategy.dispatch_room``,
``tasks_dispatched``, ``task_failed``). Guards (``engine.guards``) decide about
devices and updates; the engine applies each ``GuardDecision``, so every
change of a study's state happens here.

Secure aggregation (``secagg=SecAggPolicy(...)``): dispatch forms whole
cohorts, one fill (one SecAgg instance) each, or, with cohorts bound at
arrival, sends plain training tasks and opens a fill from the first ``m``
devices that say they have trained (``secagg_ready``); a fill's sum is the
only thing merged (through ``SecureAggregated``, which wraps the strategy). The
logic lives in ``fedward.coordinator.secagg``; the engine keeps thin hooks:
``secagg_receive`` / ``secagg_tick`` drive the fills, ``secagg_params`` is what
a member's Task carries, and the fill book is part of ``state_dict``.
"""

from __future__ import annotations

import enum
import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedward.errors import SavedStateError
from fedward.privacy.ledger import SpendRecord
from fedward.protocol.messages import SecAggParams, SecAggPhase
from fedward.saved_state import open_envelope, seal
from fedward.tinytrain.models import Params
from fedward.tinytrain.subsets import SubsetSpec

from ..errors import CoordinatorError, RejectReason, StateLoadError, UpdateRejected
from ..secagg import FillBook, FillEffects, FillStep, SecAggPolicy, form_cohorts
from ..secagg.fill import FinishedFill, IdentityEvidence, IdentityKeys
from ..strategies import ClientUpdate, MergeResult, Strategy
from ..strategies.secure import FillMergeError, SecureAggregated
from .guards import EngineGuard, GuardDecision, StatefulGuard
from .ingest import out_of_range
from .planning import SubsetPlanner
from .records import (
    ENGINE_STATE_FORMAT,
    ENGINE_STATE_FORMAT_BEFORE_FILLS,
    ENGINE_STATE_KIND,
    Device,
    DeviceState,
    EngineStats,
    TaskOrder,
    check_tasks,
    check_versions,
    device_from_state,
    device_state,
    keyed,
    rng_from_state,
    rng_state,
    stats_from_state,
    stats_state,
    task_from_state,
    task_state,
)

__all__ = ["Engine", "EngineEvent", "EventKind", "SubmitOutcome"]


# States a device never leaves (an operator's revocation, a spent budget, a refusal
# of the study's kind of task).
_TERMINAL_STATES = frozenset({DeviceState.REVOKED, DeviceState.EXHAUSTED, DeviceState.DECLINED})


class EventKind(enum.StrEnum):
    TASK_DISPATCHED = "task_dispatched"
    TASK_FAILED = "task_failed"
    UPDATE_ACCEPTED = "update_accepted"
    UPDATE_REJECTED = "update_rejected"
    MODEL_MERGED = "model_merged"
    DEVICE_ENROLLED = "device_enrolled"
    DEVICE_STATE = "device_state"
    # secure aggregation (values as fedward.coordinator.secagg.FillEvent): ids, cohort,
    # threshold, phase, arrived / missing / survivors / dropouts, reason; never a
    # share, a key, a masked word or any sum
    FILL_OPENED = "fill_opened"
    FILL_PHASE = "fill_phase"
    FILL_MERGED = "fill_merged"
    FILL_ABORTED = "fill_aborted"
    FILL_REFUSED = "fill_refused"  # a fill message refused (late member, wrong phase, bad)


@dataclass(frozen=True)
class EngineEvent:
    kind: EventKind
    at: float
    details: Mapping[str, Any]


@dataclass(frozen=True)
class SubmitOutcome:
    """What became of one update: accepted (and maybe merged) or refused with a reason.

    ``spends`` is what the guards charged for it (the privacy ledger's records),
    also for a refused update the server saw (a forged claim is charged too).
    """

    accepted: bool
    reason: RejectReason | None = None
    merge: MergeResult | None = None
    spends: tuple[SpendRecord, ...] = ()


class Engine:
    def __init__(
        self,
        *,
        params: Params,
        strategy: Strategy,
        planner: SubsetPlanner,
        concurrency: int,
        rng: random.Random,
        listeners: tuple[Callable[[EngineEvent], None], ...] = (),
        guards: tuple[EngineGuard, ...] = (),
        secagg: SecAggPolicy | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        secagg_identity_keys: IdentityKeys | None = None,
        secagg_identity_evidence: IdentityEvidence | None = None,
        max_delta_abs: float | None = None,
    ) -> None:
        """``secagg``: merge only secure-aggregation fills (the strategy is wrapped in
        ``SecureAggregated`` unless it already is); ``random_bytes``: the source of
        session ids; ``secagg_identity_keys``: device id -> Ed25519 public key, which
        makes signed key advertisements mandatory; ``secagg_identity_evidence``: device id
        -> evidence bytes of its identity key, attached to every roster member so devices
        check their peers' keys against the signed audit log
        (``fedward.coordinator.store.enrolment_evidence.EnrolmentEvidence``);
        ``max_delta_abs``: the study's public bound on any coordinate of a delta
        (``StudySpec.max_delta_abs``), checked here too, with each tensor's shape, so
        a caller that skips ingest cannot overflow the model (None: shapes only)."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if max_delta_abs is not None and not (0 < max_delta_abs < float("inf")):
            raise ValueError(
                f"max_delta_abs must be a positive finite number, got {max_delta_abs!r}"
            )
        self.max_delta_abs = max_delta_abs
        self.params: Params = {n: v.astype(np.float32, copy=True) for n, v in params.items()}
        self.version = 0
        if secagg is not None and not isinstance(strategy, SecureAggregated):
            strategy = SecureAggregated(strategy)
        self.strategy = strategy
        self.fills: FillBook | None = None
        if secagg is not None:
            self.fills = FillBook(
                policy=secagg,
                model_shapes=strategy.shapes,
                random_bytes=random_bytes,
                identity_keys=secagg_identity_keys,
                identity_evidence=secagg_identity_evidence,
            )
        self.planner = planner
        self.concurrency = concurrency
        self.rng = rng
        self.listeners = list(listeners)
        self.guards = list(guards)
        self.devices: dict[str, Device] = {}
        self.tasks: dict[str, TaskOrder] = {}
        self.stats = EngineStats()
        self._task_counter = 0
        self._changed_at: dict[str, int] = dict.fromkeys(self.params, 0)
        self._versions: dict[int, Params] = {0: self.params}

    # -- devices -----------------------------------------------------------
    def enrol(self, device_id: str, *, device_class: str, memory_bytes: int, now: float) -> Device:
        if device_id in self.devices:
            raise CoordinatorError(f"device {device_id} is already enrolled")
        device = Device(device_id=device_id, device_class=device_class, memory_bytes=memory_bytes)
        self.devices[device_id] = device
        self._emit(EventKind.DEVICE_ENROLLED, now, device_id=device_id, device_class=device_class)
        return device

    def set_device_state(
        self, device_id: str, state: DeviceState, *, now: float, reason: str = ""
    ) -> None:
        device = self.devices[device_id]
        if device.state in _TERMINAL_STATES and state is not device.state:
            return  # terminal states stick
        device.state = state
        self._emit(
            EventKind.DEVICE_STATE, now, device_id=device_id, state=state.value, reason=reason
        )

    def subset_for(self, device: Device) -> SubsetSpec:
        return self.planner.subset_for(
            device.memory_bytes, fleet_memory=(d.memory_bytes for d in self.devices.values())
        )

    # -- dispatch ----------------------------------------------------------
    def in_flight(self) -> int:
        return len(self.tasks)

    def dispatch(
        self, *, now: float, eligible: Callable[[Device], bool] = lambda d: True
    ) -> list[TaskOrder]:
        """Tasks to send now: as many as the strategy's schedule makes room for.

        A buffered strategy tops the tasks in flight up to ``concurrency``; a
        synchronous one asks for a whole cohort when no round is open. The
        engine does not know which: it asks ``dispatch_room`` and tells the
        strategy what it issued.
        """
        idle = [
            d
            for d in self.devices.values()
            if d.state is DeviceState.IDLE and eligible(d) and self._may_dispatch(d, now=now)
        ]
        if self.fills is not None and not self.fills.policy.at_arrival:
            orders = self._dispatch_fills(idle, now=now)
        else:
            # under ARRIVAL, a device that has trained and waits for its cohort holds no
            # training slot; once in a fill it counts again (its protocol is its upload)
            waiting = self.fills.waiting() if self.fills is not None else 0
            room = self.strategy.dispatch_room(
                in_flight=self.in_flight() - waiting, concurrency=self.concurrency
            )
            if room <= 0 or not idle:
                return []
            chosen = self.rng.sample(idle, min(room, len(idle)))
            round_id = self.strategy.next_round_id()
            orders = [self._make_task(d, now=now, round_id=round_id) for d in chosen]
        if not orders:
            return []
        self.strategy.tasks_dispatched(tuple(o.task_id for o in orders))
        for order in orders:  # e.g. the privacy guard charges the task's mechanism now
            for guard in self.guards:
                hook = getattr(guard, "task_dispatched", None)
                if callable(hook):
                    self._apply(order.device_id, hook(order, now=now), now=now)
        return orders

    def _may_dispatch(self, device: Device, *, now: float) -> bool:
        for guard in self.guards:
            decision = guard.may_dispatch(device, now=now)
            self._apply(device.device_id, decision, now=now)
            if not decision.allowed:
                return False
        return True

    def _apply(self, device_id: str, decision: GuardDecision, *, now: float) -> None:
        """Carry out the device-state part of a guard's decision."""
        if decision.device_state is not None and device_id in self.devices:
            self.set_device_state(
                device_id, decision.device_state, now=now, reason=decision.state_reason
            )

    def _dispatch_fills(self, idle: list[Device], *, now: float) -> list[TaskOrder]:
        """Whole cohorts (``concurrency`` does not apply): one fill each, at most
        ``fills_in_flight`` open, a device in one fill at a time (it is BUSY)."""
        book = self._book()
        cohorts = form_cohorts(
            idle,
            subset_of=self.subset_for,
            size=book.policy.cohort_size,
            room=book.room(),
            rng=self.rng,
            speed_of=(lambda d: d.task_seconds) if book.policy.group_by_speed else None,
        )
        orders: list[TaskOrder] = []
        for subset, members in cohorts:
            fill_id = book.next_fill_id()
            cohort = [self._make_task(d, now=now, round_id=None, fill_id=fill_id) for d in members]
            weighting = book.weighting_for(self.strategy)
            effects = book.open(
                fill_id=fill_id,
                members={o.device_id: o.task_id for o in cohort},
                subset=subset,
                base_version=self.version,
                weighting=weighting,
                now=now,
            )
            self._carry_out(effects, now=now)
            orders.extend(cohort)
        return orders

    def _open_ready_fills(self, *, now: float) -> tuple[TaskOrder, ...]:
        """ARRIVAL: open fills from ready tasks while a cohort is full and there is room.

        Each member's staleness weight is ``(1 + tau_i)^-a``, ``tau_i`` its base version
        against the current one, and the fill's base version is the current one (the
        server step is damped only for what merges while the fill runs); under
        distributed DP every weight is 1 and the base version is the members' median.
        """
        book, strategy = self.fills, self.strategy
        if book is None or not book.policy.at_arrival:
            return ()
        if not isinstance(strategy, SecureAggregated):
            raise CoordinatorError("secure aggregation merges through SecureAggregated")
        invited: list[TaskOrder] = []
        while book.room() > 0:
            chosen = book.take_ready()
            if chosen is None:
                break
            orders = [self.tasks[t] for t in chosen]
            fill_id = book.next_fill_id()
            members = {o.device_id: o.task_id for o in orders}
            if book.policy.ddp is None:
                base = self.version
                weights = {
                    o.device_id: strategy.age_factor(staleness=self.version - o.model_version)
                    for o in orders
                }
            else:
                base = sorted(o.model_version for o in orders)[(len(orders) - 1) // 2]
                weights = {}
            for order in orders:
                bound = replace(order, fill_id=fill_id)
                self.tasks[order.task_id] = bound
                invited.append(bound)
            effects = book.open(
                fill_id=fill_id,
                members=members,
                subset=orders[0].subset,
                base_version=base,
                weighting=book.weighting_for(strategy),
                now=now,
                staleness_weights=weights,
            )
            self._carry_out(effects, now=now)
        return tuple(invited)

    def secagg_ready(self, *, task_id: str, device_id: str, now: float) -> FillStep:
        """``device_id`` has trained ``task_id`` and holds its update (ARRIVAL): it waits
        for the next fill, which opens once ``m`` are ready (``FillStep.invited``)."""
        book = self._book()
        order = self.tasks.get(task_id)
        if order is None or order.device_id != device_id:
            raise CoordinatorError(f"task {task_id} is not in flight on device {device_id}")
        if order.fill_id is not None:
            raise CoordinatorError(f"task {task_id} is already in fill {order.fill_id}")
        book.mark_ready(task_id=task_id, subset_id=order.subset.subset_id, now=now)
        return self._with_invited(FillStep(), now=now)

    def _with_invited(self, step: FillStep, *, now: float) -> FillStep:
        invited = self._open_ready_fills(now=now)
        if not invited:
            return step
        return replace(step, invited=step.invited + invited)

    def _make_task(
        self, device: Device, *, now: float, round_id: int | None, fill_id: str | None = None
    ) -> TaskOrder:
        self._task_counter += 1
        subset = self.subset_for(device)
        download = tuple(n for n, v in self._changed_at.items() if v > device.held_version)
        order = TaskOrder(
            task_id=f"t{self._task_counter:07d}",
            device_id=device.device_id,
            model_version=self.version,
            subset=subset,
            download=download,
            issued_at=now,
            round_id=round_id,
            fill_id=fill_id,
        )
        self.tasks[order.task_id] = order
        device.state = DeviceState.BUSY
        device.held_version = self.version
        self.stats.dispatched += 1
        self._emit(
            EventKind.TASK_DISPATCHED,
            now,
            task_id=order.task_id,
            device_id=device.device_id,
            model_version=self.version,
            subset_id=subset.subset_id,
            tier=subset.tier,
        )
        return order

    def base_params(self, version: int) -> Params:
        return self._versions[version]

    # -- results -----------------------------------------------------------
    def task_failed(self, task_id: str, *, now: float, reason: str) -> None:
        """A device dropped or missed its deadline: free it, close its slot."""
        order = self.tasks.pop(task_id, None)
        if order is None:
            return
        self.stats.failed += 1
        device = self.devices[order.device_id]
        if device.state is DeviceState.BUSY:
            device.state = DeviceState.IDLE
        # A synchronous round may close on this failure (and merge what it holds).
        self.strategy.task_failed(task_id)
        self._maybe_merge(now)
        self._emit(
            EventKind.TASK_FAILED, now, task_id=task_id, device_id=order.device_id, reason=reason
        )
        if self.fills is not None:
            self.fills.drop_ready(task_id)  # a ready task that failed before its fill
        if order.fill_id is not None and self.fills is not None:
            # out of its fill (which may abort); the ABORT goes out with the next fill step
            effects = self.fills.member_failed(
                task_id=task_id, device_id=order.device_id, reason=reason
            )
            self._carry_out(effects, now=now)
        self._prune_versions()

    def task_refused(self, task_id: str, *, now: float, reason: str) -> bool:
        """The device declined ``task_id`` (``reason``: why, in the caller's words).

        The task is failed first (its slot freed), then each guard decides what
        follows for the device (the privacy guard, for a device whose own
        budget is spent: EXHAUSTED, never scheduled again). Returns False for a
        task not in flight (already answered, timed out or unknown).
        """
        order = self.tasks.get(task_id)
        if order is None:
            return False
        self.task_failed(task_id, now=now, reason=reason)
        for guard in self.guards:
            self._apply(order.device_id, guard.task_refused(order, now=now), now=now)
        return True

    def task_declined(self, task_id: str, *, now: float, reason: str) -> bool:
        """The device will not run this study's tasks at all (``reason``: why).

        Unlike ``task_refused`` no guard is asked: the device did not run out of
        anything, it refuses the kind of task the study sends (a device holding a
        DP budget offered a task without DP-SGD). The task is failed at once (its
        slot freed, not held to its deadline) and the device goes DECLINED, so it
        is not offered the same refusal after every heartbeat. A charge made at
        dispatch (patient-level budgets) stays: conservative, never under.
        Returns False for a task not in flight.
        """
        order = self.tasks.get(task_id)
        if order is None:
            return False
        self.task_failed(task_id, now=now, reason=reason)
        self.set_device_state(order.device_id, DeviceState.DECLINED, now=now, reason=reason)
        return True

    def submit(self, update: ClientUpdate, *, now: float, context: Any = None) -> SubmitOutcome:
        order = self.tasks.get(update.task_id)
        spends: list[SpendRecord] = []
        try:
            if order is None:
                raise UpdateRejected(RejectReason.UNKNOWN_TASK, update.task_id)
            if order.device_id != update.device_id:
                raise UpdateRejected(RejectReason.UNKNOWN_TASK, "task belongs to another device")
            if order.fill_id is not None or self.fills is not None:
                # under ARRIVAL a task has no fill until it is ready: still never in plaintext
                raise UpdateRejected(
                    RejectReason.MALFORMED,
                    "a secure-aggregation task answers through its fill, never in plaintext",
                )
            if update.subset_id != order.subset.subset_id or set(update.delta) != set(
                order.subset.names
            ):
                raise UpdateRejected(RejectReason.WRONG_SUBSET, update.subset_id)
            if update.base_version != order.model_version:
                raise UpdateRejected(RejectReason.MALFORMED, "base version differs from the task's")
            _check_delta(update, self.params, max_abs=self.max_delta_abs)
            if self.strategy.needs_base_params:
                update = _with_base(update, self._versions[order.model_version])
            device = self.devices[order.device_id]
            for guard in self.guards:
                decision = guard.admit(update, order, device, context=context, now=now)
                self._apply(order.device_id, decision, now=now)
                if decision.spend is not None:
                    spends.append(decision.spend)
                if not decision.allowed:
                    if decision.reject is None:  # a guard bug: refuse loudly, not silently
                        raise CoordinatorError(
                            f"{type(guard).__name__} refused an update without a reason"
                        )
                    raise UpdateRejected(decision.reject, decision.detail)
            self.strategy.accept(update, server_version=self.version)
        except UpdateRejected as exc:
            self.stats.rejected[exc.reason] += 1
            self._emit(
                EventKind.UPDATE_REJECTED,
                now,
                task_id=update.task_id,
                device_id=update.device_id,
                reason=exc.reason.value,
                detail=exc.detail[:200],
            )
            if order is not None and order.device_id == update.device_id:
                self.task_failed(update.task_id, now=now, reason=f"rejected:{exc.reason.value}")
            return SubmitOutcome(accepted=False, reason=exc.reason, spends=tuple(spends))
        del self.tasks[update.task_id]
        device = self.devices[update.device_id]
        device.completed += 1
        _observe(device, seconds=now - order.issued_at, lower_bound=False)
        if device.state is DeviceState.BUSY:
            device.state = DeviceState.IDLE
        self.stats.accepted += 1
        self._emit(
            EventKind.UPDATE_ACCEPTED,
            now,
            task_id=update.task_id,
            device_id=update.device_id,
            base_version=update.base_version,
            staleness=self.version - update.base_version,
            num_samples=update.num_samples,
        )
        merge = self._maybe_merge(now)
        return SubmitOutcome(accepted=True, merge=merge, spends=tuple(spends))

    def _maybe_merge(self, now: float) -> MergeResult | None:
        return self._merge(now) if self.strategy.ready() else None

    def _merge(self, now: float) -> MergeResult:
        parent = self.version
        result = self.strategy.aggregate(self.params, server_version=self.version)
        self._install(result, parent=parent, now=now)
        return result

    def _install(self, result: MergeResult, *, parent: int, now: float, **more: Any) -> None:
        """Make a merge's params the next version and emit MODEL_MERGED."""
        self.version += 1
        for name in result.coverage:
            self._changed_at[name] = self.version
        self.params = result.params
        self._versions[self.version] = self.params
        self.stats.merges += 1
        self._prune_versions()
        self._emit(
            EventKind.MODEL_MERGED,
            now,
            version=self.version,
            parent=parent,
            strategy=self.strategy.name.value,
            task_ids=list(result.task_ids),
            staleness_max=max(result.staleness, default=0),
            **more,
        )

    # -- secure aggregation ----------------------------------------------------------
    def _book(self) -> FillBook:
        if self.fills is None:
            raise CoordinatorError("this engine runs without secure aggregation")
        return self.fills

    def secagg_params(self, order: TaskOrder) -> SecAggParams:
        """The ``fedward.protocol.messages.SecAggParams`` of a fill member's Task."""
        if order.fill_id is None:
            raise CoordinatorError(f"task {order.task_id} is not in a fill")
        return self._book().task_params(fill_id=order.fill_id, device_id=order.device_id)

    def secagg_receive(
        self,
        *,
        device_id: str,
        task_id: str,
        phase: SecAggPhase | str,
        message: object,
        now: float,
    ) -> FillStep:
        """One device message of a fill (``phase``: a ``SecAggPhase``; ``message``: the
        privacy.secagg dataclass). Refusals (late, out of phase, malformed) are events;
        a phase that every live member has answered closes at once."""
        effects = self._book().receive(
            device_id=device_id, task_id=task_id, phase=phase, message=message, now=now
        )
        return self._with_invited(self._carry_out(effects, now=now), now=now)

    def secagg_tick(self, *, now: float) -> FillStep:
        """Run the phase timers: a phase past its deadline closes without its silent
        members (dropped, their tasks failed), or aborts the fill below the threshold
        (and, under ARRIVAL, open the fills that room now allows)."""
        return self._with_invited(self._carry_out(self._book().tick(now=now), now=now), now=now)

    def secagg_next_deadline(self) -> float | None:
        """When the next fill timer needs ``secagg_tick`` (None: no fill is open)."""
        return self._book().next_deadline()

    def _carry_out(self, effects: FillEffects, *, now: float) -> FillStep:
        for device_id, seconds, lower_bound in effects.timed:
            member = self.devices.get(device_id)
            if member is not None:
                _observe(member, seconds=seconds, lower_bound=lower_bound)
        for kind, details in effects.events:
            self._emit(EventKind(kind.value), now, **details)
        for task_id, reason in effects.failed:
            self.task_failed(task_id, now=now, reason=reason)
        merges = []
        aborted = list(effects.aborted)
        for finished in effects.finished:
            merge = self._merge_fill(finished, now=now)
            if merge is None:
                aborted.append(finished.fill.fill_id)
            else:
                merges.append(merge)
        return FillStep(
            outbound=tuple(effects.outbound),
            merge=merges[-1] if merges else None,
            aborted=tuple(aborted),
            merges=tuple(merges),
        )

    def _merge_fill(self, finished: FinishedFill, *, now: float) -> MergeResult | None:
        """Merge a finished fill's sum (None: it could not be merged, its tasks fail)."""
        fill, book = finished.fill, self._book()
        strategy = self.strategy
        if not isinstance(strategy, SecureAggregated):
            raise CoordinatorError("secure aggregation merges through SecureAggregated")
        survivors = tuple(finished.result.survivors)
        try:
            aggregate = book.aggregate_of(fill, finished.result)
            result = strategy.merge_fill(
                self.params, aggregate=aggregate, server_version=self.version
            )
        except (FillMergeError, CoordinatorError, ValueError) as exc:
            self._emit(
                EventKind.FILL_ABORTED,
                now,
                fill_id=fill.fill_id,
                threshold=fill.threshold,
                phase="finalized",
                reason="merge_failed",
                detail=str(exc)[:200],
                survivors=list(survivors),
                dropouts=sorted(fill.dropped),
            )
            for device in survivors:
                self.task_failed(fill.members[device], now=now, reason="secagg_aborted:merge")
            return None
        for task_id in result.task_ids:  # every survivor's input is in the merge
            order = self.tasks.pop(task_id, None)
            if order is None:
                continue  # failed from outside after its input was in (deadline): still merged
            member = self.devices[order.device_id]
            member.completed += 1
            if member.state is DeviceState.BUSY:
                member.state = DeviceState.IDLE
            self.stats.accepted += 1
        parent = self.version
        self._install(result, parent=parent, now=now, fill_id=fill.fill_id)
        self._emit(
            EventKind.FILL_MERGED,
            now,
            fill_id=fill.fill_id,
            threshold=fill.threshold,
            version=self.version,
            parent=parent,
            base_version=fill.base_version,
            staleness=parent - fill.base_version,
            survivors=list(survivors),
            dropouts=list(finished.result.dropouts),
            task_ids=list(result.task_ids),
        )
        return result

    def _prune_versions(self) -> None:
        """Keep only versions still referenced by a task in flight (and the current)."""
        live = {o.model_version for o in self.tasks.values()} | {self.version}
        for v in list(self._versions):
            if v not in live:
                del self._versions[v]

    # -- saved state ---------------------------------------------------------
    def live_versions(self) -> list[int]:
        """Model versions the engine still holds: the current one and bases in flight."""
        return sorted(self._versions)

    def state_dict(self) -> dict[str, Any]:
        """Everything the engine decides with, JSON-ready except the strategy's deltas.

        Model tensors are not included: the state names the ``live_versions``
        and whoever saves it keeps their tensors (the live service as blobs, by
        version) and hands them back to :meth:`load_state_dict`. The RNG state
        is included, so device sampling after a restart continues the sequence
        it would have followed without one.
        """
        return seal(
            ENGINE_STATE_KIND,
            ENGINE_STATE_FORMAT,
            {
                "version": self.version,
                "live_versions": self.live_versions(),
                "changed_at": dict(self._changed_at),
                "task_counter": self._task_counter,
                "stats": stats_state(self.stats),
                "rng": rng_state(self.rng),
                "devices": [device_state(d) for d in self.devices.values()],
                "tasks": [task_state(t) for t in self.tasks.values()],
                "strategy": self.strategy.state_dict(),
                "guards": [
                    g.state_dict() if isinstance(g, StatefulGuard) else None for g in self.guards
                ],
                "fills": self.fills.state_dict() if self.fills is not None else None,
            },
        )

    def load_state_dict(self, state: Mapping[str, Any], *, versions: Mapping[int, Params]) -> None:
        """Resume from :meth:`state_dict` on an engine freshly built from the same spec.

        ``versions`` holds the tensors of every live version. Checked before
        use: the format, the tensors' names and shapes, that tasks and devices
        agree, and that the strategy accepts the tasks in flight (a synchronous
        round's cohort). All or nothing: on any failure the engine is put back
        as it was and ``StateLoadError`` is raised (a guard's or the strategy's
        own saved-state error is its cause).
        """
        found = state.get("format_version") if isinstance(state, Mapping) else None
        before_fills = type(found) is int and found == ENGINE_STATE_FORMAT_BEFORE_FILLS
        payload = open_envelope(
            state,
            kind=ENGINE_STATE_KIND,
            format_version=ENGINE_STATE_FORMAT_BEFORE_FILLS
            if before_fills
            else ENGINE_STATE_FORMAT,
            error=StateLoadError,
        )
        if before_fills:  # saved before secure aggregation: a state without fills
            payload = {**payload, "fills": None}
        before, before_versions = self.state_dict()["payload"], dict(self._versions)
        try:
            self._load(payload, versions)
        except StateLoadError:
            self._load(before, before_versions)
            raise
        except (SavedStateError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self._load(before, before_versions)
            raise StateLoadError(f"engine state is malformed: {exc!r}") from exc

    def _load(self, state: Mapping[str, Any], versions: Mapping[int, Params]) -> None:
        version = int(state["version"])
        wanted = [int(v) for v in state["live_versions"]]
        if missing := [v for v in wanted if v not in versions]:
            raise StateLoadError(f"no tensors given for live versions {missing}")
        live = {v: versions[v] for v in wanted}
        check_versions(live, self.params, current=version)
        changed_at = {str(n): int(v) for n, v in state["changed_at"].items()}
        if set(changed_at) != set(self.params):
            raise StateLoadError("changed_at does not name the model's tensors")
        devices = keyed(map(device_from_state, state["devices"]), "device_id", "device")
        tasks = keyed(map(task_from_state, state["tasks"]), "task_id", "task")
        check_tasks(tasks, devices, versions=live, tensor_names=set(changed_at), current=version)
        stats = stats_from_state(state["stats"])
        rng = rng_from_state(state["rng"])
        guard_states = list(state["guards"])
        if len(guard_states) != len(self.guards):
            raise StateLoadError(
                f"state has {len(guard_states)} guard states, the engine {len(self.guards)} guards"
            )
        saved_fills = state["fills"]
        if self.fills is None:
            if saved_fills is not None or any(t.fill_id is not None for t in tasks.values()):
                raise StateLoadError(
                    "the state holds secure-aggregation fills; this engine has none"
                )
            fills = None
        else:
            fills = self.fills.restored(saved_fills, tasks=tasks)
        self.strategy.load_state_dict(state["strategy"])
        self.strategy.check_in_flight(frozenset(tasks))
        for guard, guard_state in zip(self.guards, guard_states, strict=True):
            if guard_state is not None:
                if not isinstance(guard, StatefulGuard):
                    raise StateLoadError(f"guard {type(guard).__name__} keeps no state")
                guard.load_state_dict(guard_state)
        self.rng.setstate(rng)
        self.version = version
        self.params = live[version]
        self._versions = live
        self._changed_at = changed_at
        self._task_counter = int(state["task_counter"])
        self.stats = stats
        self.devices = devices
        self.tasks = tasks
        self.fills = fills

    def _emit(self, kind: EventKind, at: float, **details: Any) -> None:
        event = EngineEvent(kind=kind, at=at, details=details)
        for guard in self.guards:  # e.g. the privacy guard settles a fill's charges
            hook = getattr(guard, "engine_event", None)
            if callable(hook):
                hook(event)
        for listener in self.listeners:
            listener(event)


TASK_SECONDS_WEIGHT = 0.5  # weight of the newest observation in Device.task_seconds


def _observe(device: Device, *, seconds: float, lower_bound: bool) -> None:
    """Fold one task's time into ``device.task_seconds`` (an exponentially weighted
    mean; a lower bound, from a member dropped while still training, only raises it)."""
    if not math.isfinite(seconds) or seconds < 0:
        return
    old = device.task_seconds
    if old is None:
        device.task_seconds = seconds
    elif lower_bound:
        device.task_seconds = max(old, seconds)
    else:
        device.task_seconds = (1 - TASK_SECONDS_WEIGHT) * old + TASK_SECONDS_WEIGHT * seconds


def _check_delta(update: ClientUpdate, params: Params, *, max_abs: float | None) -> None:
    """Refuse a delta whose tensor has the wrong shape, or a coordinate beyond
    ``max_abs`` (ingest's own check, ``out_of_range``); this holds for every caller of
    ``Engine.submit``."""
    for name, value in update.delta.items():
        if value.shape != params[name].shape:
            raise UpdateRejected(
                RejectReason.MALFORMED,
                f"{name}: shape {tuple(value.shape)} != the model's {tuple(params[name].shape)}",
            )
        refusal = out_of_range(name, value, max_abs=max_abs)
        if refusal is not None:
            raise refusal


def _with_base(update: ClientUpdate, base: Params) -> ClientUpdate:
    return replace(update, base_params=base)
