"""A study's privacy settings: the budget promised and the mechanism every task runs.

Fixed when the study is created and never changed (a frozen model inside the
frozen ``StudySpec``; the guard refuses a persisted state written under other
settings). Two halves:

- the *budget policy* (``epsilon`` at ``delta`` per device over the whole
  study, composed by ``accountant``): the promise to data subjects;
- the *mechanism of one task*: DP-SGD with ``noise_multiplier`` and clip norm
  ``max_grad_norm``, ``steps_per_task`` logical batches, each sample drawn with
  probability ``sample_rate`` (Poisson).

Why the task, not the device's data size, fixes ``(sample_rate, steps)``: the
epsilon a task costs is then known when it is dispatched, so the coordinator
can refuse to schedule a device whose budget cannot afford it, without knowing
how many samples the device holds (which the server should not learn anyway).
A device trains ``q * steps`` passes over its data on average, whatever its
size; its expected batch is ``q * n``.

``max_physical_batch_size`` is a memory hint sent to devices (Opacus'
``BatchMemoryManager``); it does not change the guarantee.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedward.privacy.accounting import Accountant, MechanismStep
from fedward.privacy.budget import BudgetPolicy
from fedward.privacy.errors import PolicyError
from fedward.protocol.messages import DpParams


class StudyPrivacy(BaseModel):
    """Per-study DP settings (sample-level DP-SGD on each device)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    accountant: Accountant = Field(default=Accountant.RDP, strict=False)  # "rdp" from JSON
    allow_gdp: bool = False
    noise_multiplier: float = Field(gt=0)
    max_grad_norm: float = Field(gt=0)
    sample_rate: float = Field(gt=0, le=1)
    steps_per_task: int = Field(ge=1)
    max_physical_batch_size: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _check(self) -> StudyPrivacy:
        for name in ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        try:
            self.policy()
        except PolicyError as exc:  # pydantic reports ValueErrors as validation errors
            raise ValueError(str(exc)) from exc
        return self

    def policy(self) -> BudgetPolicy:
        """The budget policy the ledger pins (raises ``PolicyError`` if unsafe)."""
        return BudgetPolicy(
            epsilon=self.epsilon,
            delta=self.delta,
            accountant=self.accountant,
            allow_gdp=self.allow_gdp,
        )

    def task_step(self) -> MechanismStep:
        """The mechanism one task runs: what it costs, known at dispatch."""
        return MechanismStep(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps_per_task,
        )

    def task_dp(self) -> DpParams:
        """The ``Task.dp`` field every task of the study carries."""
        return DpParams(
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            sample_rate=self.sample_rate,
            delta=self.delta,
            accountant=self.accountant,
            max_steps=self.steps_per_task,
        )
