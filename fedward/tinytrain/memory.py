"""Measured training memory of one local step.

The footprint is measured on a real step, not computed from a formula:

- ``params``: every parameter the device holds for the forward pass (fp32);
- ``grads``: gradients that exist after backward (trained tensors only);
- ``optimizer``: optimizer state after the step (SGD momentum buffers);
- ``saved``: tensors autograd saved for backward, captured with
  ``torch.autograd.graph.saved_tensors_hooks`` and de-duplicated by storage
  (parameters that autograd saves are already counted in ``params``).

``total = params + grads + optimizer + saved`` is what stays resident across a
step. Transient forward buffers are not in it; ``profiler_peak`` is the peak of
``torch.profiler``'s CPU allocation trace over the same step, reported beside it
as a cross-check (it includes transients and allocator effects, and excludes
memory that existed before the step began, such as the parameters).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.autograd.profiler_util import FunctionEvent

from .models import ModelConfig, build_model
from .profiler_quiet import quiet_profiler_markers
from .training import frozen_features, split_for_training


@dataclass(frozen=True)
class Footprint:
    params: int
    grads: int
    optimizer: int
    saved: int
    profiler_peak: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.saved

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _profiler_peak(events: Iterable[FunctionEvent]) -> int:
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


def measure_training_step(
    config: ModelConfig,
    trainable: Sequence[str],
    *,
    batch_size: int,
    momentum: float = 0.9,
    prefix_micro_batch: int = 4,
    seed: int = 0,
) -> Footprint:
    """Run one real SGD step on random inputs and measure what it holds."""
    model = build_model(config, seed=seed)
    split = split_for_training(model, trainable)
    param_keys = {_storage_key(p) for p in model.parameters()}
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, config.in_channels, config.window, generator=generator)
    y = torch.randint(0, config.num_classes, (batch_size,), generator=generator)
    trained = [p for p in split.suffix.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.01, momentum=momentum)
    saved: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in param_keys:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with (
        quiet_profiler_markers(),
        torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as prof,
    ):
        features = frozen_features(split.prefix, x, micro_batch=prefix_micro_batch)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = nn.functional.cross_entropy(split.suffix(features), y)
        loss.backward()
        optimizer.step()
    grads = sum(
        p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
    )
    state = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    return Footprint(
        params=params_bytes,
        grads=grads,
        optimizer=state,
        saved=sum(saved.values()),
        profiler_peak=_profiler_peak(prof.events()),
    )
