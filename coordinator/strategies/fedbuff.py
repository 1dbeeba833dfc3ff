"""FedBuff (Nguyen et al., AISTATS 2022).

Buffer ``K`` updates, down-weight each by its staleness and take a server step::

    s(tau) = 1 / sqrt(1 + tau)
    w <- w + eta_g * sum_i s(tau_i) Delta_i / K

With sparse subsets the division is per tensor by the number of buffered
updates that trained it (equal to ``K`` when everyone trains the same subset).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import StrategyConfigError
from .base import ClientUpdate, Params, Schedule, Strategy, StrategyName, apply_step


def fedbuff_staleness(tau: int) -> float:
    return 1.0 / math.sqrt(1.0 + tau)


class FedBuff(Strategy):
    name = StrategyName.FEDBUFF
    schedule = Schedule.BUFFERED

    def __init__(
        self,
        *,
        shapes: Mapping[str, tuple[int, ...]],
        buffer_size: int,
        server_lr: float = 1.0,
        max_staleness: int | None = None,
    ) -> None:
        super().__init__(shapes=shapes, max_staleness=max_staleness)
        if buffer_size < 1:
            raise StrategyConfigError("buffer_size must be >= 1")
        if not server_lr > 0:
            raise StrategyConfigError("server_lr must be > 0")
        self.buffer_size = buffer_size
        self.server_lr = server_lr

    def ready(self) -> bool:
        return self.pending >= self.buffer_size

    def _merge(
        self,
        params: Mapping[str, np.ndarray],
        buffer: list[ClientUpdate],
        staleness: tuple[int, ...],
    ) -> tuple[Params, list[float], dict[str, int]]:
        weights = [fedbuff_staleness(t) for t in staleness]
        sums: dict[str, np.ndarray] = {}
        coverage: dict[str, int] = {}
        for update, w in zip(buffer, weights, strict=True):
            for name, value in update.delta.items():
                sums[name] = sums.get(name, 0.0) + w * value.astype(np.float64)
                coverage[name] = coverage.get(name, 0) + 1
        step = {n: (sums[n] / coverage[n]).astype(np.float32) for n in sums}
        return apply_step(params, step, lr=self.server_lr), weights, coverage

    def config(self) -> dict[str, Any]:
        return {**super().config(), "buffer_size": self.buffer_size, "server_lr": self.server_lr}
