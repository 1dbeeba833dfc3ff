"""Which devices can train the full model, and at which micro-batch (memory-feasible rows).

A careful user of a small device accumulates gradients over micro-batches
rather than give up: the same gradient (no layer here depends on batch
statistics) with saved activations one micro-batch wide. A device trains the
full model in a memory-feasible row only if the measured step
(``fedward.tinytrain.memory``, transients included) at some micro-batch fits
its memory; it uses the largest such micro-batch (fewest passes), and sits out
when not even one window at a time fits.
"""

from __future__ import annotations

from functools import lru_cache

from fedward.tinytrain.memory import Footprint, measure_training_step
from fedward.tinytrain.models import ModelConfig


def micro_batches(batch_size: int) -> list[int]:
    """Candidate micro-batches, largest first: the batch, then halving down to 1."""
    sizes, size = [], batch_size
    while size > 1:
        sizes.append(size)
        size = (size + 1) // 2
    return [*sizes, 1]


@lru_cache(maxsize=256)
def step_footprint(
    config: ModelConfig, names: tuple[str, ...], batch_size: int, micro_batch: int
) -> Footprint:
    """Measured step of ``names`` at ``micro_batch`` (None-equivalent when equal to the batch)."""
    return measure_training_step(
        config,
        names,
        batch_size=batch_size,
        micro_batch=None if micro_batch == batch_size else micro_batch,
    )


def fitting_micro_batch(
    config: ModelConfig, names: tuple[str, ...], *, batch_size: int, memory_bytes: int
) -> int | None:
    """The largest micro-batch whose measured step fits ``memory_bytes``; None if none does."""
    for size in micro_batches(batch_size):
        if step_footprint(config, names, batch_size, size).total <= memory_bytes:
            return size
    return None
