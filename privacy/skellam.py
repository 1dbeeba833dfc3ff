"""Accounting of the Skellam mechanism: what one distributed-DP fill costs, and composition.

Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private
Federated Learning" (NeurIPS 2021), Theorem 3.5 / Corollary 3.6: adding
independent Skellam noise of variance ``mu`` per coordinate (each coordinate
``Poisson(mu/2) - Poisson(mu/2)``) to an integer vector whose L1 and L2
sensitivities are ``Delta_1`` and ``Delta_2`` is (alpha, eps(alpha))-RDP for
every integer alpha > 1 with

    eps(alpha) = alpha Delta_2^2 / (2 mu)
                 + min(((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (4 mu^2), 3 Delta_1 / (2 mu)).

The first term is the Gaussian mechanism's RDP at variance ``mu``; the second
the price of discreteness, which vanishes as ``mu`` grows. All figures are in
the integer units the noise is added in (model units times the scale). For a
fractional order the bound at ``ceil(alpha)`` is used: Renyi divergence does
not decrease with the order, so that is still an upper bound.

One fill of :mod:`fedward.privacy.secagg.ddp` is one release per device in it
(client level: the device's whole clipped update is the unit, add/remove
adjacency). No sampling amplification is claimed: who fills an asynchronous
buffer is not a Poisson sample. Releases compose by adding RDP; (eps, delta)
follows by Balle et al. 2020 (Theorem 21 of arXiv 1905.09982), the conversion
Opacus' RDP accountant uses (:mod:`fedward.privacy.accounting`).

Pure: math and numpy only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SKELLAM_ORDERS",
    "SkellamStep",
    "epsilon",
    "gaussian_rdp",
    "rdp_to_epsilon",
    "skellam_rdp",
]

#: Integer RDP orders the standalone :func:`epsilon` optimises over.
SKELLAM_ORDERS: tuple[int, ...] = (*range(2, 129), 160, 192, 256, 384, 512, 768, 1024)


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def skellam_rdp(
    alpha: float, *, l1_sensitivity: float, l2_sensitivity: float, variance: float
) -> float:
    """The Skellam mechanism's RDP at order ``alpha`` > 1 (see the module docstring)."""
    a = _positive("alpha", alpha)
    if a <= 1:
        raise ValueError(f"alpha must be > 1, got {alpha!r}")
    a = float(math.ceil(a))
    d1 = _positive("l1_sensitivity", l1_sensitivity)
    d2 = _positive("l2_sensitivity", l2_sensitivity)
    mu = _positive("variance", variance)
    gaussian = a * d2 * d2 / (2.0 * mu)
    discrete = min(((2.0 * a - 1.0) * d2 * d2 + 6.0 * d1) / (4.0 * mu * mu), 3.0 * d1 / (2.0 * mu))
    return gaussian + discrete


def gaussian_rdp(alpha: float, *, l2_sensitivity: float, variance: float) -> float:
    """The Gaussian mechanism's RDP alpha Delta_2^2 / (2 sigma^2): Skellam's large-mu limit."""
    return (
        _positive("alpha", alpha)
        * _positive("l2_sensitivity", l2_sensitivity) ** 2
        / (2.0 * _positive("variance", variance))
    )


def rdp_to_epsilon(
    orders: Sequence[float] | np.ndarray, rdp: Sequence[float] | np.ndarray, *, delta: float
) -> float:
    """Smallest epsilon at ``delta`` over the orders (Balle et al. 2020, as Opacus converts)."""
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape or a.ndim != 1 or a.size == 0 or np.any(a <= 1):
        raise ValueError("orders and rdp must be equal-length sequences, orders > 1")
    eps = r - (math.log(delta) + np.log(a)) / (a - 1.0) + np.log((a - 1.0) / a)
    return float(max(0.0, float(np.min(eps))))


@dataclass(frozen=True, kw_only=True)
class SkellamStep:
    """``steps`` Skellam releases of one device's integer vector (the ledger's entry).

    l1_sensitivity, l2_sensitivity: Delta_1 and Delta_2 of the device's vector
        (integer units; :meth:`fedward.privacy.secagg.ddp.DistributedDp.sensitivities`).
    variance: the Skellam variance mu guaranteed in every released sum (integer
        units): the noise of at least min_survivors honest devices.
    steps: number of such releases (fills the device was a survivor of).
    """

    l1_sensitivity: float
    l2_sensitivity: float
    variance: float
    steps: int = 1

    def __post_init__(self) -> None:
        d1 = _positive("l1_sensitivity", self.l1_sensitivity)
        d2 = _positive("l2_sensitivity", self.l2_sensitivity)
        if d1 < d2 * (1.0 - 1e-12):
            raise ValueError("l1_sensitivity cannot be below l2_sensitivity (|x|_1 >= |x|_2)")
        steps = self.steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        object.__setattr__(self, "l1_sensitivity", d1)
        object.__setattr__(self, "l2_sensitivity", d2)
        object.__setattr__(self, "variance", _positive("variance", self.variance))
        object.__setattr__(self, "steps", int(steps))

    @property
    def key(self) -> tuple[str, float, float, float]:
        """Entries with equal key merge (steps added) in a canonical history."""
        return ("skellam", self.l1_sensitivity, self.l2_sensitivity, self.variance)

    @property
    def noise_multiplier(self) -> float:
        """sqrt(mu) / Delta_2: the Gaussian noise multiplier of the same variance (for reports)."""
        return math.sqrt(self.variance) / self.l2_sensitivity

    @property
    def sample_rate(self) -> float:
        """1.0: no sampling amplification is claimed (for reports beside Gaussian steps)."""
        return 1.0

    def rdp(self, orders: Sequence[float]) -> np.ndarray:
        """RDP of all ``steps`` releases at each order (composition: steps times one)."""
        one = [
            skellam_rdp(
                a,
                l1_sensitivity=self.l1_sensitivity,
                l2_sensitivity=self.l2_sensitivity,
                variance=self.variance,
            )
            for a in orders
        ]
        return np.asarray(one, dtype=np.float64) * self.steps

    def with_steps(self, steps: int) -> SkellamStep:
        return SkellamStep(
            l1_sensitivity=self.l1_sensitivity,
            l2_sensitivity=self.l2_sensitivity,
            variance=self.variance,
            steps=steps,
        )


def epsilon(
    steps: Iterable[SkellamStep], *, delta: float, orders: Sequence[float] = SKELLAM_ORDERS
) -> float:
    """(epsilon at ``delta``) of the composition of ``steps`` (0 for none)."""
    entries = list(steps)
    if not all(isinstance(s, SkellamStep) for s in entries):
        raise TypeError("steps must be SkellamStep entries")
    if not entries:
        return 0.0
    total = sum((s.rdp(orders) for s in entries), np.zeros(len(orders)))
    return rdp_to_epsilon(orders, total, delta=delta)
