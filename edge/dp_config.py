"""The settings and the result of one DP-SGD task, without Opacus.

Split from :mod:`fedward.edge.dp_training` so that code which only builds or
reads these (the simulator, the budget guard, a plain task's training) does not
import Opacus, which costs seconds per process; the training itself lives there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedward.errors import EdgeError
from fedward.privacy.accounting import (
    Accountant,
    MechanismStep,
    epsilon_for,
    history_from_state,
)
from fedward.tinytrain.models import Params


class DPTrainingError(EdgeError):
    """DP-SGD did not run the mechanism the task planned; nothing it trained is returned.

    The planned ``(sample_rate, steps)`` is what the device's budget and the
    coordinator's ledger account for, so a run that differs is refused rather
    than reported. Raised when Opacus samples at another rate or records
    another number of steps than planned: an Opacus other than the pinned one.
    """


@dataclass(frozen=True, kw_only=True)
class DPTrainConfig:
    """DP-SGD settings of one task. ``batch_size`` is the *expected* Poisson batch.

    ``sample_rate`` and ``steps`` (both or neither) fix the mechanism
    independently of the data: ``steps`` logical batches at Poisson rate
    ``sample_rate``; ``epochs`` and ``batch_size`` are then unused.
    """

    noise_multiplier: float
    max_grad_norm: float
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    max_physical_batch_size: int = 8
    accountant: Accountant = Accountant.RDP
    prefix_micro_batch: int = 4
    sample_rate: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "max_grad_norm", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("epochs", "batch_size", "max_physical_batch_size", "prefix_micro_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")
        if not isinstance(self.accountant, Accountant):
            raise ValueError(f"accountant must be an Accountant, got {self.accountant!r}")
        if (self.sample_rate is None) != (self.steps is None):
            raise ValueError(
                "sample_rate and steps fix the mechanism together: set both or neither"
            )
        if self.sample_rate is not None:
            q = self.sample_rate
            if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q <= 1:
                raise ValueError(f"sample_rate must be in (0, 1], got {q!r}")
            if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
                raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")

    @property
    def fixed_mechanism(self) -> bool:
        """True when the task, not the data size, fixes ``(sample_rate, steps)``."""
        return self.sample_rate is not None


@dataclass(frozen=True, kw_only=True)
class DPTrainResult:
    """What one DP task produced and what the device reports with its update."""

    delta: Params  # trained tensors only, model order: new - base
    num_samples: int
    steps: int
    mean_loss: float
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    accountant: Accountant
    accountant_state: dict[str, Any]  # JSON-serialisable; pass to the next task

    @property
    def mechanism_step(self) -> MechanismStep:
        """This task's mechanism, as reported to the coordinator's ledger."""
        return MechanismStep(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps
        )

    @property
    def history(self) -> tuple[MechanismStep, ...]:
        return history_from_state(self.accountant_state, accountant=self.accountant)

    def epsilon(self, *, delta: float) -> float:
        """Cumulative epsilon at ``delta`` over every task in the carried state."""
        return epsilon_for(self.history, delta=delta, accountant=self.accountant)
