"""Which subset each device trains, sized to its memory.

The planner measures the training footprint of every tier of the subset ladder
once (``fedward.tinytrain.memory``: a real step, not a formula) and then answers, for a
device's memory budget, the largest tier whose measured footprint fits.

Modes:
- FULL: everyone trains the whole model (FedAvg, FedBuff baselines);
- GLOBAL: FTTE's rule, one subset for the whole fleet sized to the most
  constrained enrolled device;
- NESTED: our extension, each device trains the largest tier it can hold; tiers
  are nested so the merge normalises each tensor by who trained it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from fedward.tinytrain.subsets import SubsetLadder, SubsetSpec

from ..errors import CoordinatorError


class SubsetMode(enum.StrEnum):
    FULL = "full"
    GLOBAL = "global"
    NESTED = "nested"


class DoesNotFit(CoordinatorError):
    """Not even the smallest tier fits this device's memory."""


class SubsetPlanner:
    def __init__(
        self,
        ladder: SubsetLadder,
        *,
        footprint_bytes: Callable[[SubsetSpec], int],
        mode: SubsetMode,
    ) -> None:
        self.ladder = ladder
        self.mode = mode
        self.tier_bytes: list[int] = [footprint_bytes(t) for t in ladder.tiers()]

    def largest_fitting(self, memory_bytes: int) -> SubsetSpec:
        fitting = [k for k, need in enumerate(self.tier_bytes, start=1) if need <= memory_bytes]
        if not fitting:
            raise DoesNotFit(
                f"{memory_bytes} B is below the smallest tier ({self.tier_bytes[0]} B)"
            )
        return self.ladder.tier(max(fitting))

    def subset_for(self, memory_bytes: int, *, fleet_memory: Iterable[int]) -> SubsetSpec:
        if self.mode is SubsetMode.FULL:
            # The baselines train the whole model everywhere; the benchmark
            # reports what that costs rather than refusing small devices.
            return self.ladder.full()
        if self.mode is SubsetMode.GLOBAL:
            return self.largest_fitting(min(fleet_memory, default=memory_bytes))
        return self.largest_fitting(memory_bytes)
