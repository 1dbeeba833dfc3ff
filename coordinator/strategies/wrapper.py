"""The base of strategy wrappers: a strategy around any strategy.

A wrapper changes one thing about the strategy it holds (how updates are
admitted, what is added to a merge) and delegates everything else, schedule
hooks included, so ``NormBounded(FedAvg(...))`` runs synchronous rounds and
``NormBounded(NormBounded(FTTE(...)))`` is still a strategy (Flower's DP
wrappers are the model). The engine sees only :class:`Strategy`.

Saved state: an envelope of kind ``WRAPPER_KIND`` whose payload names the
wrapper, its configuration, its own state and the inner strategy's envelope;
on load the wrapper checks its part before the inner state is touched and
assigns its part only after the inner load succeeded.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from fedward.saved_state import open_envelope, seal

from ..errors import StateLoadError, StrategyConfigError
from .base import ClientUpdate, MergeResult, Schedule, Strategy, StrategyName

WRAPPER_KIND = "fedward.coordinator.strategy_wrapper"
WRAPPER_FORMAT = 1


class StrategyWrapper(Strategy):
    """Delegates the whole interface to ``inner``; subclasses override what they change."""

    wrapper: ClassVar[str]  # the wrapper's name in saved state ("norm_bounded")

    def __init__(self, inner: Strategy) -> None:
        if not isinstance(inner, Strategy):
            raise StrategyConfigError(f"can only wrap a Strategy, not {type(inner).__name__}")
        self.inner = inner

    # -- facts -------------------------------------------------------------------------
    @property
    def name(self) -> StrategyName:
        return self.inner.name

    @property
    def schedule(self) -> Schedule:
        return self.inner.schedule

    @property
    def needs_base_params(self) -> bool:
        return self.inner.needs_base_params

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        return self.inner.shapes

    @property
    def max_staleness(self) -> int | None:
        return self.inner.max_staleness

    @property
    def pending(self) -> int:
        return self.inner.pending

    # -- updates and merges ----------------------------------------------------------
    def accept(self, update: ClientUpdate, *, server_version: int) -> None:
        self.inner.accept(update, server_version=server_version)

    def ready(self) -> bool:
        return self.inner.ready()

    def aggregate(self, params: Mapping[str, np.ndarray], *, server_version: int) -> MergeResult:
        return self.inner.aggregate(params, server_version=server_version)

    # -- the schedule ----------------------------------------------------------------
    def dispatch_room(self, *, in_flight: int, concurrency: int) -> int:
        return self.inner.dispatch_room(in_flight=in_flight, concurrency=concurrency)

    def next_round_id(self) -> int | None:
        return self.inner.next_round_id()

    def tasks_dispatched(self, task_ids: Sequence[str]) -> None:
        self.inner.tasks_dispatched(task_ids)

    def task_failed(self, task_id: str) -> None:
        self.inner.task_failed(task_id)

    def check_in_flight(self, task_ids: frozenset[str]) -> None:
        self.inner.check_in_flight(task_ids)

    # -- saved state -----------------------------------------------------------------
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The wrapper's configuration (a saved state must have been written under it)."""

    @abstractmethod
    def own_state(self) -> dict[str, Any]:
        """The wrapper's own mutable state, JSON-ready."""

    @abstractmethod
    def restore_own(self, own: Mapping[str, Any]) -> Any:
        """Check ``own`` and return what :meth:`assign_own` will install (raise first)."""

    @abstractmethod
    def assign_own(self, checked: Any) -> None:
        """Install what :meth:`restore_own` returned (after the inner load succeeded)."""

    def state_dict(self) -> dict[str, Any]:
        return seal(
            WRAPPER_KIND,
            WRAPPER_FORMAT,
            {
                "wrapper": self.wrapper,
                "config": self.config(),
                "own": self.own_state(),
                "inner": self.inner.state_dict(),
            },
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        payload = open_envelope(
            state, kind=WRAPPER_KIND, format_version=WRAPPER_FORMAT, error=StateLoadError
        )
        if payload.get("wrapper") != self.wrapper:
            raise StateLoadError(
                f"state is for wrapper {payload.get('wrapper')!r}, not {self.wrapper!r}"
            )
        if payload.get("config") != self.config():
            raise StateLoadError(f"{self.wrapper} configuration differs from the saved state")
        own = payload.get("own")
        if not isinstance(own, Mapping):
            raise StateLoadError(f"{self.wrapper} state has no 'own' part")
        inner = payload.get("inner")
        if not isinstance(inner, Mapping):
            raise StateLoadError(f"{self.wrapper} state has no inner strategy state")
        checked = self.restore_own(own)
        self.inner.load_state_dict(inner)
        self.assign_own(checked)
