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

Bounds (issue 9, item 6): a schema-valid study with ``noise_multiplier`` 0.02
under PRV slowed every route to 20-60 s, 1e-200 gave a 500 from ``/privacy``.
Every field is bounded here (a noise multiplier below 0.1 buys no privacy
anyway: one 8-step task at q = 0.25 already costs epsilon 430), and
:func:`check_first_task`, run once when a study is created and outside the
service lock, computes the first task's epsilon within a time limit and
refuses a study whose first task alone exceeds its budget, with the figure.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedward.privacy.accounting import Accountant, MechanismStep
from fedward.privacy.budget import BudgetPolicy, PrivacyUnit
from fedward.privacy.central import patient_level_step
from fedward.privacy.errors import PolicyError, PrivacyError
from fedward.privacy.secagg.ddp import DistributedDp
from fedward.privacy.skellam import SkellamStep
from fedward.protocol.messages import DpParams

from .timed import EpsilonTooSlow, epsilon_within

MAX_EPSILON = 100.0  # past this a budget promises nothing a data subject would recognise
MIN_DELTA = 1e-15
MIN_NOISE_MULTIPLIER = 0.1
MAX_NOISE_MULTIPLIER = 1_000.0
MAX_GRAD_NORM = 1e4
MIN_SAMPLE_RATE = 1e-6
MAX_STEPS_PER_TASK = 10_000
MAX_PHYSICAL_BATCH = 65_536
FIRST_TASK_SECONDS = 2.0
"""Time limit of the first task's epsilon at creation. A mechanism whose one-task
epsilon takes longer would stall every ledger update that follows."""


