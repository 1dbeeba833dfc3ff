"""The fill book: every open fill of a study, its saved form, and what a task tells its device.

The engine holds one book when its study runs under a ``SecAggPolicy``. The
book opens a fill per cohort (a fresh 32-byte session id from the injected
``random_bytes``, the subset's ``VectorLayout`` digest, the policy's
threshold), routes each device message to its fill, runs the phase timers on
``tick``, and hands finished fills back as :class:`FillAggregate` for the
strategy wrapper to merge. Fills finish in any order; each merges when it
finishes (completion order). Closed fills leave the book; a message for one is
refused like a late member's.

Under ``CohortBinding.ARRIVAL`` the book also holds the *ready queue*: tasks
whose devices have trained and wait for a fill (task id -> the time it said so,
in arrival order). The engine opens a fill from the first ``m`` ready tasks of
one subset (``take_ready``); the queue is saved with the fills.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedward.privacy.secagg import SecAggSession
from fedward.privacy.secagg.layout import VectorLayout
from fedward.protocol.messages import SecAggParams, SecAggPhase, SecAggWeighting
from fedward.tinytrain.subsets import SubsetSpec

from ..errors import CoordinatorError, StateLoadError
from ..strategies.secure import FillAggregate, SecureAggregated
from .energy import reference_from_histogram
from .fill import (
    Fill,
    FillEffects,
    FillEvent,
    FillOutbound,
    FillWeighting,
    IdentityEvidence,
    IdentityKeys,
    _keys_for,
)
from .policy import SecAggPolicy

__all__ = ["FillBook", "SESSION_ID_BYTES"]

SESSION_ID_BYTES = 32
CLOSED_MEMORY = 4096  # tasks of closed fills remembered, to name a late message's reason
RandomBytes = Callable[[int], bytes]


class FillBook:
    def __init__(
        self,
        *,
        policy: SecAggPolicy,
        model_shapes: Mapping[str, tuple[int, ...]],
        random_bytes: RandomBytes,
        identity_keys: IdentityKeys | None = None,
        identity_evidence: IdentityEvidence | None = None,
    ) -> None:
        self.policy = policy
        self.model_shapes = {n: tuple(s) for n, s in model_shapes.items()}
        self.random_bytes = random_bytes
        self.identity_keys = identity_keys
        self.identity_evidence = identity_evidence
        self.fills: dict[str, Fill] = {}  # open fills, in the order they opened
        self.counter = 0
        self.refused = 0  # messages refused by fills that have closed since, and unknown ones
        self._queued: list[FillOutbound] = []  # ABORTs decided outside a fill step
        # task id -> (fill id, the phase its member was dropped in, or "closed"); not saved
        self._closed: dict[str, tuple[str, str]] = {}
        # ARRIVAL: task id -> (subset id, when its device said it had trained), in order
        self.ready: dict[str, tuple[str, float]] = {}
        # the largest fill masks the whole model: fail now, not at the first dispatch
        policy.check_vector(sum(_size(s) for s in self.model_shapes.values()))

    def _evidence(self, device_id: str) -> bytes | None:
        """The roster evidence of ``device_id`` from the hook the book holds *now* (None:
        no hook), so a hook set after fills were opened or restored reaches them too."""
        hook = self.identity_evidence
        return None if hook is None else hook(device_id)

    def _identity_keys_now(self) -> IdentityKeys | None:
        """The enrolled-key lookup the book holds *now* (a fill built without one binds
        it when it appears)."""
        return self.identity_keys

    # -- opening -------------------------------------------------------------------
    def room(self) -> int:
        """How many new fills may open now (``fills_in_flight``, then ``training_budget``)."""
        room = self.policy.fills_in_flight - len(self.fills)
        budget = self.policy.training_budget
        if budget is None or room <= 0:
            return room
        training = sum(fill.training for fill in self.fills.values())
        return max(0, min(room, (budget - training) // self.policy.cohort_size))

    def waiting(self) -> int:
        """Tasks trained and waiting for their cohort (ARRIVAL): no training slot.

        Members of an open fill are not counted: the protocol is their upload, and
        freeing their slots too let so many fills run at once that each merged
        several versions stale (measured: README, "Cohorts bound at arrival").
        """
        return len(self.ready)

    def mark_ready(self, *, task_id: str, subset_id: str, now: float) -> None:
        """``task_id``'s device has trained (ARRIVAL); it waits for the next fill."""
        if not self.policy.at_arrival:
            raise CoordinatorError("cohorts are bound at dispatch: no task says it is ready")
        if task_id in self.ready or self.fill_of(task_id) is not None:
            raise CoordinatorError(f"task {task_id} has already said it is ready")
        self.ready[task_id] = (subset_id, now)

    def take_ready(self) -> list[str] | None:
        """The task ids of the next cohort (the first ``m`` ready of one subset, the
        subset whose oldest ready task has waited longest), or None: none is full."""
        size = self.policy.cohort_size
        by_subset: dict[str, list[str]] = {}
        for task_id, (subset_id, _at) in self.ready.items():
            by_subset.setdefault(subset_id, []).append(task_id)
        full = [tasks for tasks in by_subset.values() if len(tasks) >= size]
        if not full:
            return None
        chosen = min(full, key=lambda tasks: self.ready[tasks[0]][1])[:size]
        for task_id in chosen:
            del self.ready[task_id]
        return chosen

    def drop_ready(self, task_id: str) -> bool:
        """A ready task failed before its fill opened (True if it was waiting)."""
        return self.ready.pop(task_id, None) is not None

    def next_fill_id(self) -> str:
        self.counter += 1
        return f"fill-{self.counter:07d}"

    def weighting_for(self, strategy: object) -> FillWeighting:
        """The public weighting numbers of a new fill (fixed for its whole cohort):
        FTTE's energy damping from ``SecureAggregated``'s current reference; under
        distributed DP every weight is 1 (the noise is calibrated to one clipped update)."""
        if not isinstance(strategy, SecureAggregated):
            raise CoordinatorError("secure aggregation merges through SecureAggregated")
        if self.policy.ddp is not None:
            return FillWeighting(
                energy_reference=None, energy_tolerance=1.0, energy_beta=0.0, norm_bound=None
            )
        return FillWeighting(
            energy_reference=strategy.energy_reference,
            energy_tolerance=max(1.0, strategy.energy_tolerance),
            energy_beta=strategy.energy_beta,
            norm_bound=self.policy.norm_bound,
        )

    def layout_for(self, subset: SubsetSpec) -> VectorLayout:
        return VectorLayout.for_subset(self.model_shapes, subset.names)

    def open(
        self,
        *,
        fill_id: str,
        members: Mapping[str, str],
        subset: SubsetSpec,
        base_version: int,
        weighting: FillWeighting,
        now: float,
        staleness_weights: Mapping[str, float] | None = None,
    ) -> FillEffects:
        """A new fill for ``members`` (device id -> its task id), all on ``subset``
        (``staleness_weights``: device id -> its public staleness weight, ARRIVAL)."""
        policy = self.policy
        if len(members) != policy.cohort_size:
            raise CoordinatorError(f"a cohort has {policy.cohort_size} members, not {len(members)}")
        layout = self.layout_for(subset)
        session_id = self.random_bytes(SESSION_ID_BYTES)
        if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
            raise CoordinatorError("random_bytes returned the wrong number of bytes")
        length = layout.vector_length
        if policy.ddp is not None:
            from fedward.privacy.secagg import ddp as distributed

            length = int(distributed.padded_length(length))
        session = SecAggSession(
            session_id=session_id,
            round_index=self.counter,
            cohort=tuple(members),
            vector_length=length,
            index_set_digest=layout.digest,
        )
        fill = Fill(
            fill_id=fill_id,
            config=policy.config(threshold=policy.threshold),
            session=session,
            layout=layout,
            subset=subset,
            members=members,
            base_version=base_version,
            weighting=weighting,
            opened_at=now,
            deadline=now + policy.timeout_for(SecAggPhase.ADVERTISE.value),
            timeout_for=policy.timeout_for,
            identity_keys=_keys_for(session.cohort, self.identity_keys),
            identity_evidence=self._evidence,
            identity_keys_source=self._identity_keys_now,
            straggler_grace=policy.fill_straggler_grace,
            staleness_weights=staleness_weights,
        )
        self.fills[fill_id] = fill
        effects = FillEffects()
        effects.events.append(
            (
                FillEvent.OPENED,
                {
                    "fill_id": fill_id,
                    "cohort": list(session.cohort),
                    "task_ids": [members[d] for d in session.cohort],
                    "cohort_size": session.n,
                    "threshold": fill.threshold,
                    "model_version": base_version,
                    "subset_id": subset.subset_id,
                    "phase": SecAggPhase.ADVERTISE.value,
                    "deadline": fill.deadline,
                },
            )
        )
        return effects

    # -- routing ---------------------------------------------------------------------
    def fill_of(self, task_id: str) -> Fill | None:
        for fill in self.fills.values():
            if task_id in fill.members.values():
                return fill
        return None

    def receive(
        self, *, device_id: str, task_id: str, phase: SecAggPhase | str, message: object, now: float
    ) -> FillEffects:
        fill = self.fill_of(task_id)
        if fill is None or fill.members.get(device_id) != task_id:
            self.refused += 1
            details: dict[str, Any] = {
                "fill_id": fill.fill_id if fill is not None else "",
                "device_id": device_id,
                "task_id": task_id,
                "phase": SecAggPhase(phase).value,
                "reason": "not_its_task" if fill is not None else "unknown_task",
            }
            closed = self._closed.get(task_id) if fill is None else None
            if closed is not None:  # a member of a fill that has closed since
                details["fill_id"], dropped_in = closed
                details["reason"] = "fill_closed" if dropped_in == "closed" else "declared_dropped"
                if dropped_in != "closed":
                    details["dropped_in"] = dropped_in
            effects = FillEffects()
            effects.events.append((FillEvent.REFUSED, details))
            return self._flush(effects)
        return self._settle(
            fill.receive(device_id=device_id, phase=phase, message=message, now=now)
        )

    def next_deadline(self) -> float | None:
        """The earliest time an open fill's timer needs a tick (None: no fill open)."""
        return min((f.next_deadline() for f in self.fills.values()), default=None)

    def tick(self, *, now: float) -> FillEffects:
        effects = FillEffects()
        for fill in list(self.fills.values()):
            _extend(effects, self._settle(fill.tick(now=now)))
        return self._flush(effects)

    def member_failed(self, *, task_id: str, device_id: str, reason: str) -> FillEffects:
        """A member's task failed outside the fill; its ABORT waits for the next step."""
        fill = self.fill_of(task_id)
        if fill is None:
            return FillEffects()
        effects = self._settle(fill.member_failed(device_id, reason=reason))
        self._queued.extend(effects.outbound)
        effects.outbound = []
        return effects

    def _settle(self, effects: FillEffects) -> FillEffects:
        """Closed fills leave the book (finished ones once merged by the engine)."""
        for fill_id in [f for f, fill in self.fills.items() if fill.closed]:
            fill = self.fills.pop(fill_id)
            self.refused += fill.refused
            for device, task_id in fill.members.items():
                dropped = fill.dropped.get(device)
                self._closed[task_id] = (fill_id, dropped.value if dropped else "closed")
            while len(self._closed) > CLOSED_MEMORY:
                del self._closed[next(iter(self._closed))]
        return self._flush(effects)

    def _flush(self, effects: FillEffects) -> FillEffects:
        if self._queued:
            effects.outbound[:0] = self._queued
            self._queued = []
        return effects

    # -- what the engine needs ----------------------------------------------------------
    def aggregate_of(self, fill: Fill, result: Any) -> FillAggregate:
        survivors = tuple(result.survivors)
        reference = None
        if self.policy.histogram:
            counts = tuple(result.count_sums)
            edges = self.policy.energy_bins
            if len(counts) != len(edges) + 1:
                raise CoordinatorError(
                    f"fill {fill.fill_id}: {len(counts)} count words, expected {len(edges) + 1}"
                )
            reference = reference_from_histogram(counts, edges)
        return FillAggregate(
            fill_id=fill.fill_id,
            result=result,
            layout=fill.layout,
            task_ids=tuple(fill.members[d] for d in survivors),
            base_version=fill.base_version,
            session_seed=fill.session.session_id,
            energy_reference=reference,
            ddp=self.policy.ddp,
        )

    def task_params(self, *, fill_id: str, device_id: str | None = None) -> SecAggParams:
        """What a member's Task carries: the same for the whole cohort, but for
        ``device_id``'s staleness weight (cohorts formed at arrival)."""
        fill = self.fills.get(fill_id)
        if fill is None:
            raise CoordinatorError(f"fill {fill_id} is not open")
        policy = self.policy
        staleness = fill.staleness_weights.get(device_id or "", 1.0)
        return SecAggParams(
            fill_id=fill.fill_id,
            config=fill.config.to_plain(),
            session=fill.session.to_plain(),
            phase_timeout_s=policy.phase_timeout_s,
            weighting=SecAggWeighting(**fill.weighting.to_plain(), staleness_weight=staleness),
            energy_bins=policy.energy_bins if policy.histogram else (),
            ddp=_ddp_plain(policy.ddp),
        )

    # -- saved state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "counter": self.counter,
            "refused": self.refused,
            "fills": [fill.state_dict() for fill in self.fills.values()],
            "ready": [[t, s, at] for t, (s, at) in self.ready.items()],
        }

    def restored(self, saved: Mapping[str, Any] | None, *, tasks: Mapping[str, Any]) -> FillBook:
        """A new book from :meth:`state_dict` (None: a state saved before fills existed),
        checked against the engine's restored ``tasks``; this book is unchanged."""
        book = FillBook(
            policy=self.policy,
            model_shapes=self.model_shapes,
            random_bytes=self.random_bytes,
            identity_keys=self.identity_keys,
            identity_evidence=self.identity_evidence,
        )
        if saved is not None:
            try:
                book.counter = int(saved["counter"])
                book.refused = int(saved["refused"])
                fills = list(saved["fills"])
                book.ready = {str(t): (str(s), float(at)) for t, s, at in saved.get("ready", [])}
            except (KeyError, TypeError, ValueError) as exc:
                raise StateLoadError(f"the saved fill book is malformed: {exc!r}") from exc
            for item in fills:
                fill = Fill.from_state(
                    item,
                    policy=self.policy,
                    model_shapes=self.model_shapes,
                    identity_keys=self.identity_keys,
                    identity_evidence=book._evidence,
                    identity_keys_source=book._identity_keys_now,
                )
                if fill.fill_id in book.fills:
                    raise StateLoadError(f"fill {fill.fill_id} appears twice")
                book.fills[fill.fill_id] = fill
        _check_tasks(book, tasks)
        return book


