"""Study files: one YAML file that says what a simulated (or live) study is.

A study file is the researcher's view of a study (fleet, data, model,
strategy, privacy, target, stopping rule, seed) in nested sections with
documented keys; it compiles into the simulator's flat :class:`Scenario` and
the strategy row, and from there into the coordinator's ``StudySpec``, so
``fedward simulate STUDY.yaml``, ``fedward up --study STUDY.yaml`` and a study
created on a running coordinator (``fedward study spec STUDY.yaml``) run the
same study. Every problem is a :class:`StudyFileError` whose message names
the file, the line, the key and the fix; ``docs/study-file.md`` is generated
from these models (``python -m fedward.simulation.studyfile --reference``), and
a test keeps it current.
"""

from __future__ import annotations

import difflib
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from fedward.coordinator.privacy.settings import MIN_NOISE_MULTIPLIER
from fedward.coordinator.strategies import StrategyName
from fedward.coordinator.strategies.ftte import EnergyNormaliser, ServerOptimizer
from fedward.errors import SimulationError
from fedward.privacy.accounting import Accountant
from fedward.protocol.messages import DeviceClass, UpdateEncoding
from fedward.tinytrain.models import ModelKind

from .datafile import DataFileError, Normalisation, Partition, data_format, inspect_data
from .scenario import DataSettings, ProfileSettings, Scenario, StrategyRun


class StudyFileError(SimulationError, ValueError):
    """A study file that cannot be read or does not describe a valid study."""


def _model(description: str) -> ConfigDict:
    return ConfigDict(extra="forbid", frozen=True, title=description)


class Stragglers(BaseModel):
    model_config = _model("Devices slowed down (throttled CPU, weak signal, power saving)")

    fraction: float = Field(default=0.9, ge=0, le=1, description="share of devices that straggle")
    slowdown: tuple[float, float] = Field(
        default=(4.0, 40.0), description="[low, high] slowdown factor, drawn log-uniformly"
    )


class Fleet(BaseModel):
    model_config = _model("The simulated devices")

    devices: int | None = Field(
        default=None,
        ge=2,
        description="number of devices (synthetic data; a data file has one per patient)",
    )
    mix: dict[DeviceClass, float] = Field(
        default={DeviceClass.WEARABLE: 0.6, DeviceClass.PHONE: 0.3, DeviceClass.GATEWAY: 0.1},
        description="share of each device class (wearable, phone, gateway)",
    )
    stragglers: Stragglers = Stragglers()
    profiles: dict[DeviceClass, ProfileSettings] = Field(
        default={},
        description="per class, overrides of memory_bytes, flops_per_s, uplink_bps, "
        "downlink_bps, rtt_s, availability (chance online) and dropout (chance a task is lost)",
    )


class DataSource(enum.StrEnum):
    SYNTHETIC = "synthetic"  # fedward's offline ECG+PPG+motion rhythm task
    FILE = "file"  # your own .npz or CSV


