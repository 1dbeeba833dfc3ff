"""FTTE's semi-asynchronous merge, with our documented weighting.

Buffer ``K`` updates (each trained on a sparse subset) and merge them with
weights from their *age* and the *energy* of their update::

    q_i   = energy of Delta_i (mean squared value per trained coordinate)
    m     = median of q over the buffer and the last ``energy_window`` merged updates
    r_i   = q_i / m                             (energy ratio)
    s_i   = (1 + tau_i) ^ -a                    (age: server versions since the base)
    g_i   = 1 / (1 + beta * max(0, r_i - rho))  (energy: damp updates beyond rho x median)
    w_i   = n_i * s_i * g_i                      (n_i = samples, optional)
    Delta = sum_i w_i Delta_i / sum_{i trained it} w_i     (per tensor)
    w    <- w + eta_g * Delta

Defaults: a = 0.5 (``staleness_exponent``), beta = 1 (``energy_beta``),
rho = 10 (``energy_tolerance``), a window of 200 updates (``energy_window``).

Why these terms: age, because a stale delta was computed against a model that
has since moved; energy, because an update whose energy is orders of
magnitude above the median comes from a divergent device (wrong annotations,
a broken sensor, a runaway local run) and, averaged in at full weight, it
steers the merge. The tolerance ``rho`` leaves ordinary heterogeneity alone:
on a clean non-IID fleet, updates from devices the model still gets wrong are
energetic too, and they carry the signal (measured on the full scenario with
10% mislabelled devices: 90% of clean updates within 7x the median, 99%
within 51x; mislabelled devices' 150x to 27,000x). With ``rho = 1`` those
clean updates are damped as well, which costs time to target.

The energy is one scalar per update, reported by the device
(``update_energy``), so it also works under secure aggregation, where it is
exactly what the server learns about an individual update. ``fedward.bench.ablation``
measures what each term earns on a clean and a mislabelled fleet (a = 0 or
beta = 0 switches a term off).

Why the median looks back past the buffer: a buffer holds only K updates, and
when half of them come from divergent devices (it happens: 10% mislabelled
devices, 300 merges) the buffer's own median is theirs and nothing is damped;
one such merge measurably wrecked the model. The reference over the last few
hundred updates needs half of *those* to be divergent. The window is saved
state (``state_dict``), checked on load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedward.tinytrain.models import Params

from ..errors import StrategyConfigError
from .base import BufferedStrategy, ClientUpdate, StrategyName, apply_step, weighted_mean
from .energy import EnergyWindow


class FTTE(BufferedStrategy):
    name = StrategyName.FTTE

    def __init__(
        self,
        *,
        shapes: Mapping[str, tuple[int, ...]],
        buffer_size: int,
        server_lr: float = 1.0,
        staleness_exponent: float = 0.5,
        energy_beta: float = 1.0,
        energy_tolerance: float = 10.0,
        energy_window: int = 200,
        sample_weighting: bool = True,
        max_staleness: int | None = None,
    ) -> None:
        super().__init__(
            shapes=shapes, buffer_size=buffer_size, server_lr=server_lr, max_staleness=max_staleness
        )
        if staleness_exponent < 0 or energy_beta < 0:
            raise StrategyConfigError("staleness_exponent and energy_beta must be >= 0")
        if not energy_tolerance >= 1:
            raise StrategyConfigError("energy_tolerance must be >= 1 (a multiple of the median)")
        if energy_window < 0:
            raise StrategyConfigError("energy_window must be >= 0")
        self.staleness_exponent = staleness_exponent
        self.energy_beta = energy_beta
        self.energy_tolerance = energy_tolerance
        self.energy_window = energy_window
        self.sample_weighting = sample_weighting
        self._energies = EnergyWindow(energy_window)

    def reference_energy(self, buffer: list[ClientUpdate]) -> float:
        """Median update energy over the buffer and the recent merged updates."""
        return self._energies.median_with(u.energy() for u in buffer)

    def weights(self, buffer: list[ClientUpdate], staleness: tuple[int, ...]) -> list[float]:
        q = np.array([u.energy() for u in buffer], dtype=np.float64)
        median = self.reference_energy(buffer)
        r = q / median if median > 0 else np.ones_like(q)
        weights = []
        for update, tau, ratio in zip(buffer, staleness, r, strict=True):
            s = (1.0 + tau) ** -self.staleness_exponent
            excess = max(0.0, float(ratio) - self.energy_tolerance)
            g = 1.0 / (1.0 + self.energy_beta * excess)
            n = float(update.num_samples) if self.sample_weighting else 1.0
            weights.append(n * s * g)
        return weights

    def _merge(
        self,
        params: Mapping[str, np.ndarray],
        buffer: list[ClientUpdate],
        staleness: tuple[int, ...],
    ) -> tuple[Params, list[float], dict[str, int]]:
        weights = self.weights(buffer, staleness)
        mean, coverage = weighted_mean(buffer, weights)
        self._energies.extend(u.energy() for u in buffer)
        return apply_step(params, mean, lr=self.server_lr), weights, coverage

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "staleness_exponent": self.staleness_exponent,
            "energy_beta": self.energy_beta,
            "energy_tolerance": self.energy_tolerance,
            "energy_window": self.energy_window,
            "sample_weighting": self.sample_weighting,
        }

    def _state_payload(self) -> dict[str, Any]:
        return {**super()._state_payload(), "energies": self._energies.state()}

    def _load_payload(self, payload: Mapping[str, Any], *, buffer: Sequence[ClientUpdate]) -> None:
        del buffer  # the window is checked on its own
        self._energies = EnergyWindow.from_state(
            payload.get("energies"), size=self.energy_window, what="FTTE state"
        )
