"""A robustness wrapper for any buffered strategy: bound each update's energy.

FTTE damps divergent updates inside its own weights; a baseline has no such
term. ``NormBounded`` gives one to any buffered strategy, the way Flower wraps
strategies for DP: on the way in, an update whose energy (mean squared value
per coordinate) exceeds ``tolerance`` times the median of recent updates is
scaled down to that bound, then handed to the inner strategy unchanged in
every other respect::

    q = update energy,  m = median of q over the last ``window`` accepted updates and q
    if q > tolerance * m:  Delta <- Delta * sqrt(tolerance * m / q)

This is norm clipping with an adaptive bound (a standard defence against
divergent or poisoned updates), measured against the same statistic and
tolerance as FTTE's variance term so the two compare like for like. The
window is saved with the inner strategy's state and checked on load. Only
buffered strategies can be wrapped: FedAvg's synchronous rounds are driven by
the engine through its own type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import StateLoadError, StrategyConfigError
from .base import (
    BufferedStrategy,
    ClientUpdate,
    MergeResult,
    Schedule,
    StrategyName,
    validate_update,
)
from .energy import EnergyWindow

WRAPPER = "norm_bounded"


class NormBounded:
    """Wraps a :class:`BufferedStrategy`; same interface (accept, ready, aggregate)."""

    def __init__(
        self, inner: BufferedStrategy, *, tolerance: float = 10.0, window: int = 200
    ) -> None:
        if not isinstance(inner, BufferedStrategy) or inner.schedule is not Schedule.BUFFERED:
            raise StrategyConfigError("only buffered strategies can be norm-bounded")
        if not tolerance >= 1:
            raise StrategyConfigError("tolerance must be >= 1 (a multiple of the median)")
        if window < 1:
            raise StrategyConfigError("window must be >= 1")
        self.inner = inner
        self.tolerance = tolerance
        self.window = window
        self.clipped = 0
        self._energies = EnergyWindow(window)

    # -- the strategy interface, delegated ----------------------------------
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
    def pending(self) -> int:
        return self.inner.pending

    def ready(self) -> bool:
        return self.inner.ready()

    def aggregate(self, params: Mapping[str, np.ndarray], *, server_version: int) -> MergeResult:
        return self.inner.aggregate(params, server_version=server_version)

    def accept(self, update: ClientUpdate, *, server_version: int) -> None:
        # Validate before measuring: a malformed update never reaches the
        # energy window or gets scaled (the inner strategy checks again).
        validate_update(
            update,
            self.inner.shapes,
            server_version=server_version,
            max_staleness=self.inner.max_staleness,
        )
        energy = update.mean_square()
        bounded = self.bound(update)
        self.inner.accept(bounded, server_version=server_version)
        self._energies.extend([energy])
        if bounded is not update:
            self.clipped += 1

    def bound(self, update: ClientUpdate) -> ClientUpdate:
        """The update as it will be merged (itself when within the bound)."""
        energy = update.mean_square()
        limit = self.tolerance * self._energies.median_with([energy])
        # No scale to judge by when the median is zero (recent updates all
        # exactly zero): leave the update alone rather than zero it out.
        if not np.isfinite(energy) or limit <= 0 or energy <= limit:
            return update
        scale = float(np.sqrt(limit / energy))
        return replace(
            update,
            delta={n: (v * np.float32(scale)).astype(np.float32) for n, v in update.delta.items()},
            update_msq=energy * scale * scale,
        )

    # -- saved state ---------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"wrapper": WRAPPER, "tolerance": self.tolerance, "window": self.window}

    def state_dict(self) -> dict[str, Any]:
        # Flat: the inner state as is (so the store finds the buffer where it
        # always is) plus this wrapper's own part under one key.
        own = {**self.config(), "energies": self._energies.state(), "clipped": self.clipped}
        return {**self.inner.state_dict(), WRAPPER: own}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        own = state.get(WRAPPER)
        if not isinstance(own, Mapping):
            raise StateLoadError("state has no norm bound part: it was saved without the wrapper")
        if {k: own.get(k) for k in self.config()} != self.config():
            raise StateLoadError("norm bound configuration differs from the saved state")
        clipped = own.get("clipped")
        if isinstance(clipped, bool) or not isinstance(clipped, int) or clipped < 0:
            raise StateLoadError("norm bound state needs a 'clipped' count >= 0")
        energies = EnergyWindow.from_state(
            own.get("energies"), size=self.window, what="norm bound state"
        )
        self.inner.load_state_dict({k: v for k, v in state.items() if k != WRAPPER})
        self._energies = energies
        self.clipped = clipped
