"""Client-level DP on a buffered merge (central DP, DP-FedAvg style).

Each accepted update is clipped to global L2 norm ``clip_norm`` (over all its
tensors); a merge takes the **uniform** mean of the buffered, clipped deltas
per tensor and adds Gaussian noise of standard deviation
``noise_multiplier * clip_norm / k_min`` to every coordinate, where ``k_min``
is the fewest updates that trained any merged tensor (``K`` when everyone
trains the same subset). Replacing one device's update changes the mean by at
most ``clip_norm / k_min`` in L2 over all merged tensors, so each merge is a
Gaussian mechanism with that sensitivity and noise multiplier ``z``; account
for a study's merges with ``fedward.privacy.central.client_level_step``.

Why a strategy of its own rather than a wrapper over any strategy: weighting
by samples, staleness or energy (FedAvg, FedBuff, FTTE) makes one device's
share of the mean data-dependent, and then ``clip / K`` is no bound at all.
Uniform weights keep the guarantee exact. This is central DP: the server sees
individual clipped updates; with secure aggregation, devices add their noise
shares instead (``fedward.privacy.central.distributed_noise_share``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedward.privacy.central import RandomNormal, clip_update
from fedward.tinytrain.models import Params

from ..errors import StrategyConfigError
from .base import BufferedStrategy, ClientUpdate, StrategyName, apply_step, weighted_mean


class ClientLevelDP(BufferedStrategy):
    name = StrategyName.CLIENT_DP

    def __init__(
        self,
        *,
        shapes: Mapping[str, tuple[int, ...]],
        buffer_size: int,
        clip_norm: float,
        noise_multiplier: float,
        random_normal: RandomNormal,
        server_lr: float = 1.0,
        max_staleness: int | None = None,
    ) -> None:
        super().__init__(
            shapes=shapes, buffer_size=buffer_size, server_lr=server_lr, max_staleness=max_staleness
        )
        if not (np.isfinite(clip_norm) and clip_norm > 0):
            raise StrategyConfigError("clip_norm must be a positive finite number")
        if not (np.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise StrategyConfigError("noise_multiplier must be a finite number >= 0")
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self._random_normal = random_normal

    def accept(self, update: ClientUpdate, *, server_version: int) -> None:
        # validate the raw update first (non-finite values cannot be clipped)
        super().accept(update, server_version=server_version)
        clipped, _ = clip_update(self._buffer[-1].delta, max_norm=self.clip_norm)
        last = self._buffer[-1]
        self._buffer[-1] = ClientUpdate(
            device_id=last.device_id,
            task_id=last.task_id,
            base_version=last.base_version,
            subset_id=last.subset_id,
            delta=clipped,
            num_samples=last.num_samples,
        )

    def noise_std(self, coverage: Mapping[str, int]) -> float:
        """Per-coordinate noise of a merge whose tensors were trained this often."""
        return self.noise_multiplier * self.clip_norm / min(coverage.values())

    def _merge(
        self,
        params: Mapping[str, np.ndarray],
        buffer: list[ClientUpdate],
        staleness: tuple[int, ...],
    ) -> tuple[Params, list[float], dict[str, int]]:
        weights = [1.0] * len(buffer)
        mean, coverage = weighted_mean(buffer, weights)
        std = self.noise_std(coverage)
        noisy = {
            name: (value + std * self._random_normal(value.shape)).astype(np.float32)
            for name, value in mean.items()
        }
        return apply_step(params, noisy, lr=self.server_lr), weights, coverage

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
        }
