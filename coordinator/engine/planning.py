"""Which subset each device trains, sized to its memory.

The planner measures the training footprint of the tiers it can choose, once
(``fedward.tinytrain.memory``: a real step, not a formula), and then answers, for a
device's memory budget, the largest tier whose measured footprint fits. A
FULL planner can choose only the full model, so it measures only that tier at
construction; any other tier is measured the first time something asks for it
(``tier_footprint``, ``tier_bytes``, ``largest_fitting``).

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
        self._footprint_bytes = footprint_bytes
        self._measured: dict[int, int] = {}
        for subset in self.choosable_tiers():
            self.tier_footprint(subset.tier)

    def choosable_tiers(self) -> list[SubsetSpec]:
        """The tiers ``subset_for`` can answer: the full model alone in FULL mode."""
        if self.mode is SubsetMode.FULL:
            return [self.ladder.full()]
        return self.ladder.tiers()

    def tier_footprint(self, tier: int) -> int:
        """Measured footprint of ``tier`` (1-based), measured on first use."""
        if tier not in self._measured:
            self._measured[tier] = self._footprint_bytes(self.ladder.tier(tier))
        return self._measured[tier]

    @property
    def tier_bytes(self) -> list[int]:
        """Every tier's measured footprint, in tier order (measures those not yet measured)."""
        return [self.tier_footprint(k) for k in range(1, self.ladder.num_tiers + 1)]

    def largest_fitting(self, memory_bytes: int) -> SubsetSpec:
        needs = self.tier_bytes
        fitting = [k for k, need in enumerate(needs, start=1) if need <= memory_bytes]
        if not fitting:
            raise DoesNotFit(f"{memory_bytes} B is below the smallest tier ({needs[0]} B)")
        return self.ladder.tier(max(fitting))

    def subset_for(self, memory_bytes: int, *, fleet_memory: Iterable[int]) -> SubsetSpec:
        if self.mode is SubsetMode.FULL:
            # The baselines train the whole model everywhere; the benchmark
            # reports what that costs rather than refusing small devices.
            return self.ladder.full()
        if self.mode is SubsetMode.GLOBAL:
            return self.largest_fitting(min(fleet_memory, default=memory_bytes))
        return self.largest_fitting(memory_bytes)
