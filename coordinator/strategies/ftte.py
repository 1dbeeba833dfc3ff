"""FTTE's semi-asynchronous merge, with our documented weighting.

Buffer ``K`` updates (each trained on a sparse subset) and merge them with
weights from their *age* and the *energy* of their update::

    q_i   = energy of Delta_i (mean squared value per trained coordinate)
    m     = median of q over the buffer and the last ``energy_window`` merged updates
    r_i   = q_i / m                             (energy ratio)
    rho'  = max(rho, 2 * P_p / m)   (P_p: p-quantile of each recent device's latest energy)
    s_i   = (1 + tau_i) ^ -a                    (age: server versions since the base)
    g_i   = 1 / (1 + beta * max(0, r_i - rho'))  (energy: damp updates beyond rho' x median)
    w_i   = n_i * s_i * g_i                      (n_i = samples, optional)
    Delta = sum_i w_i Delta_i / sum_{i trained it} w_i     (per tensor; CONTRIBUTORS)
    Delta = sum_i w_i Delta_i / sum_{i trained it} w_i / g_i   (per tensor; UNDAMPED)
    Delta = sum_i w_i Delta_i / max(sum_{i trained it} w_i, max_{i trained it} w_i / g_i)
                                                           (per tensor; HEAVIEST)
    w    <- w + eta_g * Delta

Defaults: a = 0.5 (``staleness_exponent``), beta = 1 (``energy_beta``),
rho = 10 (``energy_tolerance``), a window of 200 updates (``energy_window``),
p = 0.8 (``energy_quantile``), ``EnergyRule.DAMP`` (``energy_rule``),
``EnergyNormaliser.CONTRIBUTORS`` (``energy_normaliser``).

Why ``EnergyNormaliser.UNDAMPED`` (issue 14, item 5). Each tensor is averaged
over the updates that trained it, so a tensor that one update alone trained
(the deep tensors only a gateway trains, under ``ftte_nested``) takes that
update at full size whatever its damping: its weight cancels. UNDAMPED divides
by the same updates' weights *before* damping, so the energy term shrinks a
damped update's pull in absolute terms, even alone, and an undamped buffer
merges exactly as before; but a damped update then also shrinks the step of
every tensor it shares with honest ones (their share of the buffer is not
renormalised). HEAVIEST divides by the damped weights' sum unless that is
below the undamped weight of the heaviest update that trained the tensor: a
tensor that at least one undamped update trained merges as under CONTRIBUTORS,
one that only damped updates trained is shrunk by their damping.

Why the quantile (issue 14). Before it the bound was rho x the median
(p = 0.5). That tells poison from honest difference only when the honest fleet
is homogeneous: when honest devices hold disjoint label groups (wearers who
do different things), one group's updates are honestly far more energetic
while the model cannot yet classify its activities; damped, they are never
learned, stay energetic and stay damped (reported on a real motion data set:
FTTE stalled at 0.50 while FedBuff reached 1.00). One scalar per update
cannot tell a small honest group from a small divergent one; it can tell how
many *devices* share an energy level. So the bound never falls below twice
the p-quantile of the latest energy of each of the last ``energy_window``
devices heard from (each device counted once, however often it reports: the
honest group holding the missing activities can also be the slower one, and
a quantile over updates would count it as rare): an energy level that at
least 1 - p (20%) of the devices reach is inside the bound, a divergent
minority below 20% of devices is above it (10% mislabelled devices: the
0.8-quantile is in the clean bulk). The contract, stated: an honest group of
fewer than 20% of the devices is damped like a divergent one; divergent
devices above 20% are not damped at all (``NormBounded`` or a stricter
quantile then).

``EnergyRule.CLIP`` (tried in issue 14, not the default) scales an update
beyond the bound down to it instead of damping its weight: a bounded,
monotone influence. It lost the robustness the term is for: on ``quick`` with
10% mislabelled devices, seed 0, FTTE ended at 0.7923 with CLIP (either
bound) against 0.8828 with DAMP and the quantile (0.8817 with the former
rule); a divergent device's clipped pull, every merge, is still too much.

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

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedward.tinytrain.models import Params

from ..errors import StateLoadError, StrategyConfigError
from .base import BufferedStrategy, ClientUpdate, StrategyName, apply_step, weighted_mean
from .energy import DeviceEnergies, EnergyWindow

MODE_MARGIN = 2.0  # the bound sits at twice the quantile's energy: room for a group's spread


class EnergyRule(enum.StrEnum):
    """How the energy term treats an update beyond ``rho`` x the median."""

    DAMP = "damp"  # shrink its weight hyperbolically (the default)
    CLIP = "clip"  # scale the update to the bound; its weight stays (tried, not kept)


class EnergyNormaliser(enum.StrEnum):
    """What each tensor's weighted sum is divided by (see the module docstring)."""

    CONTRIBUTORS = "contributors"  # the damped weights of the updates that trained it
    UNDAMPED = "undamped"  # the same updates' weights before the energy damping
    HEAVIEST = "heaviest"  # their damped sum, at least the heaviest one's undamped weight


