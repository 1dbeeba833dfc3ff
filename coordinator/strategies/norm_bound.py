"""A robustness wrapper for any strategy: bound each update's energy.

FTTE damps divergent updates inside its own weights; a baseline has no such
term. ``NormBounded`` gives one to any strategy, the way Flower wraps
strategies for DP: on the way in, an update whose energy (mean squared value
per trained coordinate, ``ClientUpdate.energy()``) exceeds ``tolerance`` times
the median of recent updates is scaled down to that bound, then handed to the
inner strategy unchanged in every other respect::

    q = update energy,  m = median of q over the last ``window`` accepted updates and q
    if q > tolerance * m:  Delta <- Delta * sqrt(tolerance * m / q)

This is norm clipping with an adaptive bound (a standard defence against
divergent or poisoned updates), measured against the same statistic and
tolerance as FTTE's energy term so the two compare like for like. It is a
:class:`StrategyWrapper`: it wraps FedAvg (synchronous rounds pass through
the schedule hooks), FedBuff, FTTE or another wrapper. The window and the
count of bounded updates are its own saved state, checked on load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import StateLoadError, StrategyConfigError
from .base import ClientUpdate, Strategy, validate_update
from .energy import EnergyWindow
from .wrapper import StrategyWrapper


class NormBounded(StrategyWrapper):
    """Scales an update whose energy is past ``tolerance`` x the recent median down to it."""

    wrapper = "norm_bounded"

    def __init__(self, inner: Strategy, *, tolerance: float = 10.0, window: int = 200) -> None:
        super().__init__(inner)
        if not tolerance >= 1:
            raise StrategyConfigError("tolerance must be >= 1 (a multiple of the median)")
        if window < 1:
            raise StrategyConfigError("window must be >= 1")
        self.tolerance = tolerance
        self.window = window
        self.clipped = 0
        self._energies = EnergyWindow(window)

    def accept(self, update: ClientUpdate, *, server_version: int) -> None:
        # Validate before measuring: a malformed update never reaches the
        # energy window or gets scaled (the inner strategy checks again).
        validate_update(
            update,
            self.inner.shapes,
            server_version=server_version,
            max_staleness=self.inner.max_staleness,
        )
        energy = update.energy()
        bounded = self.bound(update)
        self.inner.accept(bounded, server_version=server_version)
        self._energies.extend([energy])
        if bounded is not update:
            self.clipped += 1

    def bound(self, update: ClientUpdate) -> ClientUpdate:
        """The update as it will be merged (itself when within the bound)."""
        energy = update.energy()
        limit = self.tolerance * self._energies.median_with([energy])
        # No scale to judge by when the median is zero (recent updates all
        # exactly zero): leave the update alone rather than zero it out.
        if not np.isfinite(energy) or limit <= 0 or energy <= limit:
            return update
        scale = float(np.sqrt(limit / energy))
        return replace(
            update,
            delta={n: (v * np.float32(scale)).astype(np.float32) for n, v in update.delta.items()},
            update_energy=energy * scale * scale,
        )

    # -- saved state ---------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "window": self.window}

    def own_state(self) -> dict[str, Any]:
        return {"energies": self._energies.state(), "clipped": self.clipped}

    def restore_own(self, own: Mapping[str, Any]) -> tuple[EnergyWindow, int]:
        clipped = own.get("clipped")
        if isinstance(clipped, bool) or not isinstance(clipped, int) or clipped < 0:
            raise StateLoadError("norm bound state needs a 'clipped' count >= 0")
        energies = EnergyWindow.from_state(
            own.get("energies"), size=self.window, what="norm bound state"
        )
        return energies, clipped

    def assign_own(self, checked: tuple[EnergyWindow, int]) -> None:
        self._energies, self.clipped = checked
