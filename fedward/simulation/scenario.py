"""A simulated study: fleet, data, training and strategy settings in one file.

Scenarios are pydantic models (strict, no unknown keys), loadable from JSON or
YAML, with named presets. Every strategy in a benchmark runs the same scenario:
same fleet, data split, model, batch size, optimizer and local work; only what
the strategy itself changes differs (merge rule, and for FTTE the subset).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedward.coordinator.engine.planning import SubsetMode
from fedward.coordinator.privacy.settings import StudyPrivacy
from fedward.coordinator.secagg import CohortBinding, SecAggPolicy
from fedward.coordinator.strategies import StrategyName
from fedward.coordinator.strategies.ftte import EnergyNormaliser, EnergyRule, ServerOptimizer
from fedward.coordinator.study_spec import (
    ClientDPSettings,
    SecAggSettings,
    StudySpec,
    refuse_renamed_keys,
)
from fedward.privacy.accounting import Accountant
from fedward.privacy.secagg.ddp import DistributedDp
from fedward.protocol.messages import DeviceClass, UpdateEncoding
from fedward.tinytrain.models import ModelKind

from .datafile import DataFormat, FileDataConfig, Normalisation, Partition, data_format
from .profiles import DEFAULT_PROFILES, DeviceProfile
from .secagg import PhaseCost, SpeedPrior
from .sensordata import DataConfig, StudyDataConfig


class StrategyRun(enum.StrEnum):
    """A row of a benchmark: a strategy and the subsets it trains."""

    FEDAVG = "fedavg"
    FEDBUFF = "fedbuff"
    FEDASYNC = "fedasync"
    FTTE = "ftte"  # FTTE: one global subset sized to the smallest device
    FTTE_NESTED = "ftte_nested"  # our extension: nested tiers per device
    FTTE_DP = "ftte+dp"  # FTTE's global subset, trained with DP-SGD under per-device budgets
    # patient-level DP: FTTE's global subset, merged by the coordinator's clipped and
    # noised uniform mean (strategies.client_dp), each patient's epsilon bounded
    CLIENT_DP = "client_dp"
    FEDBUFF_NORM_BOUNDED = "fedbuff+normbound"  # FedBuff with adaptive norm clipping
    # memory-feasible baselines: a device trains the full model only if its measured
    # step fits (at the largest micro-batch that does), else it sits out
    FEDAVG_FEASIBLE = "fedavg_feasible"
    FEDBUFF_FEASIBLE = "fedbuff_feasible"
    # FTTE's global subset, every buffer fill one real secure-aggregation instance
    # (fedward.simulation.secagg); +ddp: devices add Skellam noise shares under the masks
    FTTE_SECAGG = "ftte+secagg"
    FTTE_SECAGG_DDP = "ftte+secagg+ddp"

    @property
    def strategy(self) -> StrategyName:
        if self in (
            StrategyRun.FTTE_NESTED,
            StrategyRun.FTTE_DP,
            StrategyRun.FTTE_SECAGG,
            StrategyRun.FTTE_SECAGG_DDP,
        ):
            return StrategyName.FTTE
        if self in (StrategyRun.FEDBUFF_NORM_BOUNDED, StrategyRun.FEDBUFF_FEASIBLE):
            return StrategyName.FEDBUFF
        if self is StrategyRun.FEDAVG_FEASIBLE:
            return StrategyName.FEDAVG
        return StrategyName(self.value)

    @property
    def feasible(self) -> bool:
        """Only devices whose measured full-model step fits their memory take part."""
        return self in (StrategyRun.FEDAVG_FEASIBLE, StrategyRun.FEDBUFF_FEASIBLE)

    @property
    def slug(self) -> str:
        """The value as a study-name-safe id (``ftte+dp`` -> ``ftte-dp``)."""
        return self.value.replace("+", "-")

    @property
    def dp(self) -> bool:
        return self is StrategyRun.FTTE_DP

    @property
    def secagg(self) -> bool:
        """Every buffer fill is one secure-aggregation instance."""
        return self in (StrategyRun.FTTE_SECAGG, StrategyRun.FTTE_SECAGG_DDP)

    @property
    def distributed_dp(self) -> bool:
        """Devices add distributed-DP noise shares under the masks (no DP-SGD)."""
        return self is StrategyRun.FTTE_SECAGG_DDP

    @property
    def norm_bounded(self) -> bool:
        """Wrapped in ``NormBounded`` with FTTE's tolerance and window (a robust baseline)."""
        return self is StrategyRun.FEDBUFF_NORM_BOUNDED

    @property
    def subset_mode(self) -> SubsetMode:
        if self in (
            StrategyRun.FTTE,
            StrategyRun.FTTE_DP,
            StrategyRun.CLIENT_DP,
            StrategyRun.FTTE_SECAGG,
            StrategyRun.FTTE_SECAGG_DDP,
        ):
            return SubsetMode.GLOBAL
        if self is StrategyRun.FTTE_NESTED:
            return SubsetMode.NESTED
        return SubsetMode.FULL


