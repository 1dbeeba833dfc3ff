"""One local task on a device: train the subset, report what the server may see.

This is the unit of work the live agent runs when a task arrives and the
simulator's workers run for every simulated device. It returns only the delta
of the trained tensors plus scalars (sample count, loss, update energy: the
mean squared value per trained coordinate, DP mechanism): never a raw sample,
never a label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedward.protocol.messages import update_energy
from fedward.tinytrain.models import Params
from fedward.tinytrain.training import LocalTrainConfig, Model, train_subset

from .dp_config import DPTrainConfig


@dataclass(frozen=True, kw_only=True)
class LocalTask:
    task_id: str
    model_version: int
    subset_names: tuple[str, ...]
    train: LocalTrainConfig
    dp: DPTrainConfig | None = None
    seed: int | None = None


@dataclass(frozen=True, kw_only=True)
class DPSpend:
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    accountant_state: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class LocalOutcome:
    task_id: str
    delta: Params
    num_samples: int
    steps: int
    mean_loss: float
    update_energy: float
    dp: DPSpend | None = None


def run_local_task(
    model: Model,
    base: Params,
    x: np.ndarray,
    y: np.ndarray,
    task: LocalTask,
    *,
    accountant_state: Mapping[str, Any] | None = None,
) -> LocalOutcome:
    names: Sequence[str] = task.subset_names
    seed = 0 if task.seed is None and task.dp is None else task.seed
    spend = None
    if task.dp is None:
        result = train_subset(model, base, names, x, y, config=task.train, seed=int(seed or 0))
        delta, steps, loss = result.delta, result.steps, result.mean_loss
    else:
        # imported here: Opacus costs seconds per process, and a fleet without DP never needs it
        from .dp_training import train_subset_dp

        dp = train_subset_dp(
            model,
            base,
            names,
            x,
            y,
            config=task.dp,
            accountant_state=accountant_state,
            seed=task.seed,
        )
        delta, steps, loss = dp.delta, dp.steps, dp.mean_loss
        spend = DPSpend(
            noise_multiplier=dp.noise_multiplier,
            sample_rate=dp.sample_rate,
            steps=dp.steps,
            max_grad_norm=dp.max_grad_norm,
            accountant_state=dp.accountant_state,
        )
    return LocalOutcome(
        task_id=task.task_id,
        delta=delta,
        num_samples=len(x),
        steps=steps,
        mean_loss=loss,
        update_energy=update_energy(delta),
        dp=spend,
    )
