"""Measured memory of one DP-SGD step (Opacus) on a sparse subset.

The DP counterpart of ``fedward.tinytrain.memory.measure_training_step``: the same
split (frozen prefix without autograd, trainable suffix), the suffix wrapped in
Opacus' ``GradSampleModule`` and ``DPOptimizer``, and the logical batch split
into physical batches as ``BatchMemoryManager`` does. Per-sample gradients are
what DP adds, and they grow with the physical batch: a device picks the largest
physical batch that fits its memory; the mechanism and the result do not
depend on it. The coordinator's planner sizes DP subsets with this measurement.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .memory import (
    Footprint,
    _profiler_peak,
    _storage_key,
    cached_footprint,
    footprint_key,
    transient_bytes,
)
from .models import ModelConfig, build_model
from .profiler_quiet import quiet_profiler_markers
from .training import frozen_features, split_for_training

_BACKWARD_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect"


@dataclass(frozen=True)
class DPFootprint(Footprint):
    """``Footprint`` of a DP step; ``grads`` includes ``per_sample_grads``.

    ``grads`` = regular gradients + Opacus' clipped-sum accumulators
    (``summed_grad``) + per-sample gradients (``grad_sample``) of one physical
    batch, all of which coexist when the optimizer steps.
    """

    per_sample_grads: int = 0


def _tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _opacus_tensors(model: nn.Module, attr: str) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for p in model.parameters():
        value = getattr(p, attr, None)
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, list):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def measure_dp_training_step(
    model_config: ModelConfig,
    trainable: Sequence[str],
    *,
    batch_size: int,
    max_physical_batch_size: int | None = None,
    noise_multiplier: float = 1.0,
    max_grad_norm: float = 1.0,
    momentum: float = 0.9,
    prefix_micro_batch: int = 4,
    seed: int = 0,
) -> DPFootprint:
    """Run one real DP-SGD step (one logical batch) and measure what it holds.

    Mirrors ``fedward.tinytrain.memory.measure_training_step``: same model, inputs and
    split; the suffix is wrapped in Opacus' ``GradSampleModule`` and
    ``DPOptimizer``. The logical batch is split into physical batches of at
    most ``max_physical_batch_size`` as ``BatchMemoryManager`` does;
    ``saved`` and ``per_sample_grads`` are the largest of any physical batch.
    ``saved`` also counts the layer inputs Opacus' hooks keep for the
    per-sample gradient computation.
    """
    # Opacus is imported here, not at module level: a study without DP (and so
    # `fedward bench` or `simulate` without a privacy row) never pays for its import
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    physical = batch_size if max_physical_batch_size is None else max_physical_batch_size
    if batch_size < 1 or physical < 1:
        raise ValueError("batch_size and max_physical_batch_size must be >= 1")
    model = build_model(model_config, seed=seed)
    split = split_for_training(model, trainable)
    param_keys = {_storage_key(p) for p in model.parameters()}
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, model_config.in_channels, model_config.window, generator=generator)
    y = torch.randint(0, model_config.num_classes, (batch_size,), generator=generator)
    trained = [p for p in split.suffix.parameters() if p.requires_grad]
    gsm = GradSampleModule(split.suffix)
    optimizer = DPOptimizer(
        torch.optim.SGD(trained, lr=0.01, momentum=momentum),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    chunks = [slice(i, min(i + physical, batch_size)) for i in range(0, batch_size, physical)]
    peak_saved = peak_per_sample = 0
    try:
        with (
            quiet_profiler_markers(),
            torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            ) as prof,
        ):
            features = frozen_features(split.prefix, x, micro_batch=prefix_micro_batch)
            for k, chunk in enumerate(chunks):
                saved: dict[tuple[int, int], int] = {}

                def pack(
                    t: torch.Tensor, saved: dict[tuple[int, int], int] = saved
                ) -> torch.Tensor:
                    key = _storage_key(t)
                    if key not in param_keys:
                        saved[key] = t.untyped_storage().nbytes()
                    return t

                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss = nn.functional.cross_entropy(gsm(features[chunk]), y[chunk])
                for module in split.suffix.modules():
                    for inputs in getattr(module, "activations", []):
                        for t in inputs:
                            if _storage_key(t) not in param_keys:
                                saved[_storage_key(t)] = t.untyped_storage().nbytes()
                with warnings.catch_warnings():
                    warnings.filterwarnings(
                        "ignore", message=_BACKWARD_HOOK_WARNING, category=UserWarning
                    )
                    loss.backward()
                peak_saved = max(peak_saved, sum(saved.values()))
                peak_per_sample = max(
                    peak_per_sample, _tensor_bytes(_opacus_tensors(model, "grad_sample"))
                )
                optimizer.signal_skip_step(do_skip=k < len(chunks) - 1)
                optimizer.step()
                if k < len(chunks) - 1:
                    optimizer.zero_grad()
        grads = _tensor_bytes(
            [p.grad for p in model.parameters() if p.grad is not None]
            + _opacus_tensors(model, "summed_grad")
        )
        state = sum(
            v.numel() * v.element_size()
            for s in optimizer.original_optimizer.state.values()
            for v in s.values()
            if isinstance(v, torch.Tensor)
        )
    finally:
        gsm.cleanup()
    peak = _profiler_peak(prof.events())
    accounted = params_bytes + grads + peak_per_sample + state + peak_saved
    return DPFootprint(
        params=params_bytes,
        grads=grads + peak_per_sample,
        optimizer=state,
        saved=peak_saved,
        profiler_peak=peak,
        # the momentum buffers are created inside the traced step, so only the
        # parameters existed before it
        transient=transient_bytes(
            accounted=accounted, held_before=params_bytes, profiler_peak=peak
        ),
        per_sample_grads=peak_per_sample,
    )


@lru_cache(maxsize=1)
def _dp_code_digest() -> str:
    """A hash of this module: a changed DP measurement re-measures."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def dp_training_footprint(
    model_config: ModelConfig,
    trainable: Sequence[str],
    *,
    batch_size: int,
    max_physical_batch_size: int | None = None,
    noise_multiplier: float = 1.0,
    max_grad_norm: float = 1.0,
    momentum: float = 0.9,
    prefix_micro_batch: int = 4,
    seed: int = 0,
) -> DPFootprint:
    """``measure_dp_training_step``'s figure, measured once per key (this process, then
    the disk cache of ``fedward.tinytrain.memory``, same rules: the entry stores its
    whole key and is trusted only if it matches). The key adds the DP step's own
    settings, Opacus' version and this module's code to the plain step's key.

    Why: a DP study's planner measures every tier at a physical batch of one, 32
    traced physical batches each, which took about 30 s of every study creation.
    """
    key = footprint_key(
        model_config,
        trainable,
        batch_size=batch_size,
        momentum=momentum,
        prefix_micro_batch=prefix_micro_batch,
        seed=seed,
    )
    key["dp"] = {
        "max_physical_batch_size": max_physical_batch_size,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": max_grad_norm,
        "opacus": importlib.metadata.version("opacus"),
        "code": _dp_code_digest(),
    }
    return cached_footprint(
        key,
        DPFootprint,
        lambda: measure_dp_training_step(
            model_config,
            trainable,
            batch_size=batch_size,
            max_physical_batch_size=max_physical_batch_size,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            momentum=momentum,
            prefix_micro_batch=prefix_micro_batch,
            seed=seed,
        ),
    )
