"""Which idle devices form a fill's cohort.

Every member of a cohort masks the same index set, so members share a subset
(one ``VectorLayout``); and a fill closes its masked-input phase when its
slowest live member answers or the timer fires, so members should be about as
fast as each other: the device class is the speed proxy. Cohorts are drawn
from one (subset, class) group when one group is large enough, else from one
subset's classes in order of group size (the fewest classes mixed).

Which group: drawn at random in proportion to its idle devices, among the
groups large enough. Why not a fixed order: a rule that always took the
smallest class able to fill a cohort never drew the wearables (60% of the
simulated fleet) while phones or gateways were idle, so no wearable update was
ever merged (measured on the secagg benchmark rows); in proportion, every idle
device has about the same chance of the next fill, whatever its class.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from fedward.tinytrain.subsets import SubsetSpec

from ..errors import CoordinatorError

__all__ = ["form_cohorts"]


class _Device(Protocol):
    @property
    def device_id(self) -> str: ...

    @property
    def device_class(self) -> str: ...


D = TypeVar("D", bound=_Device)


def form_cohorts(
    idle: Sequence[D],
    *,
    subset_of: Callable[[D], SubsetSpec],
    size: int,
    room: int,
    rng: random.Random,
) -> list[tuple[SubsetSpec, list[D]]]:
    """Up to ``room`` cohorts of exactly ``size`` devices each, members sharing a subset."""
    if room <= 0 or len(idle) < size:
        return []
    by_subset: dict[str, tuple[SubsetSpec, dict[str, list[D]]]] = {}
    for device in idle:
        try:
            subset = subset_of(device)
        except CoordinatorError:  # DoesNotFit: no tier fits, it cannot train in a cohort
            continue
        entry = by_subset.setdefault(subset.subset_id, (subset, defaultdict(list)))
        entry[1][device.device_class].append(device)
    cohorts: list[tuple[SubsetSpec, list[D]]] = []
    while len(cohorts) < room:
        # subsets able to fill a cohort, in id order (reproducible for a seeded rng)
        able = [s for s in sorted(by_subset) if _total(by_subset[s][1]) >= size]
        if not able:
            break
        weights = [_total(by_subset[s][1]) for s in able]
        subset, classes = by_subset[rng.choices(able, weights=weights)[0]]
        cohorts.append((subset, _draw(classes, size=size, rng=rng)))
    return cohorts


def _total(classes: dict[str, list[D]]) -> int:
    return sum(len(v) for v in classes.values())


def _draw(classes: dict[str, list[D]], *, size: int, rng: random.Random) -> list[D]:
    """``size`` devices: from one class if one is large enough (drawn in proportion to
    its idle devices), else from the largest classes first."""
    whole = [c for c in sorted(classes) if len(classes[c]) >= size]
    if whole:
        order = [rng.choices(whole, weights=[len(classes[c]) for c in whole])[0]]
    else:
        order = sorted(classes, key=lambda c: (-len(classes[c]), c))
    chosen: list[D] = []
    for device_class in order:
        pool = classes[device_class]
        take = rng.sample(pool, min(size - len(chosen), len(pool)))
        chosen.extend(take)
        classes[device_class] = [d for d in pool if d not in take]
        if len(chosen) == size:
            break
    for device_class in [c for c, v in classes.items() if not v]:
        del classes[device_class]
    return chosen