class Data(BaseModel):
    model_config = _model("Where the recordings come from and how they become devices")

    source: DataSource = Field(
        default=DataSource.SYNTHETIC, description="synthetic (built-in ECG rhythm task) or file"
    )
    path: Path | None = Field(
        default=None, description="file: the .npz or .csv (relative to the study file)"
    )
    partition: Partition = Field(
        default=Partition.BY_PATIENT,
        description="file: by_patient (one device per patient_id) or dirichlet",
    )
    devices: int | None = Field(
        default=None, ge=2, description="file, dirichlet: number of devices"
    )
    alpha: float = Field(
        default=0.5,
        gt=0,
        description="Dirichlet concentration of label mixes (smaller: more non-IID)",
    )
    test_patients: int | None = Field(
        default=None,
        ge=1,
        description="patients held out for evaluation (file without X_test: default 20%; "
        "synthetic: default 100)",
    )
    normalisation: Normalisation = Field(
        default=Normalisation.PER_CHANNEL,
        description="file: per_channel (federation-wide mean and sd) or none",
    )
    features: tuple[str, ...] = Field(default=(), description="CSV: feature columns (default: all)")
    min_windows: int = Field(default=24, ge=1, description="synthetic: fewest windows per patient")
    max_windows: int = Field(default=96, ge=1, description="synthetic: most windows per patient")
    mislabelled_fraction: float = Field(
        default=0.0, ge=0, le=1, description="synthetic: devices with systematically wrong labels"
    )

    @model_validator(mode="after")
    def _check(self) -> Data:
        if self.source is DataSource.FILE and self.path is None:
            raise ValueError("source file needs a path: add data.path: my-data.npz")
        if self.source is DataSource.SYNTHETIC and self.path is not None:
            raise ValueError("a path needs source file: add data.source: file")
        if self.partition is Partition.DIRICHLET and self.devices is None:
            raise ValueError("partition dirichlet needs data.devices: N")
        return self


class ModelChoice(enum.StrEnum):
    AUTO = "auto"  # CNN for windows, MLP for tabular rows (length 1)
    CNN = "cnn"
    MLP = "mlp"


class Model(BaseModel):
    model_config = _model("The network every device trains (built from the data's shape)")

    kind: ModelChoice = Field(
        default=ModelChoice.AUTO, description="auto, cnn (1-D conv blocks) or mlp"
    )
    width: int = Field(default=24, ge=1, le=256, description="base width when hidden is empty")
    hidden: tuple[Annotated[int, Field(ge=1, le=1024)], ...] = Field(
        default=(),
        max_length=8,
        description="layer sizes: CNN channels per block, MLP units per layer "
        "(empty: CNN [w, 2w, 4w, 2w], MLP [8w, 4w])",
    )


class WarmStart(BaseModel):
    model_config = _model("Where training starts")

    patients: int | None = Field(
        default=None,
        ge=0,
        description="train centrally on this many patients first (synthetic: a separate "
        "public cohort, default 40; file: patients held out of the federation, default 0); "
        "0: from scratch",
    )
    epochs: int = Field(default=10, ge=1, description="epochs of that central training")
    file: Path | None = Field(
        default=None, description="start from these parameters (.npz, one array per name) instead"
    )


class Training(BaseModel):
    model_config = _model("Local training on a device (the same for every strategy)")

    epochs: int = Field(default=2, ge=1, description="passes over the device's data per task")
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=0.05, gt=0, description="SGD learning rate")
    momentum: float = Field(default=0.9, ge=0, lt=1)


