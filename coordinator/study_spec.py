"""What a study is: the settings that build its engine, shared by sim and live.

A ``StudySpec`` is validated once (strict pydantic, no unknown keys) and is
immutable afterwards: the live coordinator persists it at creation and refuses
to change it; the simulator builds one from its scenario. ``build_engine``
turns a spec into the engine, so the live service and the simulator run the
very same strategy, planner and scheduling code.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedward.privacy.central import RandomNormal, urandom_normal
from fedward.protocol.messages import UpdateEncoding
from fedward.tinytrain.dp_memory import dp_training_footprint
from fedward.tinytrain.memory import training_footprint
from fedward.tinytrain.models import (
    ModelConfig,
    ModelKind,
    Params,
    build_model,
    get_params,
    param_shapes,
    parameter_groups,
)
from fedward.tinytrain.subsets import SubsetLadder
from fedward.tinytrain.training import LocalTrainConfig

from .engine import Engine, EngineEvent
from .engine.planning import SubsetMode, SubsetPlanner
from .errors import CoordinatorError
from .privacy.guard import PrivacyGuard, PrivacyListener
from .privacy.settings import DistributedPrivacy, PatientPrivacy, StudyPrivacy
from .secagg.policy import CohortBinding
from .strategies import (
    FTTE,
    ClientLevelDP,
    FedAsync,
    FedAvg,
    FedBuff,
    NormBounded,
    Strategy,
    StrategyName,
)
from .strategies.ftte import EnergyNormaliser, EnergyRule, ServerOptimizer

SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Names and ids an operator gives over the API: no leading ``.``, ``-`` or ``_``,
so ``.`` and ``..`` (which URLs and paths resolve away) are never an id."""


