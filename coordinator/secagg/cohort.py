"""Which idle devices form a fill's cohort.

Every member of a cohort masks the same index set, so members share a subset
(one ``VectorLayout``). A fill's masked-input phase closes when its slowest
live member answers, its straggler grace runs out or its timer fires, so
members should be about as fast as each other: cohorts are grouped by each
device's measured task time (``speed_of``: seconds its recent tasks took, the
engine's ``Device.task_seconds``), and by device class for devices not yet
measured (the class is the speed proxy until a device has answered once).

How a cohort is drawn:

1. a subset, at random in proportion to its idle devices, among the subsets
   with enough idle devices;
2. a *seed* device, uniformly at random among that subset's idle devices;
3. the rest: the idle devices of the subset nearest the seed in log task time
   (ties in random order). A device not yet measured is placed at its class's
   median among measured idle devices of the subset; a class with none
   measured keeps to itself first (then the largest classes, as before).

Why a random seed rather than a fixed order (slowest first, or the smallest
class able to fill a cohort): a fixed rule starves part of the fleet. The
first rule here always took the smallest class and never drew the wearables
(60% of the simulated fleet) while phones or gateways were idle, so no
wearable update was merged (measured on the secagg benchmark rows). With a
uniform seed every idle device has about the same chance of being in the next
fill, whatever its speed; only who it is grouped *with* depends on speed.

Speed is metadata the coordinator observes anyway (when each answer arrives);
grouping by it reveals nothing a device's messages do not.
"""

from __future__ import annotations

import math
import random
import statistics
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
    speed_of: Callable[[D], float | None] | None = None,
) -> list[tuple[SubsetSpec, list[D]]]:
    """Up to ``room`` cohorts of exactly ``size`` devices each, members sharing a subset
    and, where measured (``speed_of``: seconds, None unmeasured), of similar speed."""
    if room <= 0 or len(idle) < size:
        return []
    by_subset: dict[str, tuple[SubsetSpec, list[D]]] = {}
    for device in idle:
        try:
            subset = subset_of(device)
        except CoordinatorError:  # DoesNotFit: no tier fits, it cannot train in a cohort
            continue
        by_subset.setdefault(subset.subset_id, (subset, []))[1].append(device)
    cohorts: list[tuple[SubsetSpec, list[D]]] = []
    while len(cohorts) < room:
        # subsets able to fill a cohort, in id order (reproducible for a seeded rng)
        able = [s for s in sorted(by_subset) if len(by_subset[s][1]) >= size]
        if not able:
            break
        weights = [len(by_subset[s][1]) for s in able]
        subset, pool = by_subset[rng.choices(able, weights=weights)[0]]
        chosen = _draw(pool, size=size, rng=rng, speed_of=speed_of)
        taken = {id(d) for d in chosen}
        pool[:] = [d for d in pool if id(d) not in taken]
        cohorts.append((subset, chosen))
    return cohorts


def _draw(
    pool: list[D],
    *,
    size: int,
    rng: random.Random,
    speed_of: Callable[[D], float | None] | None,
) -> list[D]:
    """``size`` devices of ``pool``: a uniform seed and its nearest in log task time."""
    seed = pool[rng.randrange(len(pool))]
    keys = _log_speeds(pool, speed_of)
    order = list(pool)
    rng.shuffle(order)  # random tie-break among equally near devices
    seed_key = keys[id(seed)]
    if seed_key is None:  # an unmeasured class: its own devices first, then the largest
        by_class: dict[str, list[D]] = defaultdict(list)
        for device in order:
            if keys[id(device)] is None:
                by_class[device.device_class].append(device)
        first = [d for d in by_class[seed.device_class] if d is not seed]
        rest = [
            d
            for cls in sorted(by_class, key=lambda c: (-len(by_class[c]), c))
            if cls != seed.device_class
            for d in by_class[cls]
        ]
        measured = [d for d in order if keys[id(d)] is not None]
        return ([seed] + first + rest + measured)[:size]
    measured = [d for d in order if d is not seed and keys[id(d)] is not None]
    measured.sort(key=lambda d: abs(_key(keys, d) - seed_key))
    unmeasured = [d for d in order if keys[id(d)] is None]
    return ([seed] + measured + unmeasured)[:size]


def _key(keys: dict[int, float | None], device: _Device) -> float:
    key = keys[id(device)]
    if key is None:  # callers sort measured devices only
        raise CoordinatorError("an unmeasured device has no speed key")
    return key


def _log_speeds(
    pool: Sequence[D], speed_of: Callable[[D], float | None] | None
) -> dict[int, float | None]:
    """id(device) -> log seconds: measured, else its class's median, else None."""
    own: dict[int, float | None] = {}
    per_class: dict[str, list[float]] = defaultdict(list)
    for device in pool:
        seconds = speed_of(device) if speed_of is not None else None
        key = math.log(max(seconds, 1e-3)) if seconds is not None else None
        own[id(device)] = key
        if key is not None:
            per_class[device.device_class].append(key)
    medians = {c: statistics.median(v) for c, v in per_class.items()}
    return {
        id(d): own[id(d)] if own[id(d)] is not None else medians.get(d.device_class) for d in pool
    }