class Strategy(BaseModel):
    model_config = _model("How the coordinator schedules and merges")

    name: StrategyRun = Field(
        default=StrategyRun.FTTE,
        description="fedavg, fedbuff, fedasync, ftte, ftte_nested, ftte+dp, client_dp, "
        "fedbuff+normbound, fedavg_feasible, fedbuff_feasible; ftte+secagg (every merge a "
        "secure-aggregation fill), ftte+secagg+ddp (plus the devices' Skellam noise)",
    )
    concurrency: int = Field(default=50, ge=1, description="tasks in flight at once")
    buffer_size: int = Field(default=10, ge=1, description="updates merged together (K)")
    server_lr: float = Field(default=1.0, gt=0)
    staleness_exponent: float = Field(default=0.5, ge=0, description="FTTE/FedBuff age term a")
    energy_beta: float = Field(default=1.0, ge=0, description="FTTE energy term beta (0: off)")
    energy_tolerance: float = Field(default=10.0, ge=1, description="FTTE energy tolerance rho")
    energy_window: int = Field(default=200, ge=0, description="FTTE energy look-back (updates)")
    energy_normaliser: EnergyNormaliser = Field(
        default=EnergyNormaliser.CONTRIBUTORS,
        description="what FTTE divides each tensor's weighted sum by: contributors (the "
        "damped weights of the updates that trained it), undamped, or heaviest (at least "
        "its heaviest trainer's undamped weight, so a damped update alone on a tensor "
        "does not move it whole; README, merge weights)",
    )
    server_optimizer: ServerOptimizer = Field(
        default=ServerOptimizer.SGD,
        description="FTTE's server step: sgd (at server_lr), momentum, or adam (at "
        "server_adam_lr; 0.003 was the best measured, README levers)",
    )
    server_adam_lr: float = Field(
        default=0.01, gt=0, le=10, description="Adam's step size (server_optimizer adam only)"
    )
    update_encoding: UpdateEncoding = Field(
        default=UpdateEncoding.FLOAT32,
        description="how devices send deltas: float32, or int8 with a scale per tensor "
        "(stochastic rounding; about a quarter of the bytes; not with secure aggregation)",
    )
    heartbeat_timeout_s: float = Field(
        default=30.0, gt=0, description="a silent device is noticed after this long"
    )

    @model_validator(mode="after")
    def _options_the_strategy_runs(self) -> Strategy:
        # Why: the scenario would silently drop them for these strategies
        if (
            self.server_optimizer is not ServerOptimizer.SGD
            and self.name.strategy is not StrategyName.FTTE
        ):
            raise ValueError(
                f"server_optimizer {self.server_optimizer.value} runs only with the ftte "
                f"strategies, not {self.name.value}: drop it or pick an ftte strategy"
            )
        if self.energy_normaliser is not EnergyNormaliser.CONTRIBUTORS and (
            self.name.strategy is not StrategyName.FTTE or self.name.secagg
        ):
            raise ValueError(
                f"energy_normaliser {self.energy_normaliser.value} applies only to the ftte "
                f"strategies without secure aggregation, not {self.name.value}: drop it"
            )
        # a value other than the default (a dumped file repeats the default: that is fine)
        adam_default = type(self).model_fields["server_adam_lr"].default
        if self.server_adam_lr != adam_default and self.server_optimizer is not (
            ServerOptimizer.ADAM
        ):
            raise ValueError("server_adam_lr is used only with server_optimizer adam: drop it")
        if self.update_encoding is UpdateEncoding.INT8 and self.name.secagg:
            raise ValueError(
                "update_encoding int8 does not apply to secure aggregation (fills send "
                "masked fixed-point words): drop it or pick a strategy without secagg"
            )
        return self


class DpMode(enum.StrEnum):
    NONE = "none"
    DP_SGD = "dp_sgd"  # sample-level DP-SGD on each device, per-device budgets
    PATIENT = "patient"  # patient-level: the coordinator clips and noises the merge


# what each mode reads; the other mode's key set to a value is refused, not ignored
_DP_SGD_ONLY = ("max_grad_norm", "sample_rate", "steps_per_task", "max_physical_batch")


