"""FedAsync (Xie et al. 2019): merge every update on arrival.

    x <- (1 - a_t) x + a_t x_new,   a_t = a * s(t - tau)

with ``x_new = base + Delta`` (the device's trained model). Polynomial
staleness ``s(d) = (d + 1)^-p`` or hinge ``s(d) = 1`` if ``d <= b`` else
``1 / (p (d - b) + 1)``. Only tensors the device trained are mixed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedward.tinytrain.models import Params

from ..errors import StrategyConfigError
from .base import ClientUpdate, Schedule, StrategyBase, StrategyName


class StalenessFunction(enum.StrEnum):
    POLYNOMIAL = "polynomial"
    HINGE = "hinge"


class FedAsync(StrategyBase):
    name = StrategyName.FEDASYNC
    schedule = Schedule.BUFFERED
    needs_base_params = True

    def __init__(
        self,
        *,
        shapes: Mapping[str, tuple[int, ...]],
        mixing: float = 0.6,
        function: StalenessFunction = StalenessFunction.POLYNOMIAL,
        exponent: float = 0.5,
        hinge_b: int = 4,
        max_staleness: int | None = None,
    ) -> None:
        super().__init__(shapes=shapes, max_staleness=max_staleness)
        if not 0 < mixing <= 1:
            raise StrategyConfigError("mixing must be in (0, 1]")
        if exponent < 0 or hinge_b < 0:
            raise StrategyConfigError("exponent and hinge_b must be >= 0")
        self.mixing, self.function, self.exponent, self.hinge_b = (
            mixing,
            function,
            exponent,
            hinge_b,
        )

    def staleness_weight(self, d: int) -> float:
        if self.function is StalenessFunction.POLYNOMIAL:
            return (d + 1.0) ** -self.exponent
        return 1.0 if d <= self.hinge_b else 1.0 / (self.exponent * (d - self.hinge_b) + 1.0)

    def ready(self) -> bool:
        return self.pending >= 1

    def _merge(
        self,
        params: Mapping[str, np.ndarray],
        buffer: list[ClientUpdate],
        staleness: tuple[int, ...],
    ) -> tuple[Params, list[float], dict[str, int]]:
        new = {n: v.copy() for n, v in params.items()}
        weights: list[float] = []
        coverage: dict[str, int] = {}
        for update, d in zip(buffer, staleness, strict=True):
            alpha = self.mixing * self.staleness_weight(d)
            weights.append(alpha)
            base = update.base_params or {}
            for name, delta in update.delta.items():
                x_new = base[name] + delta
                new[name] = ((1.0 - alpha) * new[name] + alpha * x_new).astype(np.float32)
                coverage[name] = coverage.get(name, 0) + 1
        return new, weights, coverage

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "mixing": self.mixing,
            "function": self.function.value,
            "exponent": self.exponent,
            "hinge_b": self.hinge_b,
        }
