"""Process-level torch settings (kept here so torch stays in model code).

Results must not depend on the machine: torch's intra-op thread count changes
how a convolution splits its reductions, and so the float rounding of every
step (the shared warm start scored 0.913 with 2 threads and 0.960 with 1 on the
same seed). Every computation whose result a study reports runs with one
intra-op thread (``fixed_threads``); parallelism comes from processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

DETERMINISTIC_THREADS = 1


def limit_threads(threads: int) -> None:
    """One intra-op thread per worker process: parallelism comes from processes."""
    torch.set_num_threads(threads)


@contextmanager
def fixed_threads(threads: int = DETERMINISTIC_THREADS) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def numerics_fingerprint() -> dict[str, str | int]:
    """What a cached trained result depends on beyond its own inputs."""
    import numpy

    return {
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "threads": DETERMINISTIC_THREADS,
    }


def torch_threads() -> int:
    return torch.get_num_threads()