class Privacy(BaseModel):
    model_config = _model("Differential privacy (maps onto the coordinator's StudyPrivacy)")

    mode: DpMode = Field(
        default=DpMode.NONE,
        description="none; dp_sgd (sample-level, on each device; needs strategy ftte+dp); or "
        "patient (patient-level: each update clipped, each merge noised by the coordinator; "
        "needs strategy client_dp)",
    )
    epsilon: float = Field(
        default=8.0,
        gt=0,
        le=100,
        description="each device's (patient: each patient's) budget over the whole study",
    )
    delta: float = Field(default=1e-5, gt=0, lt=1e-2)
    accountant: Accountant = Field(
        default=Accountant.RDP,
        description="rdp or prv (gdp underestimates); patient mode accounts with rdp",
    )
    noise_multiplier: float = Field(
        default=1.5,
        gt=0,
        description="dp_sgd: of each DP-SGD step; patient: of each merge (std / sensitivity)",
    )
    clip_norm: float = Field(
        default=0.5, gt=0, le=1e6, description="patient: L2 bound of each device's update"
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="dp_sgd: per-sample clip norm")
    sample_rate: float = Field(
        default=0.25, gt=0, le=1, description="dp_sgd: Poisson sampling rate per step"
    )
    steps_per_task: int | None = Field(
        default=None,
        ge=1,
        description="dp_sgd: DP-SGD steps per task (default: epochs / sample_rate)",
    )
    max_physical_batch: int = Field(
        default=8, ge=1, description="dp_sgd: memory cap of one DP micro-batch"
    )
    secure_aggregation: Literal[False] = Field(
        default=False,
        description="not available yet: secure aggregation is not wired into the merge",
    )

    @model_validator(mode="after")
    def _check(self) -> Privacy:
        if self.mode is DpMode.PATIENT:
            stray = [k for k in _DP_SGD_ONLY if self._changed(k)]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} belong(s) to mode dp_sgd (DP-SGD on the devices); "
                    "patient mode clips whole updates: remove it, or set privacy.clip_norm"
                )
            if self.accountant is not Accountant.RDP:
                raise ValueError(
                    "patient mode accounts each patient's merges with rdp: remove "
                    "privacy.accountant or set it to rdp"
                )
            if self.noise_multiplier < MIN_NOISE_MULTIPLIER:
                raise ValueError(
                    f"noise_multiplier {self.noise_multiplier:g} is below "
                    f"{MIN_NOISE_MULTIPLIER:g}: a merge that little noised protects no patient; "
                    "raise privacy.noise_multiplier"
                )
        elif self._changed("clip_norm"):
            raise ValueError(
                "clip_norm belongs to mode patient (the coordinator clips each update): "
                "remove it, or set privacy.mode: patient (dp_sgd clips with max_grad_norm)"
            )
        return self

    def _changed(self, key: str) -> bool:
        """Set to a value of its own (a dumped file repeats the defaults: not a mistake)."""
        return getattr(self, key) != type(self).model_fields[key].default


class Evaluation(BaseModel):
    model_config = _model("Held-out evaluation and the target")

    target_accuracy: float = Field(
        default=0.975, gt=0, le=1, description="time to target = first evaluation at or above it"
    )
    every_updates: int = Field(
        default=20, ge=1, description="evaluate after merges this many apart"
    )
    windows: int = Field(default=2000, ge=10, description="held-out samples evaluated")
    final_tail: float = Field(
        default=0.1, gt=0, le=1, description="final accuracy = mean over this last share of updates"
    )


class Stop(BaseModel):
    model_config = _model("When the study ends")

    updates: int = Field(
        default=3000,
        ge=1,
        description="update budget: stop after this many accepted updates (a DP study also "
        "stops when every device's budget is spent)",
    )


