"""Synchronous FedAvg (McMahan et al. 2017).

The driver opens a round with a cohort of task ids; the round is ready when
every cohort member has either reported or been declared dropped. The merge is
the sample-weighted mean of the deltas (per tensor, over who trained it)::

    w <- w + eta * sum_i n_i Delta_i / sum_i n_i

Saved state: the base ``state_dict`` plus a ``round`` key holding the open
round's cohort and dropouts, so a round open across a restart closes exactly
as it would have without one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import RejectReason, StateLoadError, StrategyConfigError, UpdateRejected
from .base import ClientUpdate, Params, Schedule, Strategy, StrategyName, apply_step, weighted_mean


class FedAvg(Strategy):
    name = StrategyName.FEDAVG
    schedule = Schedule.SYNCHRONOUS

    def __init__(
        self,
        *,
        shapes: Mapping[str, tuple[int, ...]],
        server_lr: float = 1.0,
        max_staleness: int | None = 0,
    ) -> None:
        super().__init__(shapes=shapes, max_staleness=max_staleness)
        if not server_lr > 0:
            raise StrategyConfigError("server_lr must be > 0")
        self.server_lr = server_lr
        self._cohort: set[str] = set()
        self._dropped: set[str] = set()

    def begin_round(self, task_ids: Iterable[str]) -> None:
        """Open a round for exactly these tasks; any previous buffer must be merged."""
        if self._buffer:
            raise StrategyConfigError("begin_round with unmerged updates in the buffer")
        self._cohort = set(task_ids)
        self._dropped = set()
        if not self._cohort:
            raise StrategyConfigError("a round needs at least one task")

    @property
    def cohort(self) -> frozenset[str]:
        """Task ids of the open round (empty when no round is open)."""
        return frozenset(self._cohort)

    def mark_dropped(self, task_id: str) -> None:
        if task_id in self._cohort and all(u.task_id != task_id for u in self._buffer):
            self._dropped.add(task_id)

    def _check_admission(self, update: ClientUpdate) -> None:
        if update.task_id not in self._cohort or update.task_id in self._dropped:
            raise UpdateRejected(RejectReason.NOT_IN_COHORT, update.task_id)

    @property
    def round_closed(self) -> bool:
        """Every cohort member reported or dropped (the round may hold no update)."""
        return bool(self._cohort) and len(self._buffer) + len(self._dropped) >= len(self._cohort)

    def ready(self) -> bool:
        return self.round_closed and bool(self._buffer)

    def abandon_round(self) -> None:
        """Close a round in which every device dropped (nothing to merge)."""
        self._cohort, self._dropped, self._buffer = set(), set(), []

    def _merge(
        self,
        params: Mapping[str, np.ndarray],
        buffer: list[ClientUpdate],
        staleness: tuple[int, ...],
    ) -> tuple[Params, list[float], dict[str, int]]:
        weights = [float(u.num_samples) for u in buffer]
        mean, coverage = weighted_mean(buffer, weights)
        self._cohort, self._dropped = set(), set()
        return apply_step(params, mean, lr=self.server_lr), weights, coverage

    def config(self) -> dict[str, Any]:
        return {**super().config(), "server_lr": self.server_lr}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "round": {"cohort": sorted(self._cohort), "dropped": sorted(self._dropped)},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the buffer and the open round; refuses a round that cannot have happened."""
        cohort, dropped = _round_of(state)
        previous = self._buffer
        super().load_state_dict(state)
        buffered = {u.task_id for u in self._buffer}
        problem = ""
        if not (dropped | buffered) <= cohort:
            problem = "dropouts and buffered updates must be in the cohort"
        elif dropped & buffered:
            problem = "a task is both dropped and buffered"
        if problem:
            self._buffer = previous
            raise StateLoadError(f"saved round: {problem}")
        self._cohort, self._dropped = cohort, dropped


def _round_of(state: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    saved = state.get("round")
    if not isinstance(saved, Mapping):
        raise StateLoadError("FedAvg state must hold the open round ('round')")
    parts = []
    for key in ("cohort", "dropped"):
        ids = saved.get(key)
        if not isinstance(ids, list) or not all(isinstance(t, str) and t for t in ids):
            raise StateLoadError(f"saved round: {key} must be a list of task ids")
        parts.append(set(ids))
    return parts[0], parts[1]