class ServerOptimizer(enum.StrEnum):
    """What the server does with the merged delta (levers tried in issue 14)."""

    SGD = "sgd"  # w <- w + eta_g * Delta (the default)
    MOMENTUM = "momentum"  # FedAvgM: m <- mu m + Delta; w <- w + eta_g * m
    ADAM = "adam"  # FedAdam (Reddi et al. 2021): w <- w + eta_a * m_hat / (sqrt(v) + eps)


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
        energy_rule: EnergyRule = EnergyRule.DAMP,
        energy_quantile: float = 0.8,
        energy_normaliser: EnergyNormaliser = EnergyNormaliser.CONTRIBUTORS,
        server_optimizer: ServerOptimizer = ServerOptimizer.SGD,
        server_momentum: float = 0.9,
        server_adam_lr: float = 0.01,
        server_adam_beta2: float = 0.99,
        server_adam_eps: float = 1e-3,
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
        self.energy_rule = EnergyRule(energy_rule)
        if not 0.5 <= energy_quantile < 1:
            raise StrategyConfigError("energy_quantile must be in [0.5, 1)")
        self.energy_quantile = energy_quantile
        self.energy_normaliser = EnergyNormaliser(energy_normaliser)
        self._energies = EnergyWindow(energy_window)
        self._devices = DeviceEnergies(energy_window)
        self.server_optimizer = ServerOptimizer(server_optimizer)
        if not 0 <= server_momentum < 1 or not 0 < server_adam_beta2 < 1:
            raise StrategyConfigError("server_momentum and server_adam_beta2 must be in [0, 1)")
        if not server_adam_lr > 0 or not server_adam_eps > 0:
            raise StrategyConfigError("server_adam_lr and server_adam_eps must be > 0")
        self.server_momentum = server_momentum
        self.server_adam_lr = server_adam_lr
        self.server_adam_beta2 = server_adam_beta2
        self.server_adam_eps = server_adam_eps
        self._moments: dict[str, np.ndarray] = {}  # first moment (MOMENTUM, ADAM)
        self._second: dict[str, np.ndarray] = {}  # second moment (ADAM)

    def reference_energy(self, buffer: list[ClientUpdate]) -> float:
        """Median update energy over the buffer and the recent merged updates."""
        return self._energies.median_with(u.energy() for u in buffer)

    def tolerance(self, buffer: list[ClientUpdate]) -> float:
        """rho': rho, raised so that a level 1 - p of recent updates reach stays inside."""
        median = self.reference_energy(buffer)
        if median <= 0 or self.energy_quantile == 0.5:
            return self.energy_tolerance
        level = self._devices.quantile_with(
            ((u.device_id, u.energy()) for u in buffer), self.energy_quantile
        )
        return max(self.energy_tolerance, MODE_MARGIN * level / median)

    def energy_ratios(self, buffer: list[ClientUpdate]) -> np.ndarray:
        """r_i: each update's energy over the reference median."""
        q = np.array([u.energy() for u in buffer], dtype=np.float64)
        median = self.reference_energy(buffer)
        return q / median if median > 0 else np.ones_like(q)

    def clip_factors(self, buffer: list[ClientUpdate]) -> list[float]:
        """c_i (CLIP rule): the scale that brings an update's energy to rho x median."""
        if self.energy_rule is not EnergyRule.CLIP or self.energy_beta == 0:
            return [1.0] * len(buffer)
        rho = self.tolerance(buffer)
        return [
            min(1.0, float(np.sqrt(rho / r))) ** self.energy_beta if r > 0 else 1.0
            for r in self.energy_ratios(buffer)
        ]

    def weights(self, buffer: list[ClientUpdate], staleness: tuple[int, ...]) -> list[float]:
        """w_i (times g_i under the DAMP rule): the normaliser's weights."""
        return self._weights(buffer, staleness)[0]

    def _weights(
        self, buffer: list[ClientUpdate], staleness: tuple[int, ...]
    ) -> tuple[list[float], list[float]]:
        """(w_i, w_i / g_i): each update's weight, and the same before energy damping."""
        r = self.energy_ratios(buffer)
        rho = self.tolerance(buffer) if self.energy_rule is EnergyRule.DAMP else 0.0
        weights, undamped = [], []
        for update, tau, ratio in zip(buffer, staleness, r, strict=True):
            s = (1.0 + tau) ** -self.staleness_exponent
            g = 1.0
            if self.energy_rule is EnergyRule.DAMP:
                excess = max(0.0, float(ratio) - rho)
                g = 1.0 / (1.0 + self.energy_beta * excess)
            n = float(update.num_samples) if self.sample_weighting else 1.0
            undamped.append(n * s)
            weights.append(n * s * g)
        return weights, undamped

    def _merge(
        self,
        params: Mapping[str, np.ndarray],
        buffer: list[ClientUpdate],
        staleness: tuple[int, ...],
    ) -> tuple[Params, list[float], dict[str, int]]:
        # one pass for both: the reference median and the quantile bound are computed once
        weights, undamped = self._weights(buffer, staleness)
        clipped = [
            u if c == 1.0 else dataclasses.replace(u, delta={n: v * c for n, v in u.delta.items()})
            for u, c in zip(buffer, self.clip_factors(buffer), strict=True)
        ]
        rule = self.energy_normaliser
        mean, coverage = weighted_mean(
            clipped,
            weights,
            normalisers=undamped if rule is EnergyNormaliser.UNDAMPED else None,
            floors=undamped if rule is EnergyNormaliser.HEAVIEST else None,
        )
        self._energies.extend(u.energy() for u in buffer)
        self._devices.extend((u.device_id, u.energy()) for u in buffer)
        return self._server_step(params, mean), weights, coverage

    def server_step(self, params: Mapping[str, np.ndarray], mean: Params) -> Params:
        """The server optimiser's step with a merged mean (also a secure-aggregation fill's).

        A fill's sum is all the server sees, and the optimiser needs nothing else:
        its moments are per-coordinate averages of merged means, never of one update.
        """
        return self._server_step(params, mean)

    def _server_step(self, params: Mapping[str, np.ndarray], mean: Params) -> Params:
        if self.server_optimizer is ServerOptimizer.SGD:
            return apply_step(params, mean, lr=self.server_lr)
        step: Params = {}
        for name, delta in mean.items():
            d = delta.astype(np.float64)
            m = self._moments.get(name, np.zeros_like(d))
            if self.server_optimizer is ServerOptimizer.MOMENTUM:
                m = self.server_momentum * m + d
                step[name] = (self.server_lr * m).astype(np.float32)
            else:
                m = self.server_momentum * m + (1 - self.server_momentum) * d
                v = self._second.get(name, np.zeros_like(d))
                v = self.server_adam_beta2 * v + (1 - self.server_adam_beta2) * d * d
                self._second[name] = v
                scale = self.server_lr * self.server_adam_lr
                step[name] = (scale * m / (np.sqrt(v) + self.server_adam_eps)).astype(np.float32)
            self._moments[name] = m
        return apply_step(params, step, lr=1.0)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "staleness_exponent": self.staleness_exponent,
            "energy_beta": self.energy_beta,
            "energy_tolerance": self.energy_tolerance,
            "energy_window": self.energy_window,
            "sample_weighting": self.sample_weighting,
            # non-defaults only, so a state saved before these options resumes (a saved
            # study continues with the quantile bound)
            **(
                {"energy_rule": self.energy_rule.value}
                if self.energy_rule is not EnergyRule.DAMP
                else {}
            ),
            **({"energy_quantile": self.energy_quantile} if self.energy_quantile != 0.8 else {}),
            **(
                {"energy_normaliser": self.energy_normaliser.value}
                if self.energy_normaliser is not EnergyNormaliser.CONTRIBUTORS
                else {}
            ),
            **(
                {
                    "server_optimizer": self.server_optimizer.value,
                    "server_momentum": self.server_momentum,
                    "server_adam_lr": self.server_adam_lr,
                    "server_adam_beta2": self.server_adam_beta2,
                    "server_adam_eps": self.server_adam_eps,
                }
                if self.server_optimizer is not ServerOptimizer.SGD
                else {}
            ),
        }

    def _state_payload(self) -> dict[str, Any]:
        return {
            **super()._state_payload(),
            "energies": self._energies.state(),
            "device_energies": self._devices.state(),
            **(
                {
                    "server_moments": {
                        "first": {n: v.copy() for n, v in self._moments.items()},
                        "second": {n: v.copy() for n, v in self._second.items()},
                    }
                }
                if self.server_optimizer is not ServerOptimizer.SGD
                else {}
            ),
        }

    def _load_payload(self, payload: Mapping[str, Any], *, buffer: Sequence[ClientUpdate]) -> None:
        del buffer  # the window is checked on its own
        energies = EnergyWindow.from_state(
            payload.get("energies"), size=self.energy_window, what="FTTE state"
        )
        devices = DeviceEnergies.from_state(
            payload.get("device_energies"), size=self.energy_window, what="FTTE state"
        )
        first, second = self._moments_from_state(payload.get("server_moments"))
        self._energies, self._devices = energies, devices
        self._moments, self._second = first, second

    def _moments_from_state(
        self, saved: object
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The server optimiser's moments, each checked against the model's shapes."""
        if self.server_optimizer is ServerOptimizer.SGD:
            if saved is not None:
                raise StateLoadError("FTTE state holds server moments but the optimiser is SGD")
            return {}, {}
        if not isinstance(saved, Mapping) or set(saved) != {"first", "second"}:
            raise StateLoadError("FTTE state needs 'server_moments' with 'first' and 'second'")
        out: list[dict[str, np.ndarray]] = []
        for part in ("first", "second"):
            values = saved[part]
            if not isinstance(values, Mapping):
                raise StateLoadError(f"FTTE server moments '{part}' must map tensor names")
            restored = {}
            for name, value in values.items():
                array = np.asarray(value, dtype=np.float64)
                if name not in self.shapes or array.shape != tuple(self.shapes[name]):
                    raise StateLoadError(f"FTTE server moment {part}/{name} has no such tensor")
                if not np.all(np.isfinite(array)) or (part == "second" and np.any(array < 0)):
                    raise StateLoadError(f"FTTE server moment {part}/{name} is not finite")
                restored[name] = array
            out.append(restored)
        return out[0], out[1]
