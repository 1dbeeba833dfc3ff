"""Measured training memory of one local step, transient buffers included.

The footprint is measured on a real step (``fedward.tinytrain.training.sgd_step``,
the step training runs), not computed from a formula:

- ``params``: every parameter the device holds for the forward pass (fp32);
- ``grads``: gradients that exist after backward (trained tensors only);
- ``optimizer``: optimizer state (SGD momentum buffers), resident across steps;
- ``saved``: tensors autograd saved for backward (the largest micro-batch's),
  captured with ``torch.autograd.graph.saved_tensors_hooks`` and de-duplicated
  by storage (parameters that autograd saves are already counted in ``params``);
- ``transient``: what the step's working set needs beyond those (the frozen
  prefix's forward buffers, gathered windows, activation gradients, kernels'
  scratch), from an allocation-level tracker.

The tracker is ``torch.profiler``'s CPU memory trace: every allocation and
free of the CPU allocator during the step, in time order; ``profiler_peak`` is
its peak above what existed when the step began. The step runs once to create
the momentum buffers, then is measured: ``peak = params + optimizer +
profiler_peak`` is the most memory the step ever held, and ``total`` is that
peak (never below the tensor-level account ``params + grads + optimizer +
saved``). A subset "fits" a device class only if ``total`` is within its
budget. The window data itself is not counted (a device reads it from storage
a micro-batch at a time); every gathered batch is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch.autograd.profiler_util import FunctionEvent

from .models import ModelConfig, build_model
from .profiler_quiet import quiet_profiler_markers
from .training import sgd_step, split_for_training

PREFIX_MICRO_BATCH = 1  # LocalTrainConfig's default: the frozen prefix streams one window at a time


@dataclass(frozen=True)
class Footprint:
    params: int
    grads: int
    optimizer: int
    saved: int
    profiler_peak: int
    transient: int = 0

    @property
    def resident(self) -> int:
        """The tensor-level account: what stays allocated through the backward pass."""
        return self.params + self.grads + self.optimizer + self.saved

    @property
    def total(self) -> int:
        """The step's measured peak: resident tensors plus transient buffers."""
        return self.resident + self.transient

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "resident": self.resident, "total": self.total}


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _profiler_peak(events: Iterable[FunctionEvent]) -> int:
    """Peak of the allocator's live bytes over the trace, above its start.

    Allocations are attributed to the op that made them (its self memory),
    frees to ``[memory]`` events; replayed in time order they are the
    allocator's timeline.
    """
    timeline = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in events
        if e.self_cpu_memory_usage != 0
    )
    current = peak = 0
    for _, delta in timeline:
        current += delta
        peak = max(peak, current)
    return peak


def transient_bytes(*, accounted: int, held_before: int, profiler_peak: int) -> int:
    """How far the allocation-level peak rises above the tensor-level account."""
    return max(0, held_before + profiler_peak - accounted)


def measure_training_step(
    config: ModelConfig,
    trainable: Sequence[str],
    *,
    batch_size: int,
    micro_batch: int | None = None,
    momentum: float = 0.9,
    prefix_micro_batch: int = PREFIX_MICRO_BATCH,
    seed: int = 0,
) -> Footprint:
    """Run a real SGD step on random inputs and measure what it holds at its peak.

    ``micro_batch`` accumulates gradients over micro-batches (what a careful
    user of a small device does); None runs the batch at once.
    """
    model = build_model(config, seed=seed)
    split = split_for_training(model, trainable)
    param_keys = {_storage_key(p) for p in model.parameters()}
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, config.in_channels, config.window, generator=generator)
    y = torch.randint(0, config.num_classes, (batch_size,), generator=generator)
    idx = torch.arange(batch_size)
    trained = [p for p in split.suffix.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.01, momentum=momentum)

    def step() -> None:
        sgd_step(
            split,
            optimizer,
            x,
            y,
            idx,
            micro_batch=micro_batch,
            prefix_micro_batch=prefix_micro_batch,
        )

    step()  # creates the momentum buffers
    optimizer.zero_grad(set_to_none=True)
    state = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    saved: dict[tuple[int, int], int] = {}
    largest_saved = 0
    in_backward = False

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal in_backward
        if in_backward:  # the next micro-batch's forward: the last one's tensors are freed
            saved.clear()
            in_backward = False
        key = _storage_key(t)
        if key not in param_keys:
            saved[key] = t.untyped_storage().nbytes()
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        nonlocal in_backward, largest_saved  # a backward: this micro-batch's set is complete
        largest_saved = max(largest_saved, sum(saved.values()))
        in_backward = True
        return t

    with (
        quiet_profiler_markers(),
        torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as prof,
        torch.autograd.graph.saved_tensors_hooks(pack, unpack),
    ):
        step()
    grads = sum(
        p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
    )
    peak = _profiler_peak(prof.events())
    saved_bytes = max(largest_saved, sum(saved.values()))
    accounted = params_bytes + grads + state + saved_bytes
    return Footprint(
        params=params_bytes,
        grads=grads,
        optimizer=state,
        saved=saved_bytes,
        profiler_peak=peak,
        transient=transient_bytes(
            accounted=accounted, held_before=params_bytes + state, profiler_peak=peak
        ),
    )


__all__ = ["PREFIX_MICRO_BATCH", "Footprint", "measure_training_step", "transient_bytes"]