def _check_tasks(book: FillBook, tasks: Mapping[str, Any]) -> None:
    """Every live member's task is in flight on its device with its fill's id and
    subset, and every task naming a fill is a live member's."""
    owners: dict[str, str] = {}
    for fill in book.fills.values():
        for device in fill.live:
            task_id = fill.members[device]
            order = tasks.get(task_id)
            if order is None or order.device_id != device or order.fill_id != fill.fill_id:
                raise StateLoadError(
                    f"fill {fill.fill_id}: member {device}'s task is not in flight"
                )
            if order.subset.subset_id != fill.subset.subset_id:
                raise StateLoadError(f"fill {fill.fill_id}: task {task_id} trains another subset")
            if not book.policy.at_arrival and order.model_version != fill.base_version:
                raise StateLoadError(f"fill {fill.fill_id}: task {task_id} has another base")
            owners[task_id] = fill.fill_id
    if book.ready and not book.policy.at_arrival:
        raise StateLoadError("the saved book has ready tasks; this policy binds at dispatch")
    for task_id, (subset_id, _at) in book.ready.items():
        order = tasks.get(task_id)
        if order is None or order.fill_id is not None or task_id in owners:
            raise StateLoadError(f"ready task {task_id} is not in flight outside a fill")
        if order.subset.subset_id != subset_id:
            raise StateLoadError(f"ready task {task_id} trains another subset")
    for task_id, order in tasks.items():
        fill_id = getattr(order, "fill_id", None)
        if fill_id is not None and owners.get(task_id) != fill_id:
            raise StateLoadError(f"task {task_id} names fill {fill_id}, which does not hold it")


def _size(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _ddp_plain(ddp: Any) -> dict[str, Any] | None:
    if ddp is None:
        return None
    to_plain = getattr(ddp, "to_plain", None)
    if callable(to_plain):
        return dict(to_plain())
    return dataclasses.asdict(ddp)


def _extend(into: FillEffects, more: FillEffects) -> None:
    into.outbound.extend(more.outbound)
    into.events.extend(more.events)
    into.failed.extend(more.failed)
    into.timed.extend(more.timed)
    into.finished.extend(more.finished)
    into.aborted.extend(more.aborted)


def ordered_members(orders: Sequence[Any]) -> dict[str, str]:
    """device id -> task id of a cohort's task orders."""
    return {o.device_id: o.task_id for o in orders}
