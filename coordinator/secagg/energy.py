"""The masked energy histogram: what a fill tells the server about its updates' energies.

Under secure aggregation the server never sees one update's energy (FTTE's
per-update statistic). Each device computes its own damping weight from the
public ``energy_reference`` in its task, and adds a one-hot histogram of its
update's log10 energy as masked count words, so the server learns only the
cohort's histogram (how many survivors fell in each bin) and derives the next
reference from it: the median bin's representative energy.

The count words of a fill, in order (``SecAggPolicy.count_words`` of them):

    word 0          a constant 1 (its sum is the number of survivors, public anyway)
    words 1 .. B+1  one-hot: 1 in the bin of log10(energy), 0 elsewhere, for the
                    B edges ``energy_bins`` (bin 0 below the first edge, bin B at or
                    above the last); present only when the policy has a histogram.

A device with a zero (or non-finite) energy counts in bin 0.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["energy_bin", "energy_counts", "reference_from_histogram"]


def energy_bin(energy: float, edges: Sequence[float]) -> int:
    """The histogram bin of ``energy`` (its log10 against ``edges``)."""
    if not (math.isfinite(energy) and energy > 0):
        return 0
    return bisect.bisect_right(list(edges), math.log10(energy))


def energy_counts(energy: float, edges: Sequence[float]) -> tuple[int, ...]:
    """A device's count words: the constant 1, then the one-hot bin (none without edges)."""
    if not edges:
        return (1,)
    onehot = [0] * (len(edges) + 1)
    onehot[energy_bin(energy, edges)] = 1
    return (1, *onehot)


def reference_from_histogram(counts: Sequence[int], edges: Sequence[float]) -> float | None:
    """The energy at the cohort's median bin (None: an empty histogram).

    The representative of an inner bin is its geometric midpoint; of the two
    open bins, the edge they touch (the histogram cannot say how far beyond).
    """
    if len(counts) != len(edges) + 1 or not edges:
        raise ValueError(f"a histogram over {len(edges)} edges has {len(edges) + 1} bins")
    total = sum(counts)
    if total <= 0:
        return None
    half, seen, index = total / 2.0, 0, 0
    for index, count in enumerate(counts):  # noqa: B007 (the bin where the loop stops)
        seen += count
        if seen >= half:
            break
    if index == 0:
        return 10.0 ** edges[0]
    if index == len(edges):
        return 10.0 ** edges[-1]
    return 10.0 ** ((edges[index - 1] + edges[index]) / 2.0)
