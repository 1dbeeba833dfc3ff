"""Local DP-SGD (Opacus) on a device's trainable subset only.

Per-sample gradients are what makes DP-SGD expensive; Opacus computes them only
for parameters with ``requires_grad=True`` when the module is wrapped. So:

1. the model is split with ``fedward.tinytrain.training.split_for_training`` *before*
   wrapping (that sets ``requires_grad`` for the subset only);
2. the frozen prefix runs once, without autograd, micro-batched
   (``frozen_features``): its output is the dataset the suffix trains on. The
   prefix is a fixed function of each sample, so DP-SGD on the suffix over
   these features is DP for the raw samples (post-processing);
3. Opacus wraps only the suffix, with Poisson sampling and a
   ``BatchMemoryManager`` capping the physical batch.

The subset may change between tasks, so the wrapper is rebuilt per task and
removed afterwards (its hooks live on the model's modules); what carries over
is the accountant's state. Opacus clips and noises whole tensors: a subset that
takes part of a tensor would get noise over the whole tensor (our ladder only
uses whole tensors).

Two ways to fix the mechanism:

- *from the data* (``sample_rate=None``): Opacus' own rule, ``q = 1/ceil(n/b)``
  and ``epochs`` passes, so ``(q, steps)`` depend on the device's sample count;
- *fixed by the task* (``sample_rate`` and ``steps`` set): the coordinator's
  task says "``steps`` logical batches, each sample drawn with probability
  ``q``" (``fedward.protocol.messages.DpParams.sample_rate`` / ``max_steps``). The
  mechanism, hence the epsilon it costs, is then known when the task is
  dispatched, whatever the device's data size: that is what lets the
  coordinator refuse to schedule a device its budget cannot afford. The
  expected batch is ``q * n``; ``q * steps`` passes over the data on average.

Seeds: ``seed`` drives Poisson sampling and the noise. A seed known to anyone
else makes the noise removable, so production devices pass ``seed=None``;
integers are for tests and simulations (torch's generator, reproducible).
With ``seed=None`` the noise comes from a cryptographically secure generator:
Opacus' ``secure_mode`` needs torchcsprng, which has no build for the pinned
torch and does not install here, so the optimizer's ``add_noise`` is replaced
by the equivalent in :mod:`fedward.privacy.noise` (ChaCha20 keyed from
``os.urandom``, each value the halved sum of four normals, as secure mode
does). Poisson sampling then uses a torch generator seeded from ``os.urandom``:
its outputs are never released, only which samples a batch held.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.dataloader import default_collate

from fedward.privacy.accounting import (
    Accountant,
    MechanismStep,
    history_from_state,
    history_to_state,
)
from fedward.privacy.errors import PolicyError
from fedward.privacy.noise import ChaChaNormal, secure_standard_normal
from fedward.tinytrain.models import Params, get_params, set_params
from fedward.tinytrain.training import Model, frozen_features, split_for_training

from .dp_config import DPTrainConfig, DPTrainingError, DPTrainResult

__all__ = ["DPTrainConfig", "DPTrainResult", "DPTrainingError", "train_subset_dp"]


class _SecureNoiseDPOptimizer(DPOptimizer):
    """``DPOptimizer`` whose noise is drawn from ``fedward.privacy.noise.ChaChaNormal``."""

    secure_source: ChaChaNormal

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            shape = tuple(p.summed_grad.shape)
            unit = torch.from_numpy(secure_standard_normal(self.secure_source, shape))
            noise = (std * unit).to(dtype=p.summed_grad.dtype)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


def use_secure_noise(optimizer: DPOptimizer, source: ChaChaNormal | None = None) -> None:
    """Make ``optimizer`` draw its noise from a CSPRNG (secure_mode's equivalent here)."""
    if type(optimizer) is not DPOptimizer:  # a subclass would lose its own behaviour
        raise DPTrainingError(f"secure noise needs a plain DPOptimizer, got {type(optimizer)}")
    optimizer.__class__ = _SecureNoiseDPOptimizer
    optimizer.secure_source = source if source is not None else ChaChaNormal()


def _generators(seed: int | None) -> tuple[torch.Generator, torch.Generator]:
    if seed is None:
        seeds = [int.from_bytes(os.urandom(8), "little") >> 1 for _ in range(2)]
    else:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)]
        seeds = [s >> 1 for s in seeds]  # torch seeds are signed 64-bit
    return torch.Generator().manual_seed(seeds[0]), torch.Generator().manual_seed(seeds[1])


def _total_steps(history: Sequence[MechanismStep]) -> int:
    return sum(step.steps for step in history)


def _check_gdp_constant(
    prior: Sequence[MechanismStep], noise_multiplier: float, sample_rate: float
) -> None:
    keys = {step.key for step in prior} | {(float(noise_multiplier), float(sample_rate))}
    if len(keys) > 1:
        raise PolicyError(
            "the GDP accountant needs a constant (noise_multiplier, sample_rate) across tasks"
        )