class StudyFile(BaseModel):
    """A study file (YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Study file")

    name: str = Field(
        default="study",
        min_length=1,
        max_length=48,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="study name (letters, digits, . _ -)",
    )
    seed: int = Field(default=0, ge=0, description="fleet, data split, model, timing")
    fleet: Fleet = Fleet()
    data: Data = Data()
    model: Model = Model()
    warm_start: WarmStart = WarmStart()
    training: Training = Training()
    strategy: Strategy = Strategy()
    privacy: Privacy = Privacy()
    evaluation: Evaluation = Evaluation()
    stop: Stop = Stop()

    @model_validator(mode="after")
    def _check(self) -> StudyFile:
        dp = self.privacy.mode is DpMode.DP_SGD
        if dp != self.strategy.name.dp:
            raise ValueError(
                "privacy.mode dp_sgd and strategy.name ftte+dp go together: set both or neither"
            )
        patient = self.privacy.mode is DpMode.PATIENT
        if patient != (self.strategy.name is StrategyRun.CLIENT_DP):
            raise ValueError(
                "privacy.mode patient and strategy.name client_dp go together: set both or neither"
            )
        if (
            self.data.source is DataSource.FILE
            and self.data.partition is Partition.DIRICHLET
            and self.warm_start.patients
        ):
            raise ValueError(
                "warm_start.patients needs patient ids (data.partition: by_patient); use "
                "warm_start.file or 0 with partition dirichlet"
            )
        if self.data.source is DataSource.SYNTHETIC and self.fleet.devices is None:
            return self
        if self.data.source is DataSource.FILE and self.fleet.devices is not None:
            raise ValueError(
                "with a data file the fleet has one device per patient: remove fleet.devices "
                "(or use data.partition: dirichlet with data.devices)"
            )
        return self

    # -- compiling ------------------------------------------------------------------

    def warm_start_patients(self) -> int:
        if self.warm_start.patients is not None:
            return self.warm_start.patients
        return 40 if self.data.source is DataSource.SYNTHETIC else 0

    def scenario(self, *, base: Path) -> tuple[Scenario, StrategyRun]:
        """The simulator's scenario and strategy row (paths relative to ``base``)."""
        d, w, t, s, p, e = (
            self.data,
            self.warm_start,
            self.training,
            self.strategy,
            self.privacy,
            self.evaluation,
        )
        fields: dict[str, Any] = {
            "name": self.name,
            "seed": self.seed,
            "straggler_fraction": self.fleet.stragglers.fraction,
            "straggler_slowdown": self.fleet.stragglers.slowdown,
            "mix": self.fleet.mix,
            "profiles": self.fleet.profiles,
            "alpha": d.alpha,
            "pretrain_patients": self.warm_start_patients(),
            "pretrain_epochs": w.epochs,
            "warm_start_file": None if w.file is None else _resolve(base, w.file),
            "epochs": t.epochs,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "momentum": t.momentum,
            "width": self.model.width,
            "hidden": self.model.hidden,
            "concurrency": s.concurrency,
            "buffer_size": s.buffer_size,
            "server_lr": s.server_lr,
            "server_optimizer": s.server_optimizer,
            "server_adam_lr": s.server_adam_lr,
            "update_encoding": s.update_encoding,
            "update_budget": self.stop.updates,
            "heartbeat_timeout_s": s.heartbeat_timeout_s,
            "staleness_exponent": s.staleness_exponent,
            "energy_beta": s.energy_beta,
            "energy_tolerance": s.energy_tolerance,
            "energy_window": s.energy_window,
            "energy_normaliser": s.energy_normaliser,
            "target_accuracy": e.target_accuracy,
            "eval_every_updates": e.every_updates,
            "eval_windows": e.windows,
            "final_tail": e.final_tail,
            "dp_epsilon": p.epsilon,
            "dp_delta": p.delta,
            "dp_accountant": p.accountant,
            "dp_noise_multiplier": p.noise_multiplier,
            "dp_max_grad_norm": p.max_grad_norm,
            "dp_sample_rate": p.sample_rate,
            "dp_steps_per_task": p.steps_per_task,
            "dp_max_physical_batch": p.max_physical_batch,
            "dp_clip_norm": p.clip_norm,
        }
        if d.source is DataSource.SYNTHETIC:
            kind = ModelKind.MLP if self.model.kind is ModelChoice.MLP else ModelKind.CNN
            fields.update(
                devices=self.fleet.devices or 500,
                min_windows=d.min_windows,
                max_windows=d.max_windows,
                test_patients=d.test_patients or 100,
                mislabelled_fraction=d.mislabelled_fraction,
                model_kind=kind,
            )
        else:
            if d.path is None:
                raise StudyFileError("data.path is missing")
            data = DataSettings(
                path=_resolve(base, d.path),
                partition=d.partition,
                devices=d.devices,
                alpha=d.alpha,
                test_patients=d.test_patients,
                normalisation=d.normalisation,
                features=d.features,
            )
            data_format(data.path)  # refuse an unknown suffix before reading
            shape = inspect_data(
                data.config(seed=self.seed, pretrain_patients=self.warm_start_patients())
            )
            if self.model.kind is ModelChoice.AUTO:
                kind = ModelKind.CNN if shape.length > 1 else ModelKind.MLP
            else:
                kind = ModelKind(self.model.kind.value)
            fields.update(
                data=data,
                devices=shape.devices,
                model_kind=kind,
                in_channels=shape.channels,
                window=shape.length,
                num_classes=shape.num_classes,
                eval_windows=max(10, e.windows),
            )
        return Scenario.model_validate(fields), s.name


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


