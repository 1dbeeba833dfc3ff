"""The masked energy histogram: what a fill tells the server about its updates' energies.

Under secure aggregation the server never sees one update's energy (FTTE's
per-update statistic). Each device computes its own damping weight from the
public ``energy_reference`` in its task, and adds a one-hot histogram of its
update's (natural) log energy as masked count words, so the server learns only
the cohort's histogram (how many survivors fell in each bin) and derives the
next reference from it: the median bin's representative energy.

The count words of a fill (``SecAggPolicy.count_words``) follow the one rule
device and server share, ``fedward.privacy.secagg.histogram.energy_counts``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedward.privacy.secagg.histogram import energy_counts

__all__ = ["energy_counts", "reference_from_histogram"]


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