class ClientDPSettings(BaseModel):
    """Client-level DP of a ``client_dp`` study: clip bound, noise multiplier, and
    optionally each patient's budget (``epsilon`` at ``delta`` over the whole study,
    enforced by a ``PrivacyGuard`` over ``PatientPrivacy``: patient-level DP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip_norm: float = Field(gt=0, le=1e6, allow_inf_nan=False)
    # > 0: a merge without noise is not DP (z = 0 was accepted before issue 9)
    noise_multiplier: float = Field(gt=0, le=1e3, allow_inf_nan=False)
    epsilon: float | None = Field(default=None, gt=0, le=100.0, allow_inf_nan=False)
    delta: float = Field(default=1e-5, ge=1e-15, lt=1e-2, allow_inf_nan=False)

    def patient_privacy(self) -> PatientPrivacy | None:
        """The per-patient budget, if the study sets one."""
        if self.epsilon is None:
            return None
        return PatientPrivacy(
            epsilon=self.epsilon,
            delta=self.delta,
            noise_multiplier=self.noise_multiplier,
            clip_norm=self.clip_norm,
        )


class StopRule(BaseModel):
    """When a live study ends by itself (``fedward.coordinator.service.studies.stop_reason``).

    ``max_updates``: the update budget; ``target_accuracy``: the accuracy an
    evaluator reported (or the coordinator's own held-out evaluation) reached
    it; ``when_exhausted``: no device can work any more (every one's privacy
    budget spent, or revoked). Without a rule met a study runs until stopped.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_updates: int | None = Field(default=None, ge=1, le=10**9)
    target_accuracy: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    when_exhausted: bool = True


RENAMED_KEYS = {
    "variance_beta": "energy_beta",
    "variance_tolerance": "energy_tolerance",
    "variance_window": "energy_window",
}
"""Keys of FTTE's energy term under their former names (StudySpec and Scenario)."""


def refuse_renamed_keys(data: object, *, what: str) -> None:
    """Raise ``ValueError`` naming the new key when ``data`` uses a former one.

    Why refuse rather than migrate: no deployment holds a spec with the old
    keys. Why not leave it to ``extra="forbid"``: "extra inputs are not
    permitted" would not say what the key is called now.
    """
    if not isinstance(data, Mapping):
        return
    old = sorted(key for key in RENAMED_KEYS if key in data)
    if old:
        renamed = ", ".join(f"{key} is now {RENAMED_KEYS[key]}" for key in old)
        raise ValueError(f"{what} uses keys that were renamed: {renamed}")


BUFFERED_STRATEGIES = frozenset({StrategyName.FEDBUFF, StrategyName.FTTE, StrategyName.FEDASYNC})
BUFFERED_NORM_BOUND_TOLERANCE = 10.0
SECAGG_STRATEGIES = frozenset({StrategyName.FEDBUFF, StrategyName.FTTE})
"""Strategies whose merge is one buffer of updates: one secure-aggregation fill each."""


class DistributedDpSettings(BaseModel):
    """Distributed DP of a secure-aggregation study (``fedward.privacy.secagg.ddp``):
    each device clips its update to ``l2_clip`` and adds its Skellam share, so the
    survivors' sum carries noise ``noise_multiplier * l2_clip``; ``bits`` per coordinate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    l2_clip: float = Field(gt=0, le=1e6, allow_inf_nan=False)
    noise_multiplier: float = Field(gt=0, le=1e3, allow_inf_nan=False)
    bits: int = Field(default=20, ge=8, le=32)
    # Each patient's budget over the study (``DistributedPrivacy``): every fill
    # membership is charged its Skellam release at dispatch and settled by the
    # fill's outcome; a device that cannot afford one more is never dispatched.
    # None: the noise is added but no ledger enforces a budget (reported as such).
    epsilon: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)
    delta: float = Field(default=1e-5, gt=0, lt=1, allow_inf_nan=False)

    def patient_privacy(
        self, *, threshold: int, max_colluders: int, cohort_size: int, model_size: int
    ) -> DistributedPrivacy | None:
        """The guard's settings for this study's fills (None: no budget set)."""
        if self.epsilon is None:
            return None
        return DistributedPrivacy(
            epsilon=self.epsilon,
            delta=self.delta,
            l2_clip=self.l2_clip,
            noise_multiplier=self.noise_multiplier,
            bits=self.bits,
            threshold=threshold,
            max_colluders=max_colluders,
            cohort_size=cohort_size,
            model_size=model_size,
        )

    def mechanism(self, *, threshold: int, max_colluders: int, cohort_size: int, d: int) -> Any:
        """The ``DistributedDp`` every fill runs (the policy's and the devices'): honest
        survivors ``threshold - max_colluders``, the largest power-of-two scale whose sum
        over a full cohort of ``d`` coordinates fits ``bits``."""
        from fedward.privacy.secagg.ddp import DistributedDp  # only a DDP study needs it

        return DistributedDp.for_fill(
            l2_clip=self.l2_clip,
            noise_multiplier=self.noise_multiplier,
            bits=self.bits,
            threshold=threshold,
            max_colluders=max_colluders,
            cohort_size=cohort_size,
            d=d,
        )


class SecAggSettings(BaseModel):
    """Secure aggregation of every merge (``fedward.coordinator.secagg.SecAggPolicy``).

    One fill = one SecAgg instance: a cohort fixed at dispatch, sized from the
    buffer (``buffer_size``, default the study's) plus ``expected_dropout`` (a
    fraction), threshold ``floor((m + max_colluders)/2) + 1`` and at least the
    buffer; the coordinator learns only the survivors' weighted sum.
    ``straggler_grace``: once the threshold's masked inputs are in, a fill waits
    this fraction of the time they took for members still training, then drops
    them (null: it waits for all, up to ``phase_timeout_s``); cohorts are grouped
    by each device's measured task time so most members arrive within it.
    ``enabled: false`` keeps the settings in a study file but runs in the clear.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    buffer_size: int | None = Field(default=None, ge=1, le=10_000)
    expected_dropout: float = Field(default=0.2, ge=0, lt=1, allow_inf_nan=False)
    max_colluders: int = Field(default=1, ge=0, le=1000)
    min_cohort: int = Field(default=3, ge=2, le=10_000)
    # the ring Z_{2^b} of the masked words, b bits each on the wire: None picks the least
    # b whose full cohort's sum cannot wrap (ddp.bits under distributed DP); an int in
    # [8, 64] pins it
    modulus_bits: int | None = Field(default=None, ge=8, le=64)
    scale: float = Field(default=float(1 << 16), gt=0, le=float(1 << 40), allow_inf_nan=False)
    clip: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False)
    phase_timeout_s: float = Field(default=60.0, gt=0, le=86_400, allow_inf_nan=False)
    # natural-log energy edges of the masked histogram (a few dozen at most)
    energy_bins: tuple[Annotated[float, Field(ge=-1e3, le=1e3, allow_inf_nan=False)], ...] = Field(
        default=(), max_length=64
    )
    fills_in_flight: int = Field(default=1, ge=1, le=1000)
    # members still training across open fills (SecAggPolicy.training_budget); None: no cap
    training_budget: int | None = Field(default=None, ge=1, le=1_000_000)
    norm_bound: float | None = Field(default=None, gt=0, le=1e9, allow_inf_nan=False)
    straggler_grace: float | None = Field(default=0.5, ge=0, le=100, allow_inf_nan=False)
    group_by_speed: bool = True  # cohorts by measured task time (False: subset and class only)
    # "dispatch": whole cohorts sent together; "arrival": devices train first and the
    # first m ready form a fill (SecAggPolicy.cohort_binding says what each costs)
    cohort_binding: CohortBinding = CohortBinding.DISPATCH
    ddp: DistributedDpSettings | None = None

    @model_validator(mode="after")
    def _valid_numbers(self) -> SecAggSettings:
        if any(b <= a for a, b in zip(self.energy_bins, self.energy_bins[1:], strict=False)):
            raise ValueError("secagg.energy_bins must be strictly increasing")
        if self.min_cohort < self.max_colluders + 2:
            raise ValueError("secagg.min_cohort must be at least max_colluders + 2")
        return self

    def policy(self, *, buffer_size: int, model_size: int | None = None) -> Any:
        """The engine's ``SecAggPolicy`` (``buffer_size``: the study's, unless set here).

        Under distributed DP the mechanism is sized for the fill (its threshold and
        cohort) and ``model_size`` coordinates, and there is no energy histogram
        (every weight is 1); without ``model_size`` a DDP setting is refused.
        """
        from .secagg import SecAggPolicy  # a study without secure aggregation never loads it

        policy = SecAggPolicy(
            buffer_size=self.buffer_size or buffer_size,
            expected_dropout=self.expected_dropout,
            max_colluders=self.max_colluders,
            min_cohort=self.min_cohort,
            modulus_bits=self.modulus_bits,
            scale=self.scale,
            clip=self.clip,
            phase_timeout_s=self.phase_timeout_s,
            energy_bins=tuple(self.energy_bins),
            ddp=None,
            fills_in_flight=self.fills_in_flight,
            training_budget=self.training_budget,
            norm_bound=self.norm_bound,
            straggler_grace=self.straggler_grace,
            group_by_speed=self.group_by_speed,
            cohort_binding=self.cohort_binding,
        )
        if self.ddp is None:
            return policy
        if model_size is None:
            raise ValueError("a distributed-DP policy needs the model's size")
        ddp = self.ddp.mechanism(
            threshold=policy.threshold,
            max_colluders=policy.max_colluders,
            cohort_size=policy.cohort_size,
            d=model_size,
        )
        return dataclasses.replace(policy, ddp=ddp, energy_bins=())


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # a safe alphabet that starts with a letter or digit: ".." or "-x" never names anything
    name: str = Field(default="study", min_length=1, max_length=64, pattern=SAFE_ID_PATTERN)
    strategy: StrategyName = StrategyName.FTTE
    subset_mode: SubsetMode = SubsetMode.GLOBAL
    # model
    model_kind: ModelKind = ModelKind.CNN
    in_channels: int = Field(default=3, ge=1)
    window: int = Field(default=500, ge=1)
    num_classes: int = Field(default=4, ge=2)
    width: int = Field(default=24, ge=1)
    # layer sizes set by the study (CNN channels per block, MLP hidden units);
    # empty: derived from width. Bounded so a spec cannot ask for a huge model.
    hidden: tuple[Annotated[int, Field(ge=1, le=1024)], ...] = Field(default=(), max_length=8)
    model_seed: int = 0
    # local training (identical for every device of the study)
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    # federation
    concurrency: int = Field(default=50, ge=1)
    buffer_size: int = Field(default=10, ge=1)
    server_lr: float = Field(default=1.0, gt=0)
    client_dp: ClientDPSettings | None = None  # required by, and only for, strategy client_dp
    max_staleness: int | None = Field(default=None, ge=0)
    staleness_exponent: float = Field(default=0.5, ge=0)
    # FTTE's energy term (strategies.ftte): beta, tolerance rho, look-back window
    energy_beta: float = Field(default=1.0, ge=0)
    energy_tolerance: float = Field(default=10.0, ge=1)
    energy_window: int = Field(default=200, ge=0)
    # robustness wrapper around any strategy (strategies.NormBounded): None = off;
    # default 10 for buffered strategies (see _buffered_studies_are_norm_bounded)
    norm_bound_tolerance: float | None = Field(default=None, ge=1)
    norm_bound_window: int = Field(default=200, ge=1)
    # FTTE's energy term: damp an update's weight beyond the bound (default) or clip it
    energy_rule: EnergyRule = EnergyRule.DAMP
    energy_quantile: float = Field(default=0.8, ge=0.5, lt=1)
    # what each tensor's weighted sum is divided by: the damped weights of the updates
    # that trained it (default); their undamped weights; or (heaviest) that sum, at least
    # the heaviest trainer's undamped weight, so a damped update alone on a tensor does
    # not move it whole (strategies.ftte.EnergyNormaliser)
    energy_normaliser: EnergyNormaliser = EnergyNormaliser.CONTRIBUTORS
    # FTTE's server step on the merged update (strategies.ftte.ServerOptimizer): plain SGD
    # at server_lr (default), heavy-ball momentum, or Adam at server_adam_lr (issue 14's
    # lever; only the FTTE strategies take it)
    server_optimizer: ServerOptimizer = ServerOptimizer.SGD
    server_momentum: float = Field(default=0.9, ge=0, lt=1)
    server_adam_lr: float = Field(default=0.01, gt=0, le=10)
    server_adam_beta2: float = Field(default=0.99, gt=0, lt=1)
    server_adam_eps: float = Field(default=1e-3, gt=0, le=1)
    # FedAvg: over-select each cohort by this fraction, close on the first `concurrency`
    fedavg_over_selection: float = Field(default=0.0, ge=0, le=2)
    task_deadline_s: float = Field(default=3600.0, gt=0)
    # the largest sample count one update may claim (public: devices and auditors see it);
    # an update claiming more is refused, so no device can buy merge weight with a number
    max_samples_per_update: int = Field(default=10_000, ge=1)
    # the largest |coordinate| a delta may carry (public); beyond it the update is refused
    # (OUT_OF_RANGE): float32 sums of a few such updates overflowed the merged model to inf.
    # A delta of lr x gradients is orders of magnitude below the default.
    max_delta_abs: float = Field(default=1e3, gt=0, le=1e30, allow_inf_nan=False)
    # how devices send their deltas (Task.update_encoding): float32, or int8 words with a
    # float32 scale per tensor, stochastically rounded (about a quarter of the bytes)
    update_encoding: UpdateEncoding = UpdateEncoding.FLOAT32
    # differential privacy (issue 4): None = no DP; set at creation, immutable
    privacy: StudyPrivacy | None = None
    # when the study ends by itself (update budget, target, every device exhausted)
    stop: StopRule = StopRule()
    # secure aggregation of every merge (issue 11): None = merges see each update
    secagg: SecAggSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_keys(cls, data: Any) -> Any:
        refuse_renamed_keys(data, what="study spec")
        return data

    @model_validator(mode="before")
    @classmethod
    def _buffered_studies_are_norm_bounded(cls, data: Any) -> Any:
        """A buffered strategy is norm-bounded unless the spec says otherwise.

        Why: a buffered merge takes a few updates at a time, so one divergent or
        poisoned update moves the model; ``NormBounded`` caps its energy at
        ``BUFFERED_NORM_BOUND_TOLERANCE`` x the recent median. An explicit
        ``norm_bound_tolerance`` (``null``: off) wins; a stored spec always carries
        the key (dumps include defaults), so a study restores as it was created.
        """
        if not isinstance(data, dict) or "norm_bound_tolerance" in data:
            return data
        try:
            strategy = StrategyName(data.get("strategy", StrategyName.FTTE))
        except ValueError:
            return data  # the field's own validation says what is wrong
        if strategy in BUFFERED_STRATEGIES:
            return {**data, "norm_bound_tolerance": BUFFERED_NORM_BOUND_TOLERANCE}
        return data

    @model_validator(mode="after")
    def _client_dp_matches_strategy(self) -> StudySpec:
        if (self.strategy is StrategyName.CLIENT_DP) != (self.client_dp is not None):
            raise ValueError(
                "client_dp settings are required by, and only allowed with, strategy client_dp"
            )
        return self

    @model_validator(mode="after")
    def _server_optimizer_is_ftte_s(self) -> StudySpec:
        # Why: only FTTE's own merge runs a server optimiser (a secure-aggregation fill of
        # an FTTE study steps with it too); another strategy would silently ignore it.
        if self.server_optimizer is ServerOptimizer.SGD:
            return self
        if self.strategy is not StrategyName.FTTE:
            raise ValueError(
                f"server_optimizer {self.server_optimizer.value} runs only with strategy ftte, "
                f"not {self.strategy.value}: drop it or use strategy ftte"
            )
        return self

    @model_validator(mode="after")
    def _energy_normaliser_is_ftte_s(self) -> StudySpec:
        # Why: only FTTE's own buffered merge divides by per-update weights; another
        # strategy, or a secure-aggregation fill (one masked sum), would silently ignore it.
        if self.energy_normaliser is EnergyNormaliser.CONTRIBUTORS:
            return self
        if self.strategy is not StrategyName.FTTE or self.secagg_on:
            raise ValueError(
                f"energy_normaliser {self.energy_normaliser.value} applies only to strategy "
                "ftte without secure aggregation: drop it, or use strategy ftte with "
                "secagg.enabled false"
            )
        return self

    @model_validator(mode="after")
    def _int8_is_not_for_fills(self) -> StudySpec:
        # Why: a fill's members send masked fixed-point words (secagg.modulus_bits), never
        # an Update frame, so an int8 setting would be silently ignored there.
        if self.update_encoding is UpdateEncoding.INT8 and self.secagg_on:
            raise ValueError(
                "update_encoding int8 does not apply to secure-aggregation fills (their "
                "members send masked fixed-point words): drop it or set secagg.enabled false"
            )
        return self

    @model_validator(mode="after")
    def _secagg_needs_a_buffer(self) -> StudySpec:
        # Why: a fill is one buffer's worth of updates merged as one sum; FedAvg's rounds,
        # FedAsync's one-at-a-time merges and client-level DP (the server clips and noises
        # each update) all need to see single updates.
        if self.secagg_on and self.strategy not in SECAGG_STRATEGIES:
            raise ValueError(
                "secure aggregation needs a buffered strategy (ftte or fedbuff), "
                f"not {self.strategy.value}"
            )
        return self

    @model_validator(mode="after")
    def _one_privacy_ledger(self) -> StudySpec:
        # Why: one study, one ledger and one unit per epsilon; distributed DP's patient
        # budget beside DP-SGD's window budget would report two epsilons for one device.
        ddp = self.secagg.ddp if self.secagg is not None and self.secagg.enabled else None
        if ddp is not None and ddp.epsilon is not None and self.privacy is not None:
            raise ValueError(
                "secagg.ddp.epsilon and privacy are two budgets for one device: choose "
                "distributed DP (a patient's epsilon) or DP-SGD on the device (a window's)"
            )
        return self

    @property
    def secagg_on(self) -> bool:
        """Whether every merge of the study is securely aggregated."""
        return self.secagg is not None and self.secagg.enabled

    def secagg_policy(self) -> Any:
        """The engine's ``SecAggPolicy``, or None for a study in the clear."""
        if self.secagg is None or not self.secagg.enabled:
            return None
        return self.secagg.policy(
            buffer_size=self.buffer_size, model_size=model_bytes(self) // BYTES_PER_PARAMETER
        )

    def model_settings(self) -> ModelConfig:
        return ModelConfig(
            kind=self.model_kind,
            in_channels=self.in_channels,
            window=self.window,
            num_classes=self.num_classes,
            width=self.width,
            hidden=self.hidden,
        )

    def train_settings(self) -> LocalTrainConfig:
        return LocalTrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum
        )