# -- reading, with errors a researcher can act on -------------------------------------


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of ``loc`` in the composed YAML (the deepest key found)."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line if line is not None else node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _model_at(loc: tuple[int | str, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The section model that ``loc`` points into (for 'did you mean')."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        info = model.model_fields.get(str(part))
        if info is None:
            return model
        model = _section_type(info.annotation)
    return model


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _fix(error: Any, schema: type[BaseModel]) -> str:
    kind, loc, ctx = error["type"], tuple(error["loc"]), error.get("ctx") or {}
    if kind == "extra_forbidden":
        section = _model_at(loc[:-1], schema)
        keys = sorted(section.model_fields) if section else []
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        where = ".".join(map(str, loc[:-1])) or "the top level"
        return f"{hint}keys allowed in {where}: {', '.join(keys)}"
    if kind == "enum":
        return f"use one of: {ctx.get('expected', '')}"
    if kind == "missing":
        return "add this key"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "write a whole number, e.g. 100"
    if kind in ("float_parsing", "float_type"):
        return "write a number, e.g. 0.5"
    if kind == "literal_error":
        return f"use {ctx.get('expected', '')}"
    return ""


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "enum":
        return "not a known value"
    return str(error["msg"]).removeprefix("Value error, ")


def explain(
    exc: ValidationError,
    *,
    path: Path,
    root: yaml.Node | None,
    schema: type[BaseModel] | None = None,
) -> str:
    """One line per problem: ``file:line: key: what is wrong; the fix``.

    ``schema``: the model the file is read as (default: a study file), for the
    keys a misspelt one is compared with.
    """
    lines = [f"{path}: {exc.error_count()} problem(s)"]
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
        key = ".".join(map(str, loc)) or "(the file)"
        line = _line_of(root, loc) if loc else None
        where = f"{path}:{line}" if line else str(path)
        fix = _fix(error, schema or StudyFile)
        value = error.get("input")
        shown = "" if kind_hides_input(error) else f" (got {value!r})"
        lines.append(f"  {where}: {key}: {_message(error)}{shown}" + (f"; {fix}" if fix else ""))
    return "\n".join(lines)


def kind_hides_input(error: Any) -> bool:
    return error["type"] in ("missing", "extra_forbidden") or isinstance(
        error.get("input"), dict | list
    )


def parse_study_file(path: Path) -> StudyFile:
    """Read and validate ``path`` (raises ``StudyFileError`` with a readable message)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StudyFileError(f"{path}: no such study file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyFileError(f"{path}: cannot read it ({exc})") from None
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise StudyFileError(f"{where}: not valid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StudyFileError(
            f"{path}: a study file is a mapping of sections (name:, fleet:, data: ...), "
            f"got a {type(raw).__name__}"
        )
    try:
        return StudyFile.model_validate(raw)
    except ValidationError as exc:
        raise StudyFileError(explain(exc, path=path, root=root)) from None


def load_study_file(path: Path) -> tuple[Scenario, StrategyRun]:
    """A study file's scenario and strategy row; every problem a ``StudyFileError``."""
    study = parse_study_file(path)
    try:
        return study.scenario(base=path.parent)
    except DataFileError as exc:
        raise StudyFileError(f"{path}: data: {exc}") from None
    except ValidationError as exc:  # a combination the scenario refuses
        raise StudyFileError(explain(exc, path=path, root=None)) from None


