"""The look-back window of update energies that FTTE's energy term and
``NormBounded`` judge an update against (same statistic, same median).

Energy is an update's mean squared value per trained coordinate
(``fedward.protocol.messages.update_energy``). The reference is the
median over the last ``size`` accepted (or merged) updates plus the ones being
judged, so a buffer that is half divergent cannot move it. The window is
saved state, checked on load.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

from ..errors import StateLoadError


class DeviceEnergies:
    """Each device's latest update energy, for the last ``size`` devices heard from.

    A quantile over these counts every device once, however often it reports:
    a slow group of devices is as present here as a fast one.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._latest: dict[str, float] = {}  # insertion order = least recently heard first

    def quantile_with(self, updates: Iterable[tuple[str, float]], q: float) -> float:
        merged = dict(self._latest)
        for device, energy in updates:
            merged.pop(device, None)
            merged[device] = energy
        values = list(merged.values())[-self.size :] if self.size else list(merged.values())
        return float(np.quantile(values, q))

    def extend(self, updates: Iterable[tuple[str, float]]) -> None:
        for device, energy in updates:
            self._latest.pop(device, None)
            self._latest[device] = energy
        while self.size and len(self._latest) > self.size:
            del self._latest[next(iter(self._latest))]

    def state(self) -> list[list[str | float]]:
        return [[d, e] for d, e in self._latest.items()]

    @classmethod
    def from_state(cls, values: object, *, size: int, what: str) -> DeviceEnergies:
        """Restore :meth:`state` output (absent in states saved before it: empty)."""
        window = cls(size)
        if values is None:
            return window
        if (
            not isinstance(values, list)
            or len(values) > size
            or not all(
                isinstance(v, list)
                and len(v) == 2
                and isinstance(v[0], str)
                and isinstance(v[1], int | float)
                and not isinstance(v[1], bool)
                and np.isfinite(v[1])
                and v[1] >= 0
                for v in values
            )
        ):
            raise StateLoadError(
                f"{what} needs 'device_energies': at most {size} [device id, energy >= 0] pairs"
            )
        window.extend((str(d), float(e)) for d, e in values)
        return window


class EnergyWindow:
    def __init__(self, size: int) -> None:
        self.size = size
        self._values: deque[float] = deque(maxlen=size)

    def median_with(self, energies: Iterable[float]) -> float:
        """Median over the window and ``energies`` (those being judged now)."""
        return float(np.median([*self._values, *energies]))

    def quantile_with(self, energies: Iterable[float], q: float) -> float:
        """The ``q``-quantile over the window and ``energies`` (linear interpolation)."""
        return float(np.quantile([*self._values, *energies], q))

    def extend(self, energies: Iterable[float]) -> None:
        self._values.extend(energies)

    def state(self) -> list[float]:
        return list(self._values)

    @classmethod
    def from_state(cls, values: object, *, size: int, what: str) -> EnergyWindow:
        """A window restored from :meth:`state` output; refuses anything it could not have written."""
        if (
            not isinstance(values, list)
            or len(values) > size
            or not all(
                isinstance(e, int | float) and not isinstance(e, bool) and np.isfinite(e) and e >= 0
                for e in values
            )
        ):
            raise StateLoadError(f"{what} needs 'energies': at most {size} finite values >= 0")
        window = cls(size)
        window.extend(float(e) for e in values)
        return window