def footprint_bytes(config: ModelConfig, names: tuple[str, ...], batch_size: int) -> int:
    """Measured training footprint of a subset (memoised in the process and on disk by
    ``fedward.tinytrain.memory.training_footprint``, so no cache of its own: it runs a
    real step)."""
    return training_footprint(config, names, batch_size=batch_size).total


def build_strategy(
    spec: StudySpec,
    shapes: dict[str, tuple[int, ...]],
    *,
    random_normal: RandomNormal | None = None,
) -> Strategy:
    """The spec's strategy, norm-bounded when the spec asks for it (any strategy can be).

    ``random_normal`` feeds client-level DP noise (default: OS entropy).
    """
    strategy = _strategy(spec, shapes, random_normal=random_normal)
    if spec.norm_bound_tolerance is None:
        return strategy
    return NormBounded(strategy, tolerance=spec.norm_bound_tolerance, window=spec.norm_bound_window)


def _strategy(
    spec: StudySpec,
    shapes: dict[str, tuple[int, ...]],
    *,
    random_normal: RandomNormal | None,
) -> Strategy:
    if spec.strategy is StrategyName.CLIENT_DP:
        if spec.client_dp is None:
            raise ValueError(
                "strategy client_dp needs client_dp settings (clip_norm, noise_multiplier)"
            )
        return ClientLevelDP(
            shapes=shapes,
            buffer_size=spec.buffer_size,
            clip_norm=spec.client_dp.clip_norm,
            noise_multiplier=spec.client_dp.noise_multiplier,
            random_normal=random_normal or urandom_normal(),
            server_lr=spec.server_lr,
            max_staleness=spec.max_staleness,
        )
    if spec.strategy is StrategyName.FEDAVG:
        return FedAvg(
            shapes=shapes, server_lr=spec.server_lr, over_selection=spec.fedavg_over_selection
        )
    if spec.strategy is StrategyName.FEDBUFF:
        return FedBuff(
            shapes=shapes,
            buffer_size=spec.buffer_size,
            server_lr=spec.server_lr,
            max_staleness=spec.max_staleness,
        )
    if spec.strategy is StrategyName.FEDASYNC:
        return FedAsync(shapes=shapes, max_staleness=spec.max_staleness)
    return FTTE(
        shapes=shapes,
        buffer_size=spec.buffer_size,
        server_lr=spec.server_lr,
        staleness_exponent=spec.staleness_exponent,
        energy_beta=spec.energy_beta,
        energy_tolerance=spec.energy_tolerance,
        energy_window=spec.energy_window,
        max_staleness=spec.max_staleness,
        energy_rule=spec.energy_rule,
        energy_quantile=spec.energy_quantile,
        energy_normaliser=spec.energy_normaliser,
        server_optimizer=spec.server_optimizer,
        server_momentum=spec.server_momentum,
        server_adam_lr=spec.server_adam_lr,
        server_adam_beta2=spec.server_adam_beta2,
        server_adam_eps=spec.server_adam_eps,
    )