def data_study(path: Path, *, name: str | None = None) -> StudyFile:
    """The study ``fedward simulate --data FILE`` runs: FTTE on the file, small defaults."""
    return StudyFile.model_validate(
        {
            "name": name or _slug(path.stem),
            "data": {"source": "file", "path": str(path.resolve())},
            "warm_start": {"patients": 0},
            "strategy": {"concurrency": 8, "buffer_size": 4},
            "evaluation": {"target_accuracy": 0.9, "every_updates": 8},
            "stop": {"updates": 200},
        }
    )


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip("-")
    return (out or "study")[:48]


# -- the reference page (docs/study-file.md) ----------------------------------------------


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        optional = any(a is type(None) for a in args)
        return " or ".join(names) + (" (optional)" if optional else "")
    if origin is Literal:
        return " or ".join(repr(a).lower() for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict:
        return f"map {_type_name(args[0])} -> {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " / ".join(str(m.value) for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"section [{annotation.__name__}](#{annotation.__name__.lower()})"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    value = info.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, dict):
        shown = {str(getattr(k, "value", k)): v for k, v in value.items()}
        return f"`{shown}`" if shown else "`{}`"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return f"`{list(value)}`"
    return f"`{value}`"


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{sign} {bound}")
    return ", ".join(parts)


def reference_markdown() -> str:
    """The study file reference, generated from the models above."""
    sections: list[type[BaseModel]] = [StudyFile]
    seen: set[type[BaseModel]] = set()
    out = [
        "# Study file reference",
        "",
        "<!-- generated by `python -m fedward.simulation.studyfile --reference`; "
        "tests/simulation/test_studyfile_reference_doc.py checks it is current -->",
        "",
        "A study file is YAML. Every key is optional; a missing key takes the default",
        "shown. Unknown keys are refused (with the closest allowed key). Paths are",
        "relative to the study file. Run it with `fedward simulate STUDY.yaml`, live",
        "with `fedward up --study STUDY.yaml`, or print the coordinator's study spec",
        "with `fedward study spec STUDY.yaml`. Examples: `examples/*/study.yaml`.",
        "",
    ]
    while sections:
        model = sections.pop(0)
        if model in seen:
            continue
        seen.add(model)
        name = model.__name__
        title = model.model_config.get("title") or name
        heading = "## Top level" if model is StudyFile else f"## {name}"
        out += [heading, "", f'<a id="{name.lower()}"></a>{title}.', ""]
        out += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for key, info in model.model_fields.items():
            nested = _section_type(info.annotation)
            if nested is not None:
                sections.append(nested)
            args = typing.get_args(info.annotation)
            for arg in args:
                inner = _section_type(arg)
                if inner is not None:
                    sections.append(inner)
            out.append(
                f"| `{key}` | {_type_name(info.annotation)} | {_default(info)} "
                f"| {_bounds(info)} | {info.description or ''} |"
            )
        out.append("")
    out += [
        "## What the reported figures mean",
        "",
        "- `final_accuracy`: the mean held-out accuracy over the evaluations in the last",
        "  `evaluation.final_tail` share of the updates (a tail mean, not the last value).",
        "- `time_to_target_s`: *virtual* seconds (simulated device time: download, counted",
        "  FLOPs over the class's speed, upload) until the first evaluation at or above",
        "  `evaluation.target_accuracy`; wall-clock time is `wall_s`.",
        "- `updates`: accepted updates; the last merge may take the count a few past",
        "  `stop.updates` (updates already in flight are merged).",
        "- `upload_bytes_per_update`: encoded protocol frames, as sent.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--reference"]:
        sys.stdout.write(reference_markdown())
        return 0
    sys.stderr.write("usage: python -m fedward.simulation.studyfile --reference\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
