"""The masked energy histogram: what a fill tells the server about its updates' energies.

Under secure aggregation the server never sees one update's energy (FTTE's
per-update statistic). Each device computes its own damping weight from the
public ``energy_reference`` in its task, and adds a one-hot histogram of its
update's (natural) log energy as masked count words, so the server learns only
the cohort's histogram (how many survivors fell in each bin) and derives the
next reference from it: the median bin's representative energy.

The count words of a fill (``SecAggPolicy.count_words``; the same rule as the
device's ``fedward.edge.secagg.energy_histogram``):

* with ``B`` edges ``energy_bins``: ``B + 1`` words, one-hot; bin ``i`` holds
  ``edges[i-1] <= ln(q) < edges[i]`` (bin 0 everything below the first edge,
  bin ``B`` everything from the last edge up; q = 0 is in bin 0);
* without edges: one word, a constant 1 (its sum is the survivors, public anyway).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["energy_bin", "energy_counts", "reference_from_histogram"]


def energy_bin(energy: float, edges: Sequence[float]) -> int:
    """The histogram bin of ``energy`` (its natural log against ``edges``)."""
    if not (math.isfinite(energy) and energy > 0):
        return 0
    return bisect.bisect_right(list(edges), math.log(energy))


def energy_counts(energy: float, edges: Sequence[float]) -> tuple[int, ...]:
    """A device's count words: the one-hot bin, or the constant 1 without edges."""
    if not edges:
        return (1,)
    onehot = [0] * (len(edges) + 1)
    onehot[energy_bin(energy, edges)] = 1
    return tuple(onehot)


def reference_from_histogram(counts: Sequence[int], edges: Sequence[float]) -> float | None:
    """The energy at the cohort's median bin (None: an empty histogram).

    The representative of an inner bin is its geometric midpoint
    ``exp((edges[i-1] + edges[i]) / 2)``; of the two open bins, the edge they
    touch (the histogram cannot say how far beyond it they lie).
    """
    if not edges or len(counts) != len(edges) + 1:
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
        return math.exp(edges[0])
    if index == len(edges):
        return math.exp(edges[-1])
    return math.exp((edges[index - 1] + edges[index]) / 2.0)