@lru_cache(maxsize=128)
def dp_footprint_bytes(config: ModelConfig, names: tuple[str, ...], batch_size: int) -> int:
    """Measured DP-SGD footprint of a subset at a physical batch of one sample.

    That is the least memory any device can train the subset with under DP:
    per-sample gradients and saved activations scale with the physical batch,
    which ``BatchMemoryManager`` lets a device shrink without changing the
    mechanism. A device that fits more runs larger physical batches.
    """
    return dp_training_footprint(
        config, names, batch_size=batch_size, max_physical_batch_size=1
    ).total


def build_planner(spec: StudySpec) -> SubsetPlanner:
    """Tiers sized by measured memory: plain SGD, or DP-SGD when the study has a privacy policy.

    Both figures are memoised in this process and on disk
    (``fedward.tinytrain.memory.training_footprint``,
    ``fedward.tinytrain.dp_memory.dp_training_footprint``); the planner measures only
    the tiers its mode can choose (``SubsetPlanner.choosable_tiers``).
    """
    config = spec.model_settings()
    ladder = SubsetLadder(parameter_groups(build_model(config, seed=spec.model_seed)))
    if spec.privacy is None:
        measure = lambda s: footprint_bytes(config, s.names, spec.batch_size)  # noqa: E731
    else:
        measure = lambda s: dp_footprint_bytes(config, s.names, spec.batch_size)  # noqa: E731
    return SubsetPlanner(ladder, footprint_bytes=measure, mode=spec.subset_mode)


