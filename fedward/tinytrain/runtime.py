"""Process-level torch settings (kept here so torch stays in model code)."""

from __future__ import annotations

import torch


def limit_threads(threads: int) -> None:
    """One intra-op thread per worker process: parallelism comes from processes."""
    torch.set_num_threads(threads)