class StudyPrivacy(BaseModel):
    """Per-study DP settings (sample-level DP-SGD on each device)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    epsilon: float = Field(gt=0, le=MAX_EPSILON)
    delta: float = Field(ge=MIN_DELTA, lt=1)
    accountant: Accountant = Field(default=Accountant.RDP, strict=False)  # "rdp" from JSON
    allow_gdp: bool = False
    noise_multiplier: float = Field(ge=MIN_NOISE_MULTIPLIER, le=MAX_NOISE_MULTIPLIER)
    max_grad_norm: float = Field(gt=0, le=MAX_GRAD_NORM)
    sample_rate: float = Field(ge=MIN_SAMPLE_RATE, le=1)
    steps_per_task: int = Field(ge=1, le=MAX_STEPS_PER_TASK)
    max_physical_batch_size: int = Field(default=8, ge=1, le=MAX_PHYSICAL_BATCH)

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

    @property
    def unit(self) -> PrivacyUnit:
        """Sample-level DP-SGD: an epsilon protects one 10-s window."""
        return PrivacyUnit.WINDOW

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


class PatientPrivacy(BaseModel):
    """Patient-level DP of a ``client_dp`` study: each patient's epsilon over the study.

    A device holds one patient. Every merge that holds the device's clipped
    update is a Gaussian mechanism with noise multiplier ``noise_multiplier``
    against the merge's sensitivity ``2C / K``
    (``fedward.coordinator.strategies.client_dp``), so one *task* of the study
    (one participation) costs ``patient_level_step(z, 1)``, charged when it is
    dispatched, and a device whose budget cannot afford one more is never
    dispatched again. Devices train without DP-SGD (``task_dp`` is None): the
    noise is the coordinator's (central DP, see docs/privacy.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    epsilon: float = Field(gt=0, le=MAX_EPSILON)
    delta: float = Field(ge=MIN_DELTA, lt=1)
    accountant: Accountant = Field(default=Accountant.RDP, strict=False)
    noise_multiplier: float = Field(ge=MIN_NOISE_MULTIPLIER, le=MAX_NOISE_MULTIPLIER)
    clip_norm: float = Field(gt=0, le=1e6)

    @model_validator(mode="after")
    def _check(self) -> PatientPrivacy:
        for name in ("epsilon", "delta", "noise_multiplier", "clip_norm"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        try:
            self.policy()
        except PolicyError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def unit(self) -> PrivacyUnit:
        return PrivacyUnit.PATIENT

    @property
    def max_grad_norm(self) -> float:
        """The clip bound (what the guard's events call the clip norm)."""
        return self.clip_norm

    def policy(self) -> BudgetPolicy:
        return BudgetPolicy(epsilon=self.epsilon, delta=self.delta, accountant=self.accountant)

    def task_step(self) -> MechanismStep:
        """One participation in a merge: what one task costs the patient."""
        return patient_level_step(noise_multiplier=self.noise_multiplier, participations=1)

    def task_dp(self) -> None:
        """Devices run no DP-SGD in a client-level study: the merge is noised."""
        return None


class DistributedPrivacy(BaseModel):
    """Patient-level DP of a secure-aggregation study with distributed DP (issue 11).

    Every member of a fill clips its whole update to ``l2_clip`` and adds a
    Skellam share (``fedward.privacy.secagg.ddp``), so the sum the coordinator
    unmasks carries the noise of at least ``threshold - max_colluders`` honest
    survivors: a Skellam mechanism against one device's (one patient's) update.
    One task (one fill membership) costs that release, charged when the fill is
    dispatched; when the fill's sum is released the survivors' charges are
    confirmed and the other members' released (their input is in no sum); an
    aborted fill releases every charge (nothing was unmasked). The fill's
    geometry (cohort size, threshold, the model size ``d``) fixes the scale and
    the sensitivities, so the coordinator builds these settings from the study's
    ``SecAggPolicy``; ``d`` is the whole model's size, an upper bound on any
    fill's index set (a larger ``d`` has a larger rounded-norm sensitivity), so
    the charge is never below the release. No sampling amplification is claimed.
    Devices run no DP-SGD (``task_dp`` is None): the noise is theirs, never the
    coordinator's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    epsilon: float = Field(gt=0, le=MAX_EPSILON)
    delta: float = Field(ge=MIN_DELTA, lt=1)
    l2_clip: float = Field(gt=0, le=1e6)
    noise_multiplier: float = Field(ge=MIN_NOISE_MULTIPLIER, le=MAX_NOISE_MULTIPLIER)
    bits: int = Field(ge=8, le=30)
    threshold: int = Field(ge=2)
    max_colluders: int = Field(ge=0)
    cohort_size: int = Field(ge=2)
    model_size: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> DistributedPrivacy:
        for name in ("epsilon", "delta", "l2_clip", "noise_multiplier"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        try:
            self.policy()
            self.mechanism()  # the DDP block refuses bits that cannot hold the cohort's sum
        except PrivacyError as exc:
            raise ValueError(f"distributed DP cannot run as set: {exc}") from exc
        return self

    @property
    def unit(self) -> PrivacyUnit:
        return PrivacyUnit.PATIENT

    @property
    def max_grad_norm(self) -> float:
        """The clip bound (what the guard's events call the clip norm)."""
        return self.l2_clip

    def policy(self) -> BudgetPolicy:
        return BudgetPolicy(epsilon=self.epsilon, delta=self.delta, accountant=Accountant.RDP)

    def mechanism(self) -> DistributedDp:
        """The ``DistributedDp`` every fill runs (the policy's and the devices')."""
        return DistributedDp.for_fill(
            l2_clip=self.l2_clip,
            noise_multiplier=self.noise_multiplier,
            bits=self.bits,
            threshold=self.threshold,
            max_colluders=self.max_colluders,
            cohort_size=self.cohort_size,
            d=self.model_size,
        )

    def task_step(self) -> SkellamStep:
        """One fill membership: the Skellam release of one device's update."""
        return self.mechanism().release_step(self.model_size)

    def task_dp(self) -> None:
        """Devices run no DP-SGD: each adds its Skellam share before masking."""
        return None


GuardSettings = StudyPrivacy | PatientPrivacy | DistributedPrivacy
SettingsKind = type[StudyPrivacy] | type[PatientPrivacy] | type[DistributedPrivacy]


def settings_of_unit(unit: PrivacyUnit | str, *, distributed: bool = False) -> SettingsKind:
    """The settings model of a guard state's unit (saved states name it; a state of
    distributed DP also says ``distributed``)."""
    if distributed:
        return DistributedPrivacy
    return PatientPrivacy if PrivacyUnit(unit) is PrivacyUnit.PATIENT else StudyPrivacy


class PrivacySettingsRefused(PolicyError):
    """A study's privacy settings cannot keep their promise; ``epsilon`` is the figure."""

    def __init__(self, message: str, *, first_task_epsilon: float | None = None) -> None:
        super().__init__(message)
        self.first_task_epsilon = first_task_epsilon


def check_first_task(privacy: StudyPrivacy, *, seconds: float = FIRST_TASK_SECONDS) -> float:
    """The first task's epsilon, computed once within ``seconds``; refuse what cannot run.

    Call it when a study is created, before taking any lock. Raises
    ``PrivacySettingsRefused`` if one task already costs more than the whole
    budget (the study would dispatch nothing and end with 0 updates) or if the
    computation overruns (every ledger update would then stall the service).
    """
    try:
        first = epsilon_within(
            [privacy.task_step()],
            delta=privacy.delta,
            accountant=privacy.accountant,
            seconds=seconds,
        )
    except EpsilonTooSlow as exc:
        raise PrivacySettingsRefused(
            f"the epsilon of one task ({privacy.accountant.value}, noise_multiplier "
            f"{privacy.noise_multiplier:g}, sample_rate {privacy.sample_rate:g}, "
            f"{privacy.steps_per_task} steps) takes more than {seconds:g} s to compute; "
            "every charge would stall the coordinator: use the RDP accountant or fewer steps"
        ) from exc
    if first > privacy.epsilon:
        raise PrivacySettingsRefused(
            f"one task costs epsilon {first:.4g} at delta {privacy.delta:g}, more than the "
            f"study's whole budget {privacy.epsilon:g}: no device could ever train; raise "
            "noise_multiplier or lower sample_rate or steps_per_task",
            first_task_epsilon=first,
        )
    return first