def initial_params(spec: StudySpec) -> Params:
    return get_params(build_model(spec.model_settings(), seed=spec.model_seed))


def build_engine(
    spec: StudySpec,
    *,
    rng: random.Random,
    params: Params | None = None,
    listeners: tuple[Callable[[EngineEvent], None], ...] = (),
    privacy_listeners: tuple[PrivacyListener, ...] = (),
) -> Engine:
    """The engine of a study, starting from ``params`` (default: the spec's initial model).

    A study with ``privacy`` gets a ``PrivacyGuard`` (find it again with
    ``fedward.coordinator.privacy.guard.privacy_guard_of``); ``privacy_listeners``
    receive its spend / exhaustion / rejection events (for the audit log).
    """
    params = params if params is not None else initial_params(spec)
    shapes = param_shapes(build_model(spec.model_settings(), seed=spec.model_seed))
    if {n: tuple(v.shape) for n, v in params.items()} != shapes:
        raise ValueError("initial parameters do not match the study's model")
    secagg = spec.secagg_policy()
    guards = _privacy_guards(spec, privacy_listeners)
    if secagg is not None and secagg.ddp is not None and spec.secagg is not None:
        ddp = spec.secagg.ddp
        if ddp is not None and ddp.epsilon is not None:
            settings = ddp.patient_privacy(
                threshold=secagg.threshold,
                max_colluders=secagg.max_colluders,
                cohort_size=secagg.cohort_size,
                model_size=model_bytes(spec) // BYTES_PER_PARAMETER,  # as the policy sizes it
            )
            if settings is None or settings.mechanism() != secagg.ddp:
                raise ValueError("the ledger's Skellam mechanism is not the one the fills run")
            guards = (*guards, PrivacyGuard(settings, listeners=privacy_listeners))
    return Engine(
        params=params,
        strategy=build_strategy(spec, shapes),
        planner=build_planner(spec),
        concurrency=spec.concurrency,
        rng=rng,
        listeners=listeners,
        guards=guards,
        max_delta_abs=spec.max_delta_abs,
        **({"secagg": secagg} if secagg is not None else {}),
    )


