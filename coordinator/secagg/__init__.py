"""Secure aggregation inside semi-asynchronous buffers: one SecAgg instance per buffer fill.

    policy.py  SecAggPolicy: cohort size, threshold, encoding, phase timer, histogram, DDP
    cohort.py  which idle devices form a cohort (one subset, grouped by device class)
    fill.py    Fill: one SecAggServer with its cohort's tasks, live set and phase timer;
               FillOutbound / FillStep: what a step sends and merges
    book.py    FillBook: the open fills, their saved form, the Task's SecAggParams
    energy.py  the masked energy histogram's count words and the next energy reference
    plain.py   bytes in a fill's saved state as JSON-ready text

The engine (``fedward.coordinator.engine.Engine(secagg=...)``) keeps thin hooks
into this package; the strategy wrapper that merges a fill's sum is
``fedward.coordinator.strategies.SecureAggregated``. Pure: no I/O, no clock.
"""

from .book import SESSION_ID_BYTES, FillBook
from .cohort import form_cohorts
from .energy import energy_counts, reference_from_histogram
from .fill import (
    Fill,
    FillEffects,
    FillEvent,
    FillOutbound,
    FillStep,
    FillWeighting,
    IdentityEvidence,
)
from .policy import CohortBinding, SecAggPolicy, SecAggPolicyError

__all__ = [
    "SESSION_ID_BYTES",
    "CohortBinding",
    "Fill",
    "FillBook",
    "FillEffects",
    "FillEvent",
    "FillOutbound",
    "FillStep",
    "FillWeighting",
    "IdentityEvidence",
    "SecAggPolicy",
    "SecAggPolicyError",
    "energy_counts",
    "form_cohorts",
    "reference_from_histogram",
]
