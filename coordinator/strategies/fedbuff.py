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

import numpy as np

from fedward.tinytrain.models import Params

from .base import BufferedStrategy, ClientUpdate, StrategyName, apply_step


def fedbuff_staleness(tau: int) -> float:
    return 1.0 / math.sqrt(1.0 + tau)


class FedBuff(BufferedStrategy):
    name = StrategyName.FEDBUFF

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