def _privacy_guards(
    spec: StudySpec, listeners: tuple[PrivacyListener, ...]
) -> tuple[PrivacyGuard, ...]:
    """Sample-level budgets (``privacy``) or patient-level ones (``client_dp.epsilon``)."""
    if spec.privacy is not None:
        return (PrivacyGuard(spec.privacy, listeners=listeners),)
    patient = spec.client_dp.patient_privacy() if spec.client_dp is not None else None
    if patient is not None:
        return (PrivacyGuard(patient, listeners=listeners),)
    return ()


# -- the model's size, refused above a limit before anything is built ----------------


class ModelTooLarge(CoordinatorError, ValueError):
    """A study's model would exceed the configured size (``max_model_bytes``)."""


BYTES_PER_PARAMETER = 4  # float32, as stored, sent and trained


def largest_layer_parameters(spec: StudySpec) -> int:
    """A lower bound on the parameter count, from arithmetic only (no model is built).

    The MLP's first layer is ``in_channels * window/4 * hidden_0`` weights, the
    CNN's widest pair of blocks ``c_i * c_(i+1) * 7``: a spec asking for a
    gigabyte model is refused in microseconds, before torch allocates anything.
    """
    sizes = tuple(getattr(spec, "hidden", ()) or ())
    if spec.model_kind is ModelKind.MLP:
        first = sizes[0] if sizes else 8 * spec.width
        down = 4 if spec.window >= 64 else 1
        return spec.in_channels * (spec.window // down) * first
    sizes = sizes or (spec.width, 2 * spec.width, 4 * spec.width, 2 * spec.width)
    pairs = zip((spec.in_channels, *sizes[:-1]), sizes, strict=True)
    return max(cin * cout * 7 for cin, cout in pairs)


def training_step_macs(spec: StudySpec) -> int:
    """Multiply-accumulates of one forward pass over a batch (backward costs about twice).

    Arithmetic from the spec, mirroring ``fedward.tinytrain.models`` (CNN: pools
    4, 4, 2 on the first blocks, kernel 7 but 3 on the last; MLP: a 4x average
    pool on windows of 64 and more). Why bound it: creating a study measures a
    real training step per subset tier, and the devices run the same step, so
    the step's cost is what a spec makes the coordinator spend at creation.
    """
    sizes = tuple(getattr(spec, "hidden", ()) or ())
    if spec.model_kind is ModelKind.MLP:
        sizes = sizes or (8 * spec.width, 4 * spec.width)
        down = 4 if spec.window >= 64 else 1
        dims = (spec.in_channels * (spec.window // down), *sizes, spec.num_classes)
        per_sample = sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
        return spec.batch_size * per_sample
    sizes = sizes or (spec.width, 2 * spec.width, 4 * spec.width, 2 * spec.width)
    pools = (4, 4, 2)
    length, cin, per_sample = spec.window, spec.in_channels, 0
    for i, cout in enumerate(sizes):
        kernel = 3 if i == len(sizes) - 1 else 7
        per_sample += length * cin * cout * kernel
        pool = pools[i] if i < len(pools) else 1
        length, cin = (length // pool if length // pool >= 1 else length), cout
    per_sample += cin * spec.num_classes
    return spec.batch_size * per_sample


def model_bytes(spec: StudySpec) -> int:
    """The model's exact size in bytes (float32 parameters of the built model)."""
    shapes = param_shapes(build_model(spec.model_settings(), seed=0))
    total = 0
    for shape in shapes.values():
        count = 1
        for dim in shape:
            count *= dim
        total += count
    return total * BYTES_PER_PARAMETER


def check_model_size(spec: StudySpec, *, max_bytes: int) -> int:
    """The model's size in bytes; raise :class:`ModelTooLarge` above ``max_bytes``.

    The arithmetic bound runs first, so only a spec that could fit builds a
    model to be counted exactly.
    """
    bound = largest_layer_parameters(spec) * BYTES_PER_PARAMETER
    if bound > max_bytes:
        raise ModelTooLarge(
            f"the model would hold at least {bound} bytes of parameters; "
            f"the limit is {max_bytes} (max_model_bytes)"
        )
    size = model_bytes(spec)
    if size > max_bytes:
        raise ModelTooLarge(
            f"the model holds {size} bytes of parameters; the limit is {max_bytes} "
            "(max_model_bytes)"
        )
    return size
