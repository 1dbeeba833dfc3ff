"""Synchronous FedAvg (McMahan et al. 2017).

The driver opens a round with a cohort of task ids; the round is ready when
every cohort member has either reported or been declared dropped. The merge is
the sample-weighted mean of the deltas (per tensor, over who trained it)::

    w <- w + eta * sum_i n_i Delta_i / sum_i n_i

Over-selection (as deployed, Bonawitz et al. 2019): with ``over_selection =
o`` a round dispatches ``ceil(C * (1 + o))`` tasks for a goal of ``C``
(``concurrency``) reports and merges on the ``C``-th; the round's other tasks
are then late (refused as ``NOT_IN_COHORT`` if they report; the driver may
cancel them). A round deadline is the driver's: it fails the round's tasks
still in flight when the deadline passes, and the round closes on what it has.

The round lives here, behind the strategy's schedule hooks: the engine asks
``dispatch_room`` (a whole cohort when no round is open, else nothing), hands
over what it issued (``tasks_dispatched`` opens the round) and reports
failures (``task_failed``: a dropout; a round in which every device dropped
is abandoned). The engine never names FedAvg.

Saved state: the base ``state_dict`` plus a ``round`` key holding the round
number and the open round's cohort and dropouts, so a round open across a
restart closes exactly as it would have without one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fedward.tinytrain.models import Params

from ..errors import RejectReason, StateLoadError, StrategyConfigError, UpdateRejected
from .base import (
    ClientUpdate,
    Schedule,
    StrategyBase,
    StrategyName,
    apply_step,
    weighted_mean,
)


class FedAvg(StrategyBase):
    name = StrategyName.FEDAVG
    schedule = Schedule.SYNCHRONOUS

    def __init__(
        self,
        *,
        shapes: Mapping[str, tuple[int, ...]],
        server_lr: float = 1.0,
        max_staleness: int | None = 0,
        over_selection: float = 0.0,
    ) -> None:
        super().__init__(shapes=shapes, max_staleness=max_staleness)
        if not server_lr > 0:
            raise StrategyConfigError("server_lr must be > 0")
        if not 0 <= over_selection <= 2:
            raise StrategyConfigError("over_selection must be in [0, 2]")
        self.server_lr = server_lr
        self.over_selection = over_selection
        self._goal = 0  # reports that close the open round (0: every cohort member)
        self._late: set[str] = set()  # over-selected tasks of closed rounds, still out
        self._cohort: set[str] = set()
        self._dropped: set[str] = set()
        self._round = 0  # rounds opened so far; the open one's number when one is open

    # -- the schedule: one cohort at a time ------------------------------------------
    def dispatch_room(self, *, in_flight: int, concurrency: int) -> int:
        """A whole cohort when no round is open; nothing while one is."""
        del in_flight  # a round's tasks are all in flight or answered
        if self._cohort:
            return 0
        self._goal = concurrency if self.over_selection else 0
        return math.ceil(concurrency * (1 + self.over_selection))

    def next_round_id(self) -> int | None:
        return self._round + 1

    def tasks_dispatched(self, task_ids: Sequence[str]) -> None:
        self.begin_round(task_ids)

    def task_failed(self, task_id: str) -> None:
        """A cohort member dropped; a round where everyone dropped closes empty."""
        self._late.discard(task_id)
        self.mark_dropped(task_id)
        if self.round_closed and not self._buffer:
            self.abandon_round()

    def check_in_flight(self, task_ids: frozenset[str]) -> None:
        """Every cohort member is in flight, buffered or dropped, and nothing else is in
        flight: otherwise the round could never close and the study would stall."""
        if not task_ids <= self._cohort | self._late:
            raise StateLoadError("tasks in flight are not the open round's cohort")
        task_ids = task_ids - self._late
        accounted = task_ids | {u.task_id for u in self._buffer} | self._dropped
        if accounted != self._cohort:
            missing = sorted(self._cohort - accounted)
            raise StateLoadError(
                f"the open round's tasks {missing} are neither in flight, buffered nor dropped"
            )

    def begin_round(self, task_ids: Iterable[str]) -> None:
        """Open a round for exactly these tasks; any previous buffer must be merged."""
        if self._buffer:
            raise StrategyConfigError("begin_round with unmerged updates in the buffer")
        cohort = set(task_ids)
        if not cohort:
            raise StrategyConfigError("a round needs at least one task")
        self._cohort, self._dropped = cohort, set()
        self._round += 1

    @property
    def cohort(self) -> frozenset[str]:
        """Task ids of the open round (empty when no round is open)."""
        return frozenset(self._cohort)

    def mark_dropped(self, task_id: str) -> None:
        if task_id in self._cohort and all(u.task_id != task_id for u in self._buffer):
            self._dropped.add(task_id)

    def late_tasks(self) -> frozenset[str]:
        """Over-selected tasks whose round closed without them (the driver may cancel them)."""
        return frozenset(self._late)

    def accept(self, update: ClientUpdate, *, server_version: int) -> None:
        self._late.discard(update.task_id)  # answered, whether refused or not
        super().accept(update, server_version=server_version)

    def _check_admission(self, update: ClientUpdate) -> None:
        if update.task_id not in self._cohort or update.task_id in self._dropped:
            raise UpdateRejected(RejectReason.NOT_IN_COHORT, update.task_id)

    @property
    def round_closed(self) -> bool:
        """Every cohort member reported or dropped (the round may hold no update)."""
        return bool(self._cohort) and len(self._buffer) + len(self._dropped) >= len(self._cohort)

    def ready(self) -> bool:
        reached_goal = bool(self._goal) and len(self._buffer) >= self._goal
        return (self.round_closed or reached_goal) and bool(self._buffer)

    def abandon_round(self) -> None:
        """Close a round in which every device dropped (nothing to merge)."""
        self._cohort, self._dropped, self._buffer = set(), set(), []
        self._goal = 0

    def _merge(
        self,
        params: Mapping[str, np.ndarray],
        buffer: list[ClientUpdate],
        staleness: tuple[int, ...],
    ) -> tuple[Params, list[float], dict[str, int]]:
        weights = [float(u.num_samples) for u in buffer]
        mean, coverage = weighted_mean(buffer, weights)
        reported = {u.task_id for u in buffer}
        self._late |= self._cohort - reported - self._dropped
        self._cohort, self._dropped, self._goal = set(), set(), 0
        return apply_step(params, mean, lr=self.server_lr), weights, coverage

    def config(self) -> dict[str, Any]:
        extra = {"over_selection": self.over_selection} if self.over_selection else {}
        return {**super().config(), "server_lr": self.server_lr, **extra}

    def _state_payload(self) -> dict[str, Any]:
        saved: dict[str, Any] = {
            "number": self._round,
            "cohort": sorted(self._cohort),
            "dropped": sorted(self._dropped),
        }
        if self._goal or self._late:  # over-selection only: a plain round saves as before
            saved |= {"goal": self._goal, "late": sorted(self._late)}
        return {**super()._state_payload(), "round": saved}

    def _load_payload(self, payload: Mapping[str, Any], *, buffer: Sequence[ClientUpdate]) -> None:
        """Restore the open round; refuses a round that cannot have happened."""
        number, cohort, dropped = _round_of(payload)
        buffered = {u.task_id for u in buffer}
        if not (dropped | buffered) <= cohort:
            raise StateLoadError("saved round: dropouts and buffered updates must be in the cohort")
        if dropped & buffered:
            raise StateLoadError("saved round: a task is both dropped and buffered")
        if cohort and number < 1:
            raise StateLoadError("saved round: an open round has a number >= 1")
        self._cohort, self._dropped, self._round = cohort, dropped, number
        saved = payload["round"]
        goal, late = saved.get("goal", 0), saved.get("late", [])
        if isinstance(goal, bool) or not isinstance(goal, int) or goal < 0:
            raise StateLoadError("saved round: 'goal' must be an int >= 0")
        if not isinstance(late, list) or not all(isinstance(t, str) and t for t in late):
            raise StateLoadError("saved round: late must be a list of task ids")
        self._goal, self._late = goal, set(late)


def _round_of(state: Mapping[str, Any]) -> tuple[int, set[str], set[str]]:
    saved = state.get("round")
    if not isinstance(saved, Mapping):
        raise StateLoadError("FedAvg state must hold the open round ('round')")
    number = saved.get("number")
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise StateLoadError("saved round: 'number' must be an int >= 0")
    parts = []
    for key in ("cohort", "dropped"):
        ids = saved.get(key)
        if not isinstance(ids, list) or not all(isinstance(t, str) and t for t in ids):
            raise StateLoadError(f"saved round: {key} must be a list of task ids")
        parts.append(set(ids))
    return number, parts[0], parts[1]
