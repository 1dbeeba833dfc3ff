"""The count words a device masks for FTTE's energy: one rule for device and server.

Under secure aggregation the server never sees one update's energy; each
device adds a one-hot histogram of its update's natural log energy as masked
count words, and the server reads only the cohort's sums. The device encodes
and the server decodes with this one definition, so the two cannot drift:

* with ``B`` edges: ``B + 1`` words, one-hot; bin ``i`` holds
  ``edges[i-1] <= ln(q) < edges[i]`` (bin 0 everything below the first edge,
  and q <= 0 or NaN; bin ``B`` everything from the last edge up, inf included);
* without edges: one word, a constant 1 (its sum is the survivors, public anyway).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["energy_counts"]


def energy_counts(energy: float, edges: Sequence[float]) -> tuple[int, ...]:
    """A device's count words for an update of energy ``energy`` (see the module doc)."""
    if not edges:
        return (1,)
    log_q = math.log(energy) if energy > 0 else -math.inf
    counts = [0] * (len(edges) + 1)
    counts[bisect.bisect_right(list(edges), log_q)] = 1
    return tuple(counts)
