"""Counted compute of a local training step (FLOPs), for virtual time.

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of the aten ops a
real step dispatches: the frozen prefix's forward (no backward), the suffix's
forward and backward (weight gradients only for trained tensors, input
gradients only down to the first trained layer) and the optimizer update. A
subset therefore saves time only through work it really skips.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import ModelConfig, build_model
from .training import frozen_features, split_for_training


@lru_cache(maxsize=256)
def _step_flops(config: ModelConfig, trainable: tuple[str, ...], batch_size: int) -> int:
    model = build_model(config, seed=0)
    split = split_for_training(model, trainable)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, config.in_channels, config.window, generator=generator)
    y = torch.randint(0, config.num_classes, (batch_size,), generator=generator)
    optimizer = torch.optim.SGD(
        [p for p in split.suffix.parameters() if p.requires_grad], lr=0.01, momentum=0.9
    )
    counter = FlopCounterMode(display=False)
    with counter:
        features = frozen_features(split.prefix, x, micro_batch=batch_size)
        loss = nn.functional.cross_entropy(split.suffix(features), y)
        loss.backward()
        optimizer.step()
    return int(counter.get_total_flops())


def step_flops(config: ModelConfig, trainable: Sequence[str], *, batch_size: int) -> int:
    """FLOPs of one SGD step on a batch of ``batch_size`` training ``trainable``."""
    return _step_flops(config, tuple(sorted(trainable)), batch_size)


def task_flops(
    config: ModelConfig, trainable: Sequence[str], *, samples: int, epochs: int, batch_size: int
) -> float:
    """FLOPs of a local task: per-sample step cost times samples seen."""
    per_sample = step_flops(config, trainable, batch_size=batch_size) / batch_size
    return per_sample * samples * epochs


def measure_machine_flops(*, seconds: float = 0.2) -> float:
    """This machine's single-thread float32 matmul rate (FLOP/s), measured for ``seconds``.

    What the simulator scales a device class's compute against (its profile's
    FLOP/s over this figure), for work it charges in virtual time but runs here.
    """
    import time

    from .runtime import fixed_threads

    a = torch.ones(256, 256)
    flops, spent = 0.0, 0.0
    with fixed_threads():
        while spent < seconds:
            started = time.perf_counter()
            torch.mm(a, a)
            spent += time.perf_counter() - started
            flops += 2 * 256**3
    return flops / spent