def train_subset_dp(
    model: Model,
    base_params: Params,
    trainable_names: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    *,
    config: DPTrainConfig,
    accountant_state: Mapping[str, Any] | None,
    seed: int | None,
) -> DPTrainResult:
    """DP-SGD on ``trainable_names`` from ``base_params``; returns the delta and new state.

    ``accountant_state`` is the previous task's ``DPTrainResult.accountant_state``
    (or ``None`` for a device's first task); the returned state composes it
    with this task. Refusing a task the budget cannot afford is the caller's
    job (``fedward.privacy.ledger.PrivacyLedger.can_afford`` with ``planned_step``).
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError("x and y must be non-empty and of equal length")
    prior = (
        history_from_state(accountant_state, accountant=config.accountant)
        if accountant_state is not None
        else ()
    )
    sample_rate = planned_step(len(x), config=config).sample_rate
    if config.accountant is Accountant.GDP:
        _check_gdp_constant(prior, config.noise_multiplier, sample_rate)
    set_params(model, base_params)
    split = split_for_training(model, trainable_names)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    features = frozen_features(split.prefix, xt, micro_batch=config.prefix_micro_batch)
    sample_generator, noise_generator = _generators(seed)

    with warnings.catch_warnings():
        # both are documented above; fedward.privacy.accounting warns about GDP whenever
        # an epsilon is computed with it
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        warnings.filterwarnings("ignore", message="GDP accounting is experimental")
        engine = PrivacyEngine(accountant=config.accountant.value, secure_mode=False)
    if prior:
        engine.accountant.load_state_dict(
            {"history": [s.as_tuple() for s in prior], "mechanism": config.accountant.value}
        )
    trained = [p for p in split.suffix.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=config.lr, momentum=config.momentum)
    dataset = TensorDataset(features, yt)
    if config.fixed_mechanism:
        dp_module, dp_optimizer, dp_loader = _wrap_fixed_mechanism(
            engine,
            split.suffix,
            optimizer,
            dataset,
            config=config,
            generators=(sample_generator, noise_generator),
        )
        epochs = 1  # the sampler yields exactly config.steps logical batches
    else:
        loader = DataLoader(dataset, batch_size=config.batch_size, generator=sample_generator)
        dp_module, dp_optimizer, dp_loader = engine.make_private(
            module=split.suffix,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            poisson_sampling=True,
            noise_generator=noise_generator,
        )
        epochs = config.epochs
    if seed is None:  # production: the noise from a CSPRNG, never from torch's generator
        use_secure_noise(dp_optimizer)
    if dp_loader.sample_rate != sample_rate:
        _release(dp_module, trained)
        raise DPTrainingError(
            f"Opacus samples at rate {dp_loader.sample_rate}, the task was planned at "
            f"{sample_rate}: its privacy cost would not be the one accounted for; install "
            "the opacus version pinned in fedward's dependencies"
        )
    try:
        loss_sum, loss_count = _run_epochs(
            dp_module, dp_optimizer, dp_loader, config=config, epochs=epochs
        )
    finally:
        _release(dp_module, trained)
    after = history_from_state(engine.accountant.state_dict(), accountant=config.accountant)
    steps = _total_steps(after) - _total_steps(prior)
    if config.fixed_mechanism and steps != config.steps:
        raise DPTrainingError(
            f"Opacus recorded {steps} DP steps, the task fixed {config.steps}: its privacy "
            "cost would not be the one accounted for; install the opacus version pinned in "
            "fedward's dependencies"
        )
    new = get_params(model)
    delta = {n: new[n] - base_params[n] for n in split.trainable}
    return DPTrainResult(
        delta=delta,
        num_samples=len(x),
        steps=steps,
        mean_loss=loss_sum / max(loss_count, 1),
        sample_rate=sample_rate,
        noise_multiplier=config.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        accountant=config.accountant,
        accountant_state=history_to_state(after, accountant=config.accountant),
    )


def _release(dp_module: GradSampleModule, trained: Sequence[torch.Tensor]) -> None:
    """Remove Opacus' hooks and buffers: they live on the caller's model.

    The model object is reused for the next task (possibly another subset), so
    stale hooks would compute per-sample gradients for the wrong tensors and
    stale buffers would hold memory the footprint does not account for.
    """
    dp_module.cleanup()
    for p in trained:
        if hasattr(p, "summed_grad"):
            del p.summed_grad
        p.grad = None


class _FixedRateLoader(DataLoader):
    """A Poisson loader of exactly ``steps`` logical batches at rate ``sample_rate``.

    What Opacus' ``DPDataLoader`` builds, except that the number of batches is
    the task's ``steps`` rather than ``1 / sample_rate`` (one "epoch").
    """

    def __init__(
        self, dataset: TensorDataset, *, sample_rate: float, steps: int, generator: torch.Generator
    ) -> None:
        first = dataset[0]
        super().__init__(
            dataset,
            batch_sampler=UniformWithReplacementSampler(
                num_samples=len(dataset), sample_rate=sample_rate, generator=generator, steps=steps
            ),
            collate_fn=wrap_collate_with_empty(
                collate_fn=default_collate,
                sample_empty_shapes=[(0, *shape_safe(t)) for t in first],
                dtypes=[dtype_safe(t) for t in first],
            ),
            generator=generator,
        )
        self.sample_rate = sample_rate


def _wrap_fixed_mechanism(
    engine: PrivacyEngine,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: TensorDataset,
    *,
    config: DPTrainConfig,
    generators: tuple[torch.Generator, torch.Generator],
) -> tuple[GradSampleModule, DPOptimizer, _FixedRateLoader]:
    """``make_private`` with the task's sample rate and step count.

    The same three Opacus pieces ``make_private`` builds (``GradSampleModule``,
    ``DPOptimizer``, the accountant's step hook), but the accountant is told
    the task's ``sample_rate`` instead of ``1 / len(loader)``, and the loader
    yields exactly ``steps`` Poisson batches.
    """
    if config.sample_rate is None or config.steps is None:
        raise ValueError("the fixed-mechanism path needs sample_rate and steps")
    sample_generator, noise_generator = generators
    dp_module = GradSampleModule(module, batch_first=True, loss_reduction="mean")
    dp_module.forbid_grad_accumulation()
    dp_optimizer = DPOptimizer(
        optimizer,
        noise_multiplier=config.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        expected_batch_size=max(1, int(len(dataset) * config.sample_rate)),
        loss_reduction="mean",
        generator=noise_generator,
    )
    dp_optimizer.attach_step_hook(
        engine.accountant.get_optimizer_hook_fn(sample_rate=config.sample_rate)
    )
    loader = _FixedRateLoader(
        dataset, sample_rate=config.sample_rate, steps=config.steps, generator=sample_generator
    )
    return dp_module, dp_optimizer, loader


_BACKWARD_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect"


def _run_epochs(
    dp_module: GradSampleModule,
    dp_optimizer: DPOptimizer,
    dp_loader: DataLoader,
    *,
    config: DPTrainConfig,
    epochs: int,
) -> tuple[float, int]:
    """The DP-SGD loop; returns the summed loss and the number of samples seen."""
    loss_fn = nn.CrossEntropyLoss()
    loss_sum, loss_count = 0.0, 0
    dp_module.train()
    with warnings.catch_warnings():
        # the suffix input (frozen features) needs no gradient; Opacus' hooks only
        # need gradients with respect to layer outputs, so this warning is expected
        warnings.filterwarnings("ignore", message=_BACKWARD_HOOK_WARNING, category=UserWarning)
        for _ in range(epochs):
            with BatchMemoryManager(
                data_loader=dp_loader,
                max_physical_batch_size=config.max_physical_batch_size,
                optimizer=dp_optimizer,
            ) as physical_loader:
                for xb, yb in physical_loader:
                    dp_optimizer.zero_grad(set_to_none=True)
                    out = dp_module(xb)
                    # an empty Poisson batch still steps: the accountant counts it
                    # and the optimizer adds noise to a zero gradient
                    loss = loss_fn(out, yb) if len(yb) else out.sum() * 0.0
                    loss.backward()
                    dp_optimizer.step()
                    if len(yb):
                        loss_sum += float(loss.detach()) * len(yb)
                        loss_count += len(yb)
    return loss_sum, loss_count


def planned_sample_rate(num_samples: int, *, batch_size: int) -> float:
    """Opacus' Poisson rate for ``num_samples`` at expected batch ``batch_size``.

    ``make_private`` uses ``1 / len(data_loader)``, i.e. ``1 / ceil(n / b)``.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError("num_samples and batch_size must be >= 1")
    return 1 / math.ceil(num_samples / batch_size)


def planned_step(num_samples: int, *, config: DPTrainConfig) -> MechanismStep:
    """The mechanism a task will run, known before training (for budget checks).

    Steps = epochs x number of logical batches per epoch, which is what
    Opacus' accountant records (one entry per logical batch, empty ones too).
    A config with a fixed mechanism returns it as is, whatever ``num_samples``.
    """
    if config.sample_rate is not None and config.steps is not None:
        return MechanismStep(
            noise_multiplier=config.noise_multiplier,
            sample_rate=config.sample_rate,
            steps=config.steps,
        )
    q = planned_sample_rate(num_samples, batch_size=config.batch_size)
    return MechanismStep(
        noise_multiplier=config.noise_multiplier,
        sample_rate=q,
        steps=config.epochs * math.ceil(num_samples / config.batch_size),
    )


# Measurement lives with the other memory code (the planner needs it too).
from fedward.tinytrain.dp_memory import DPFootprint, measure_dp_training_step  # noqa: E402,F401