class DataSettings(BaseModel):
    """A study's own recordings (``fedward.simulation.datafile`` documents the formats)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    partition: Partition = Partition.BY_PATIENT
    devices: int | None = Field(default=None, ge=2)
    alpha: float = Field(default=0.5, gt=0)
    test_patients: int | None = Field(default=None, ge=1)
    normalisation: Normalisation = Normalisation.PER_CHANNEL
    features: tuple[str, ...] = ()

    @property
    def format(self) -> DataFormat:
        return data_format(self.path)

    def config(self, *, seed: int, pretrain_patients: int) -> FileDataConfig:
        return FileDataConfig(
            path=self.path,
            format=self.format,
            partition=self.partition,
            devices=self.devices,
            alpha=self.alpha,
            test_patients=self.test_patients,
            pretrain_patients=pretrain_patients,
            normalisation=self.normalisation,
            features=self.features,
            seed=seed,
        )


class ProfileSettings(BaseModel):
    """Overrides of one device class's profile (``fedward.simulation.profiles``)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="Per-class overrides under fleet.profiles.CLASS (none: the class default)",
    )

    memory_bytes: int | None = Field(default=None, ge=1024, description="training memory")
    flops_per_s: float | None = Field(default=None, gt=0, description="sustained compute")
    uplink_bps: float | None = Field(default=None, gt=0, description="bytes/s up")
    downlink_bps: float | None = Field(default=None, gt=0, description="bytes/s down")
    rtt_s: float | None = Field(default=None, ge=0, description="round trip (s)")
    availability: float | None = Field(
        default=None, gt=0, le=1, description="chance online when work is handed out"
    )
    dropout: float | None = Field(
        default=None, ge=0, lt=1, description="chance a task is lost part-way"
    )


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "ecg-rhythm"
    seed: int = 0
    devices: int = Field(default=500, ge=2)
    straggler_fraction: float = Field(default=0.9, ge=0, le=1)
    straggler_slowdown: tuple[float, float] = (4.0, 40.0)
    mix: dict[DeviceClass, float] = {
        DeviceClass.WEARABLE: 0.6,
        DeviceClass.PHONE: 0.3,
        DeviceClass.GATEWAY: 0.1,
    }
    profiles: dict[DeviceClass, ProfileSettings] = {}  # overrides of DEFAULT_PROFILES
    # data: the synthetic ECG rhythm task unless `data` names a file
    data: DataSettings | None = None
    # model (built from the data's shape for a data file)
    model_kind: ModelKind = ModelKind.CNN
    in_channels: int = Field(default=3, ge=1)
    window: int = Field(default=500, ge=1)
    num_classes: int = Field(default=4, ge=2)
    hidden: tuple[int, ...] = ()
    warm_start_file: Path | None = None  # parameters (.npz) to start from instead
    # data
    alpha: float = Field(default=0.5, gt=0)
    min_windows: int = Field(default=24, ge=1)
    max_windows: int = Field(default=96, ge=1)
    test_patients: int = Field(default=100, ge=1)
    # devices whose annotations are systematically wrong (a robustness scenario)
    mislabelled_fraction: float = Field(default=0.0, ge=0, le=1)
    # warm start: every strategy starts from one model pre-trained centrally on a
    # small public cohort (patients disjoint from the federation), as on-device
    # training methods (FTTE, TinyTL, Lin et al.) assume; 0 starts from scratch.
    pretrain_patients: int = Field(default=40, ge=0)
    pretrain_epochs: int = Field(default=10, ge=1)
    # training (identical for every strategy)
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    width: int = Field(default=24, ge=1)
    # federation
    concurrency: int = Field(default=50, ge=1)
    buffer_size: int = Field(default=10, ge=1)
    server_lr: float = Field(default=1.0, gt=0)
    # FTTE's server optimiser (StudySpec.server_optimizer; ftte rows only): sgd at
    # server_lr, momentum, or adam at server_adam_lr (issue 14's lever)
    server_optimizer: ServerOptimizer = ServerOptimizer.SGD
    server_adam_lr: float = Field(default=0.01, gt=0, le=10)
    # how devices send deltas (StudySpec.update_encoding) in every row but the secagg
    # rows (whose fills send masked words): float32, or int8 with per-tensor scales
    update_encoding: UpdateEncoding = UpdateEncoding.FLOAT32
    update_budget: int = Field(default=3000, ge=1)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    # FTTE weighting: age term, then the energy term (beta, tolerance rho, look-back window)
    staleness_exponent: float = Field(default=0.5, ge=0)
    energy_beta: float = Field(default=1.0, ge=0)
    energy_tolerance: float = Field(default=10.0, ge=1)
    energy_window: int = Field(default=200, ge=0)
    energy_rule: EnergyRule = EnergyRule.DAMP  # CLIP: tried in issue 14, not kept
    energy_quantile: float = Field(default=0.8, ge=0.5, lt=1)  # 0.5: the former bound
    # HEAVIEST / UNDAMPED: a damped update alone on a tensor no longer moves it whole
    # (issue 14 item 5; plain FTTE rows only, see study_spec)
    energy_normaliser: EnergyNormaliser = EnergyNormaliser.CONTRIBUTORS
    # synchronous FedAvg as deployed: over-select the cohort by this fraction and close
    # the round on the first `concurrency` reports; a round still open at the deadline
    # (virtual s after it opened) merges what it has and drops the rest (None: no deadline)
    fedavg_over_selection: float = Field(default=0.3, ge=0, le=2)
    fedavg_round_deadline_s: float | None = Field(default=1800.0, gt=0)
    # honest label skew: 0 draws label mixes from Dirichlet(alpha); k >= 2 splits the
    # labels into k disjoint groups and device i holds only group i mod k
    label_groups: int = Field(default=0, ge=0)
    # evaluation
    target_accuracy: float = Field(default=0.975, gt=0, le=1)
    # evaluate after the first merge that completes this many updates since the
    # last evaluation: the same granularity in updates for every strategy
    eval_every_updates: int = Field(default=20, ge=1)
    eval_windows: int = Field(default=2000, ge=10)
    final_tail: float = Field(default=0.1, gt=0, le=1)  # final accuracy = mean over this tail
    # differential privacy (rows with ``StrategyRun.dp``): every device's cumulative
    # epsilon at delta over the study stays within dp_epsilon. Each task runs
    # dp_steps_per_task DP-SGD steps at Poisson rate dp_sample_rate (default
    # steps: round(epochs / rate), i.e. the non-DP rows' passes over the data on
    # average); the noise multiplier decides how many tasks the budget buys.
    dp_epsilon: float = Field(default=8.0, gt=0)
    dp_delta: float = Field(default=1e-5, gt=0, lt=1e-2)
    dp_accountant: Accountant = Accountant.RDP
    dp_noise_multiplier: float = Field(default=1.5, gt=0)
    dp_max_grad_norm: float = Field(default=1.0, gt=0)
    dp_sample_rate: float = Field(default=0.25, gt=0, le=1)
    dp_steps_per_task: int | None = Field(default=None, ge=1)
    dp_max_physical_batch: int = Field(default=8, ge=1)
    # the client_dp row (patient-level DP): each update clipped to dp_clip_norm, each
    # merge noised with dp_noise_multiplier, each patient's epsilon within dp_epsilon
    dp_clip_norm: float = Field(default=0.5, gt=0)
    # secure aggregation (rows ftte+secagg, ftte+secagg+ddp; fedward.simulation.secagg):
    # one instance per buffer fill, a cohort of ceil(buffer_size / (1 - expected dropout))
    # devices fixed at dispatch (1/6: 12 for a buffer of 10), threshold at least the buffer
    # and floor((m + c)/2) + 1 for c = secagg_max_colluders; each phase closes when every
    # member answered or after secagg_phase_timeout_s virtual seconds (the masked-input
    # phase waits for training, so the timeout bounds a fill's slowest member)
    secagg_expected_dropout: float = Field(default=1 / 6, ge=0, lt=1)
    secagg_max_colluders: int = Field(default=1, ge=0)
    secagg_min_cohort: int = Field(default=3, ge=2)
    secagg_phase_timeout_s: float = Field(default=600.0, gt=0)
    # Z_{2^b} of the masked words (b bits each on the wire): None, the least b whose full
    # cohort's sum cannot wrap (ddp_bits under distributed DP); an int in [8, 64] pins it
    secagg_modulus_bits: int | None = Field(default=None, ge=8, le=64)
    secagg_scale: float = Field(default=float(1 << 16), gt=0)  # fixed point per coordinate
    secagg_clip: float = Field(default=4.0, gt=0)  # per-coordinate clip of w_i * Delta_i
    # None: concurrency / cohort (under a training budget: devices / cohort)
    secagg_fills_in_flight: int | None = Field(default=None, ge=1)
    # the most fill members still training at once (SecAggPolicy.training_budget); with it
    # a member that has masked frees its place for the next cohort while it waits for its
    # fill's unmask phase. None: no budget (fills_in_flight alone bounds the fills)
    secagg_training_budget: int | None = Field(default=None, ge=1)
    # a device's masking time: its keystream bytes / (this * its FLOP/s) * its slowdown.
    # Fixed (0.058: this machine's numpy ChaCha20 bytes/s over its FLOP/s, measured
    # 0.049-0.061 under load) so a seed gives the same study on every run and machine;
    # None measures it at the start of each secagg row (runs then differ)
    secagg_prg_bytes_per_flop: float | None = Field(default=0.058, gt=0)
    # once the threshold's masked inputs are in, a fill waits this fraction of the time
    # they took for members still training, then drops them (None: waits for all);
    # cohorts are grouped by each device's measured task time (SecAggSettings)
    secagg_straggler_grace: float | None = Field(default=0.5, ge=0)
    secagg_group_by_speed: bool = True
    # when a fill's cohort is fixed (SecAggPolicy.cohort_binding): at dispatch, or from
    # the first m devices that have trained
    secagg_cohort_binding: CohortBinding = CohortBinding.DISPATCH
    # an ablation, never a deployable setting (PhaseCost): FREE charges no time for the
    # key exchange, masking and unmasking, so a row shows what the cohort rules alone cost
    secagg_phase_cost: PhaseCost = PhaseCost.MODELLED
    # an ablation as well (SpeedPrior): ORACLE gives the cohorts every device's modelled
    # task time before its first task, so a row shows what speed prediction could buy
    secagg_speed_prior: SpeedPrior = SpeedPrior.MEASURED
    # natural-log energy histogram edges (energy: mean squared update value) the devices
    # report as masked one-hot count words, from which the server sets FTTE's energy
    # reference; () sends none (the energy term is then off: every weight 1)
    secagg_energy_bins: tuple[float, ...] = tuple(float(e) for e in range(-20, 1, 2))
    # distributed DP (ftte+secagg+ddp): each device clips its update to ddp_l2_clip and
    # adds its Skellam share so the sum over >= t - c honest survivors carries noise
    # ddp_noise_multiplier * ddp_l2_clip; ddp_bits per summed coordinate. Each device's
    # epsilon (client level: its whole update, per fill it survives) stays within
    # dp_epsilon at dp_delta, the ftte+dp row's budget: a device joins no fill that
    # could take it past the budget.
    ddp_l2_clip: float = Field(default=0.5, gt=0)
    ddp_noise_multiplier: float = Field(default=3.0, gt=0)
    ddp_bits: int = Field(default=20, ge=8, le=32)

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_keys(cls, data: Any) -> Any:
        refuse_renamed_keys(data, what="scenario")
        return data

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.min_windows > self.max_windows:
            raise ValueError("min_windows must be <= max_windows")
        if (
            self.straggler_slowdown[0] < 1
            or self.straggler_slowdown[0] > self.straggler_slowdown[1]
        ):
            raise ValueError("straggler_slowdown must be (low, high) with 1 <= low <= high")
        if not self.mix or min(self.mix.values()) < 0 or sum(self.mix.values()) <= 0:
            raise ValueError("mix needs non-negative weights with a positive sum")
        return self

    def device_profiles(self) -> dict[DeviceClass, DeviceProfile]:
        """The class profiles with this scenario's overrides applied."""
        out = dict(DEFAULT_PROFILES)
        for cls, override in self.profiles.items():
            changes = {k: v for k, v in override.model_dump().items() if v is not None}
            out[cls] = dataclasses.replace(out[cls], **changes)
        return out

    def data_config(self) -> DataConfig:
        if self.data is not None:
            return self.data.config(seed=self.seed, pretrain_patients=self.pretrain_patients)
        return StudyDataConfig(
            devices=self.devices,
            alpha=self.alpha,
            min_windows=self.min_windows,
            max_windows=self.max_windows,
            test_patients=self.test_patients,
            seed=self.seed,
            mislabelled_fraction=self.mislabelled_fraction,
            label_groups=self.label_groups,
        )

    def study_spec(self, run: StrategyRun) -> StudySpec:
        """The coordinator-side study every strategy row runs (same model and local work)."""
        return StudySpec(
            name=f"{self.name}-{run.slug}",
            strategy=run.strategy,
            subset_mode=run.subset_mode,
            model_kind=self.model_kind,
            in_channels=self.in_channels,
            window=self.window,
            num_classes=self.num_classes,
            width=self.width,
            hidden=self.hidden,
            model_seed=self.seed,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            concurrency=self.concurrency,
            buffer_size=self.buffer_size,
            server_lr=self.server_lr,
            server_optimizer=self.server_optimizer
            if run.strategy is StrategyName.FTTE
            else ServerOptimizer.SGD,
            server_adam_lr=self.server_adam_lr,
            staleness_exponent=self.staleness_exponent,
            energy_beta=self.energy_beta,
            energy_tolerance=self.energy_tolerance,
            energy_window=self.energy_window,
            energy_rule=self.energy_rule,
            energy_quantile=self.energy_quantile,
            energy_normaliser=self.energy_normaliser
            if run.strategy is StrategyName.FTTE and not run.secagg
            else EnergyNormaliser.CONTRIBUTORS,
            norm_bound_tolerance=self.energy_tolerance if run.norm_bounded else None,
            norm_bound_window=max(1, self.energy_window),
            fedavg_over_selection=self.fedavg_over_selection,
            privacy=self.study_privacy() if run.dp else None,
            client_dp=self.client_dp() if run is StrategyRun.CLIENT_DP else None,
            secagg=self.secagg_settings(run) if run.secagg else None,
            update_encoding=UpdateEncoding.FLOAT32 if run.secagg else self.update_encoding,
        )

    def secagg_cohort(self) -> int:
        """The cohort of one fill (``SecAggPolicy.cohort_size`` for this scenario)."""
        return (
            self.secagg_settings(StrategyRun.FTTE_SECAGG)
            .policy(buffer_size=self.buffer_size)
            .cohort_size
        )

    def secagg_settings(self, run: StrategyRun) -> SecAggSettings:
        """The secure-aggregation settings of the secagg rows (one fill per merge)."""
        settings = self._secagg_settings(run, fills_in_flight=1)
        if self.secagg_fills_in_flight is not None:
            fills = self.secagg_fills_in_flight
        else:  # the devices a buffered row keeps at work, or, under a budget, every device
            # (at arrival, fills hold only devices that have trained: no training slot)
            m = settings.policy(buffer_size=self.buffer_size).cohort_size
            every = (
                self.secagg_training_budget is not None
                or self.secagg_cohort_binding is CohortBinding.ARRIVAL
            )
            work = self.devices if every else self.concurrency
            fills = max(1, work // m)
        return settings.model_copy(update={"fills_in_flight": fills})

    def _secagg_settings(self, run: StrategyRun, *, fills_in_flight: int) -> SecAggSettings:
        return SecAggSettings(
            expected_dropout=self.secagg_expected_dropout,
            max_colluders=self.secagg_max_colluders,
            min_cohort=self.secagg_min_cohort,
            modulus_bits=self.secagg_modulus_bits,
            scale=self.secagg_scale,
            clip=self.secagg_clip,
            phase_timeout_s=self.secagg_phase_timeout_s,
            energy_bins=() if run.distributed_dp else self.secagg_energy_bins,
            fills_in_flight=fills_in_flight,
            straggler_grace=self.secagg_straggler_grace,
            group_by_speed=self.secagg_group_by_speed,
            training_budget=self.secagg_training_budget,
            cohort_binding=self.secagg_cohort_binding,
            # the DDP mechanism is built by secagg_policy (DistributedDpSettings cannot
            # give DistributedDp its scale and min_survivors yet)
            ddp=None,
        )

    def secagg_policy(self, run: StrategyRun, *, model_size: int) -> SecAggPolicy:
        """The engine's policy of a secagg row; under DDP with the largest power-of-two
        scale whose sum of a full cohort fits ``ddp_bits`` for the whole model."""
        policy = self.secagg_settings(run).policy(buffer_size=self.buffer_size)
        if not run.distributed_dp:
            return policy
        ddp = DistributedDp.largest_scale(
            l2_clip=self.ddp_l2_clip,
            noise_multiplier=self.ddp_noise_multiplier,
            bits=self.ddp_bits,
            min_survivors=policy.threshold - policy.max_colluders,
            cohort_size=policy.cohort_size,
            d=model_size,
        )
        return dataclasses.replace(policy, ddp=ddp, energy_bins=())

    def client_dp(self) -> ClientDPSettings:
        """The client_dp row's patient-level DP (clip, merge noise, per-patient budget)."""
        return ClientDPSettings(
            clip_norm=self.dp_clip_norm,
            noise_multiplier=self.dp_noise_multiplier,
            epsilon=self.dp_epsilon,
            delta=self.dp_delta,
        )

    def study_privacy(self) -> StudyPrivacy:
        """The DP settings of the ``dp`` rows (budget policy + per-task mechanism)."""
        steps = self.dp_steps_per_task or max(1, round(self.epochs / self.dp_sample_rate))
        return StudyPrivacy(
            epsilon=self.dp_epsilon,
            delta=self.dp_delta,
            accountant=self.dp_accountant,
            noise_multiplier=self.dp_noise_multiplier,
            max_grad_norm=self.dp_max_grad_norm,
            sample_rate=self.dp_sample_rate,
            steps_per_task=steps,
            max_physical_batch_size=self.dp_max_physical_batch,
        )

    @classmethod
    def from_file(cls, path: Path) -> Scenario:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return cls.model_validate(yaml.safe_load(text))
        return cls.model_validate(json.loads(text))


# The benchmark presets pre-train on a public cohort of 8 patients (240 windows),
# not 40: the warm start then sits 10-23 points below the target (0.74-0.87 on
# seeds 0-2) instead of within 2 points of it (0.96-0.97, and above it on seed 3),
# so the verdict measures the federation, not the warm start (issue 14).
BENCH_PUBLIC_PATIENTS = 8

PRESETS: dict[str, Scenario] = {
    "full": Scenario(name="ecg-rhythm-500", pretrain_patients=BENCH_PUBLIC_PATIENTS),
    # honest label skew: half the devices hold only NORMAL/BRADY, half only TACHY/AF
    "full-groups": Scenario(
        name="ecg-rhythm-500-groups", label_groups=2, pretrain_patients=BENCH_PUBLIC_PATIENTS
    ),
    # the full fleet with 10% of devices carrying systematically wrong labels
    "full-mislabelled": Scenario(
        name="ecg-rhythm-500-mislabelled",
        mislabelled_fraction=0.1,
        pretrain_patients=BENCH_PUBLIC_PATIENTS,
    ),
    "quick": Scenario(
        name="ecg-rhythm-quick",
        pretrain_patients=BENCH_PUBLIC_PATIENTS,
        devices=100,
        concurrency=20,
        buffer_size=5,
        update_budget=480,
        test_patients=40,
        eval_windows=800,
        eval_every_updates=10,
        target_accuracy=0.97,
    ),
    "tiny": Scenario(
        name="ecg-rhythm-tiny",
        devices=24,
        concurrency=8,
        buffer_size=4,
        update_budget=64,
        min_windows=16,
        max_windows=32,
        test_patients=10,
        eval_windows=200,
        eval_every_updates=4,
        target_accuracy=0.9,
        width=8,
        pretrain_patients=8,
        pretrain_epochs=5,
    ),
}


def load_scenario(name_or_path: str) -> Scenario:
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"no preset or file named {name_or_path!r} (presets: {sorted(PRESETS)})"
        )
    return Scenario.from_file(path)
