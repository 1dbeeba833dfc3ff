"""Run one strategy on one scenario in virtual time.

The study wires the real parts: edge code trains (in an executor), updates are
encoded as real protocol frames and decoded by the coordinator's ingest, and
the coordinator's ``Engine`` with a pure strategy decides what to merge. Only
time is simulated: a device's task takes

    rtt + download_bytes / downlink          (tensors it lacks, encoded frame size)
    + counted FLOPs of its step / compute    (``fedward.tinytrain.costs``)
    + rtt + update_bytes / uplink            (the encoded update frame)

scaled by its straggler slowdown. A device that drops out is noticed by the
coordinator a heartbeat timeout after it went silent.

Differential privacy (rows with ``StrategyRun.dp``): the engine carries a
``PrivacyGuard``; each simulated device keeps its own ``fedward.edge.budget.DeviceBudget``
here in the main process (its Opacus accountant state travels to the worker
in ``TrainJob.accountant_state`` and back in the outcome), refuses a task it
cannot afford, and reports its mechanism and its own epsilon claim with every
update, which the guard recomputes. Devices at their budget become
``EXHAUSTED``; the study then ends when no device can work and nothing is in
flight, even if the update budget was not reached. DP-SGD's per-sample
gradients cost about the FLOPs of the ordinary weight gradient they replace,
so virtual compute time uses the same counted FLOPs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedward.coordinator.engine import (
    Device,
    DeviceState,
    Engine,
    EngineEvent,
    EventKind,
    TaskOrder,
)
from fedward.coordinator.engine.ingest import decode_update
from fedward.coordinator.engine.planning import DoesNotFit
from fedward.coordinator.privacy.events import PrivacyEvent, PrivacyEventKind
from fedward.coordinator.privacy.guard import PrivacyListener, privacy_guard_of
from fedward.coordinator.privacy.ledger_store import ledger_file, save_guard_state
from fedward.coordinator.privacy.settings import StudyPrivacy
from fedward.coordinator.study_spec import (
    build_engine,
    build_planner,
    build_strategy,
    footprint_bytes,
)
from fedward.edge.budget import DeviceBudget, TaskRefused
from fedward.edge.dp_config import DPTrainConfig
from fedward.edge.local import LocalOutcome, LocalTask
from fedward.edge.updates import encode_update, update_header
from fedward.errors import SimulationError
from fedward.protocol.errors import EncodeError
from fedward.protocol.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DeviceStatus,
    Heartbeat,
    ModelDownload,
    PrivacyReport,
    SecAggParams,
    Task,
    Update,
    UpdateEncoding,
    frame_size,
)
from fedward.protocol.quantised import ROUNDING_KEY_BYTES
from fedward.tinytrain.costs import task_flops
from fedward.tinytrain.models import build_model, param_shapes
from fedward.tinytrain.runtime import fixed_threads
from fedward.tinytrain.subsets import SubsetSpec
from fedward.tinytrain.training import LocalTrainConfig, evaluate

from .executor import Executor, TrainJob
from .feasibility import fitting_micro_batch
from .profiles import SimDevice, draw_fleet
from .scenario import Scenario, StrategyRun
from .secagg import FillSimulator, PrgCalibration, SpeedPrior, one_way_up_s
from .sensordata import load_study_data
from .warmstart import scenario_start

Progress = Callable[[int, int, float | None], None]  # (accepted, budget, accuracy)
# a scale as long in JSON as most (float32 of 1e-4 / 127), for the int8 upload-time estimate
_TYPICAL_SCALE = 7.874015750530816e-07


@dataclass
class StudyResult:
    run: str
    scenario: str
    series: list[dict[str, float]] = field(default_factory=list)
    time_to_target_s: float | None = None
    final_accuracy: float = 0.0
    final_loss: float = 0.0
    updates: int = 0
    merges: int = 0
    failed_tasks: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    upload_bytes: int = 0
    download_bytes: int = 0
    virtual_time_s: float = 0.0
    wall_s: float = 0.0
    subset_by_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    updates_by_class: dict[str, int] = field(default_factory=dict)
    exhausted_devices: int = 0  # DP rows: devices whose budget cannot afford another task
    privacy: dict[str, Any] = field(default_factory=dict)  # DP rows: epsilon figures
    # per device class: devices, tasks dispatched / failed, updates accepted, their
    # staleness (server versions behind), memory budget and measured training memory
    by_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    # DP rows: every charge, (virtual time, device class, device's cumulative epsilon)
    epsilon_series: list[dict[str, Any]] = field(default_factory=list)
    setup_s: float = 0.0  # wall seconds building the study (data, warm start, engine)
    # secagg rows: bytes and messages per phase, dropouts per phase, PRG time, fills
    secagg: dict[str, Any] = field(default_factory=dict)

    @property
    def upload_bytes_per_update(self) -> float:
        return self.upload_bytes / max(self.updates, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "scenario": self.scenario,
            "time_to_target_s": self.time_to_target_s,
            "final_accuracy": self.final_accuracy,
            "final_loss": self.final_loss,
            "updates": self.updates,
            "merges": self.merges,
            "failed_tasks": self.failed_tasks,
            "rejected": self.rejected,
            "upload_bytes_per_update": self.upload_bytes_per_update,
            "download_bytes_total": self.download_bytes,
            "virtual_time_s": self.virtual_time_s,
            "wall_s": self.wall_s,
            "subset_by_class": self.subset_by_class,
            "updates_by_class": self.updates_by_class,
            "exhausted_devices": self.exhausted_devices,
            "privacy": self.privacy,
            "by_class": self.by_class,
            "epsilon_series": self.epsilon_series,
            "setup_s": self.setup_s,
            "secagg": self.secagg,
            "series": self.series,
        }


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    kind: str = field(compare=False)
    task_id: str = field(compare=False, default="")
    payload: Any = field(compare=False, default=None)  # secagg events' content


class Study:
    """One strategy run: call ``run()`` once."""

    def __init__(
        self,
        scenario: Scenario,
        run: StrategyRun,
        *,
        executor: Executor,
        listeners: tuple[Callable[[EngineEvent], None], ...] = (),
        progress: Progress | None = None,
        privacy_listeners: tuple[PrivacyListener, ...] = (),
        calibration: PrgCalibration | None = None,
    ) -> None:
        self._built = time.perf_counter()
        self.scenario, self.run_kind, self.executor, self.progress = (
            scenario,
            run,
            executor,
            progress,
        )
        self._tally: dict[str, Counter[str]] = defaultdict(Counter)  # class -> counts
        self._staleness: dict[str, list[int]] = defaultdict(list)
        self._epsilons: list[dict[str, Any]] = []
        self.spec = scenario.study_spec(run)
        self.model_config = self.spec.model_settings()
        self.model = build_model(self.model_config, seed=scenario.seed)
        self.shapes = param_shapes(self.model)
        data = load_study_data(scenario.data_config())
        if len(data.device_y) != scenario.devices:
            raise SimulationError(
                f"the scenario has {scenario.devices} devices but its data {len(data.device_y)}; "
                "load a study file (fedward.simulation.studyfile) to size the fleet from the data"
            )
        pick = np.random.default_rng(scenario.seed + 7).permutation(len(data.test_y))[
            : scenario.eval_windows
        ]
        self.test_x, self.test_y = data.test_x[pick], data.test_y[pick]
        self.num_samples = [len(y) for y in data.device_y]
        self.fleet: list[SimDevice] = draw_fleet(
            devices=scenario.devices,
            mix=dict(scenario.mix),
            straggler_fraction=scenario.straggler_fraction,
            straggler_slowdown=scenario.straggler_slowdown,
            rng=np.random.default_rng(scenario.seed + 1),
            profiles=scenario.device_profiles(),
        )
        self.by_id = {d.device_id: d for d in self.fleet}
        start = scenario_start(scenario, self.model_config)
        if run.secagg:  # the scenario's policy (under DDP with its mechanism's scale)
            self.engine = Engine(
                params=start,
                strategy=build_strategy(self.spec, self.shapes),
                planner=build_planner(self.spec),
                concurrency=self.spec.concurrency,
                rng=random.Random(scenario.seed + 2),
                listeners=(*listeners, self._count),
                secagg=scenario.secagg_policy(
                    run, model_size=sum(int(np.prod(s)) for s in self.shapes.values())
                ),
            )
        else:
            self.engine = build_engine(
                self.spec,
                rng=random.Random(scenario.seed + 2),
                params=start,
                listeners=(*listeners, self._count),
                privacy_listeners=(*privacy_listeners, self._charged),
            )
        self.guard = privacy_guard_of(self.engine)  # None unless a DP row
        self.budgets: dict[str, DeviceBudget] = {}  # each device's own accountant
        self.refused_tasks = 0
        for d in self.fleet:
            self.engine.enrol(
                d.device_id,
                device_class=d.profile.device_class.value,
                memory_bytes=d.profile.memory_bytes,
                now=0.0,
            )
        self.train = self.spec.train_settings()
        # memory-feasible rows: each class's micro-batch for the full model, None = sits out
        self.micro_batch_by_class: dict[str, int | None] = {}
        if run.feasible:
            full = self.engine.subset_for(self.engine.devices[self.fleet[0].device_id]).names
            for d in self.fleet:
                self.micro_batch_by_class.setdefault(
                    d.profile.device_class.value,
                    fitting_micro_batch(
                        self.model_config,
                        full,
                        batch_size=scenario.batch_size,
                        memory_bytes=d.profile.memory_bytes,
                    ),
                )
        self.chance = random.Random(scenario.seed + 3)  # availability and dropouts
        self._events: list[_Event] = []
        self._seq = 0
        self._jobs: dict[str, Any] = {}
        self._upload_s: dict[str, float] = {}
        # secagg rows: the engine's fills and the members' real SecAgg participants
        self.fills: FillSimulator | None = None
        # ftte+secagg+ddp: each device's own client-level budget (fills it may join)
        self.fills_joined: Counter[str] = Counter()
        self.ddp_fill_cap: int | None = None
        if run.distributed_dp:
            self.ddp_fill_cap = self._ddp_fill_cap()
        if run.secagg:
            rate = scenario.secagg_prg_bytes_per_flop
            self.calibration = calibration or (
                PrgCalibration.measure()
                if rate is None
                else PrgCalibration.fixed(bytes_per_flop=rate)
            )
            self.fills = FillSimulator(
                engine=self.engine,
                study_id=self.spec.name,
                shapes=self.shapes,
                by_id=self.by_id,
                calibration=self.calibration,
                push=lambda at, kind, payload: self._push(at, kind, payload=payload),
                phase_timeout_s=scenario.secagg_phase_timeout_s,
                task_for=self._fill_task,
                phase_cost=scenario.secagg_phase_cost,
            )
            if scenario.secagg_speed_prior is SpeedPrior.ORACLE:
                self._prime_task_seconds()

    def _prime_task_seconds(self) -> None:
        """SpeedPrior.ORACLE (an ablation): each device's modelled plain-task time as its
        measured task time before its first task (its tasks' own times then refine it)."""
        for d in self.fleet:
            record = self.engine.devices[d.device_id]
            try:
                names = self.engine.subset_for(record).names
            except DoesNotFit:  # no tier fits: it never joins a cohort
                continue
            nbytes = sum(4 * int(self.engine.params[n].size) for n in names)
            flops = self._subset_flops(names, d)
            record.task_seconds = d.download_s(nbytes) + d.compute_s(flops) + d.upload_s(nbytes)

    # -- what the report shows per device class ---------------------------------
    def _class_of(self, device_id: str) -> str:
        return self.by_id[device_id].profile.device_class.value

    def _count(self, event: EngineEvent) -> None:
        device_id = event.details.get("device_id")
        if not isinstance(device_id, str) or device_id not in self.by_id:
            return
        cls = self._class_of(device_id)
        if event.kind is EventKind.TASK_DISPATCHED:
            self._tally[cls]["dispatched"] += 1
        elif event.kind is EventKind.TASK_FAILED:
            self._tally[cls]["failed"] += 1
        elif event.kind is EventKind.UPDATE_ACCEPTED:
            self._tally[cls]["accepted"] += 1
            self._staleness[cls].append(int(event.details.get("staleness", 0)))

    def _charged(self, event: PrivacyEvent) -> None:
        if event.kind is PrivacyEventKind.SPENT and event.record is not None:
            self._epsilons.append(
                {
                    "t": event.at,
                    "class": self._class_of(event.device_id),
                    "device": event.device_id,
                    "epsilon": event.record.epsilon_after,
                }
            )

    def _class_figures(self, tiers: dict[str, SubsetSpec]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for cls, subset in sorted(tiers.items()):
            members = [d for d in self.fleet if d.profile.device_class.value == cls]
            stale = self._staleness.get(cls, [])
            out[cls] = {
                "devices": len(members),
                "stragglers": sum(d.straggler for d in members),
                "dispatched": self._tally[cls]["dispatched"],
                "accepted": self._tally[cls]["accepted"],
                "failed": self._tally[cls]["failed"],
                "participating_devices": len(
                    {d.device_id for d in members if self.engine.devices[d.device_id].completed}
                ),
                "staleness_mean": float(np.mean(stale)) if stale else None,
                "staleness_max": max(stale) if stale else None,
                "memory_budget_bytes": members[0].profile.memory_bytes,
                "train_memory_bytes": footprint_bytes(
                    self.model_config, subset.names, self.scenario.batch_size
                ),
            }
        return out

    # -- virtual time --------------------------------------------------------
    def _push(self, at: float, kind: str, task_id: str = "", *, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._events, _Event(at, self._seq, kind, task_id, payload))

    def _online(self, device: Device) -> bool:
        if self.run_kind.feasible and self.micro_batch_by_class[device.device_class] is None:
            return False  # its measured full-model step does not fit: it sits out
        if self._over_ddp_budget(device.device_id):
            return False  # another fill could take it past its epsilon: it declines
        return self.chance.random() < self.by_id[device.device_id].profile.availability

    def _download_bytes(self, order: TaskOrder) -> int:
        params = self.engine.params
        header = ModelDownload(
            model_version=order.model_version,
            subset_id=order.subset.subset_id,
            names=order.download,
        )
        return frame_size(
            header, {n: params[n] for n in order.download} if order.download else None
        )

    def _update_bytes(self, order: TaskOrder) -> int:
        """The update frame's size, charged as upload time when the task starts.

        In the study's encoding: int8 words and a scale per tensor for an int8 study
        (a typical 22-character scale; the real frame differs by a few bytes).
        """
        tensors = {n: self.engine.params[n] for n in order.subset.names}
        int8 = self.spec.update_encoding is UpdateEncoding.INT8
        header = Update(
            task_id=order.task_id,
            device_id=order.device_id,
            base_model_version=order.model_version,
            subset_id=order.subset.subset_id,
            num_samples=1,
            update_energy=0.0,
            train_loss=0.0,
            scales=dict.fromkeys(tensors, _TYPICAL_SCALE) if int8 else None,
        )
        if int8:
            # sizes only: a zero-stride view, so no dispatch allocates a copy of the subset
            tensors = {n: np.broadcast_to(np.int8(0), t.shape) for n, t in tensors.items()}
        return frame_size(header, tensors)

    def _start(self, order: TaskOrder, now: float, result: StudyResult) -> None:
        device = self.by_id[order.device_id]
        if self._refuses(order, now):
            return  # the device's own budget cannot afford the task
        if self.fills is not None:
            self._start_member(order, now, result)
            return
        down = self._download_bytes(order)
        result.download_bytes += down
        flops = self._task_flops(order, device)
        up_s = device.upload_s(self._update_bytes(order))
        duration = device.download_s(down) + device.compute_s(flops) + up_s
        silent_at = self._silent_at(device, order, now=now, duration=duration)
        if silent_at is not None:
            # A second "dropped" event, a no-op for the engine (since 7ef8b48). The dispatch
            # after every event draws availability for each idle device, so removing it
            # shifts the random stream and every plaintext figure in the README (measured:
            # full seed 0 ftte 0.9333 -> 0.9299). Remove it with the next full regeneration.
            self._push(silent_at + self.scenario.heartbeat_timeout_s, "dropped", order.task_id)
            return  # it goes silent before its update arrives: nothing to train
        task = LocalTask(
            task_id=order.task_id,
            model_version=order.model_version,
            subset_names=order.subset.names,
            train=self._train_for(device),
            dp=self._dp_config(order),
            seed=self.scenario.seed * 1_000_003 + int(order.task_id[1:]),
        )
        base = self.engine.base_params(order.model_version)
        state = self.budgets[order.device_id].accountant_state if task.dp else None
        self._jobs[order.task_id] = self.executor.submit(
            TrainJob(device_index=device.index, base=base, task=task, accountant_state=state)
        )
        self._push(now + duration, "arrived", order.task_id)

    def _start_member(self, order: TaskOrder, now: float, result: StudyResult) -> None:
        """A secagg row's task: one member of a fill; its phases run in ``self.fills``."""
        fills = self.fills
        if fills is None:
            raise SimulationError("not a secagg row")
        device = self.by_id[order.device_id]
        self.fills_joined[order.device_id] += 1
        if order.fill_id is None:  # cohorts bound at arrival: train first, then say so
            self._train_then_ready(order, now, result)
            return
        task = self._fill_task(order)
        down = self._download_bytes(order) + frame_size(task)  # the task carries the fill
        result.download_bytes += down
        compute = device.compute_s(self._task_flops(order, device))
        duration = device.download_s(down) + compute + device.upload_s(self._update_bytes(order))
        silent_at = self._silent_at(device, order, now=now, duration=duration)
        job = self._member_job(order, device)
        fills.start(
            task,
            now=now,
            download_s=device.download_s(down),
            compute_s=compute,
            silent_at=silent_at,
            submit=lambda: self.executor.submit(job),
        )

    def _train_then_ready(self, order: TaskOrder, now: float, result: StudyResult) -> None:
        """ARRIVAL: a plain training task; the device then says "trained" (a heartbeat-
        sized frame naming the task) and waits, update in hand, for its fill's task."""
        fills = self.fills
        if fills is None:
            raise SimulationError("not a secagg row")
        device = self.by_id[order.device_id]
        down = self._download_bytes(order)
        result.download_bytes += down
        ready_bytes = frame_size(
            Heartbeat(device_id=order.device_id, status=DeviceStatus.BUSY, tasks=(order.task_id,))
        )
        trained = now + device.download_s(down) + device.compute_s(self._task_flops(order, device))
        ready_at = trained + one_way_up_s(device, ready_bytes)
        duration = trained - now + device.upload_s(self._update_bytes(order))
        silent_at = self._silent_at(device, order, now=now, duration=duration)
        if silent_at is not None and silent_at < trained:
            return  # it never finishes training: nothing to run
        fills.train_first(
            task_id=order.task_id,
            device_id=order.device_id,
            ready_at=ready_at,
            ready_bytes=ready_bytes,
            silent_at=silent_at,
            job=self.executor.submit(self._member_job(order, device)),
        )

    def _task_flops(self, order: TaskOrder, device: SimDevice) -> float:
        return self._subset_flops(order.subset.names, device)

    def _subset_flops(self, names: Sequence[str], device: SimDevice) -> float:
        return task_flops(
            self.model_config,
            names,
            samples=self.num_samples[device.index],
            epochs=self.scenario.epochs,
            batch_size=self.scenario.batch_size,
        )

    def _silent_at(
        self, device: SimDevice, order: TaskOrder, *, now: float, duration: float
    ) -> float | None:
        """When the device goes silent within ``duration`` of its task (its class's dropout
        chance), or None; the coordinator notices a heartbeat timeout later (in a fill, its
        phase timer would drop it anyway)."""
        if self.chance.random() >= device.profile.dropout:
            return None
        silent_at = now + self.chance.uniform(0, duration)
        self._push(silent_at + self.scenario.heartbeat_timeout_s, "dropped", order.task_id)
        return silent_at

    def _member_job(self, order: TaskOrder, device: SimDevice) -> TrainJob:
        """A secagg member's training: no DP-SGD (its noise, if any, is distributed)."""
        local = LocalTask(
            task_id=order.task_id,
            model_version=order.model_version,
            subset_names=order.subset.names,
            train=self._train_for(device),
            seed=self.scenario.seed * 1_000_003 + int(order.task_id[1:]),
        )
        base = self.engine.base_params(order.model_version)
        return TrainJob(device_index=device.index, base=base, task=local)

    def _fill_task(self, order: TaskOrder) -> Task:
        """The Task a fill member receives (its SecAggParams from the engine)."""
        pieces = self.engine.secagg_params(order)
        params = pieces if isinstance(pieces, SecAggParams) else SecAggParams.model_validate(pieces)
        return Task(
            task_id=order.task_id,
            study_id=self.spec.name,
            device_id=order.device_id,
            model_version=order.model_version,
            subset_id=order.subset.subset_id,
            subset_names=order.subset.names,
            local_epochs=self.scenario.epochs,
            batch_size=self.scenario.batch_size,
            lr=self.scenario.lr,
            deadline_s=self.scenario.secagg_phase_timeout_s * 4,
            secagg=params,
        )

    def _train_for(self, device: SimDevice) -> LocalTrainConfig:
        """The study's local work; a feasible row's device accumulates over its micro-batch."""
        size = self.micro_batch_by_class.get(device.profile.device_class.value)
        if size is None or size == self.train.batch_size:
            return self.train
        return dataclasses.replace(self.train, micro_batch=size)

    def _dispatch(self, now: float, result: StudyResult) -> None:
        orders = self.engine.dispatch(now=now, eligible=self._online)
        deadline = self.scenario.fedavg_round_deadline_s
        if orders and orders[0].round_id is not None and deadline is not None:
            self._push(now + deadline, "deadline", str(orders[0].round_id))
        for order in orders:
            self._start(order, now, result)
        if not orders and self.engine.in_flight() == 0 and self._anyone_can_work():
            self._push(now + 60.0, "retry")  # nobody online: look again in a minute

    # -- main loop -------------------------------------------------------------
    def _evaluate(self, now: float, result: StudyResult) -> None:
        with fixed_threads():  # the same figures on any machine
            acc, loss = evaluate(self.model, self.engine.params, self.test_x, self.test_y)
        result.series.append(
            {
                "t": now,
                "updates": self.engine.stats.accepted,
                "version": self.engine.version,
                "accuracy": acc,
                "loss": loss,
            }
        )
        if result.time_to_target_s is None and acc >= self.scenario.target_accuracy:
            result.time_to_target_s = now
        result.final_accuracy, result.final_loss = acc, loss

    def run(self) -> StudyResult:
        started = time.perf_counter()
        result = StudyResult(run=self.run_kind.value, scenario=self.scenario.name)
        result.setup_s = started - self._built
        classes: Counter[str] = Counter()
        tiers: dict[str, SubsetSpec] = {}
        for d in self.fleet:
            tiers.setdefault(
                d.profile.device_class.value,
                self.engine.subset_for(self.engine.devices[d.device_id]),
            )
        self._evaluate(0.0, result)
        now = 0.0
        self._dispatch(now, result)
        budget = self.scenario.update_budget
        while self.engine.stats.accepted < budget and self._events:
            event = heapq.heappop(self._events)
            now = event.at
            if event.kind == "dropped":
                self.engine.task_failed(event.task_id, now=now, reason="device went silent")
                if self.fills is not None and self._fill_merged(self.fills.flush(now), classes):
                    self._evaluate_if_due(now, result)
            elif event.kind == "deadline":  # a synchronous round's deadline: drop who is late
                for order in [
                    o for o in self.engine.tasks.values() if str(o.round_id) == event.task_id
                ]:
                    self.engine.task_failed(
                        order.task_id, now=now, reason="missed the round deadline"
                    )
            elif event.kind == "arrived" or (
                self.fills is not None and event.kind in FillSimulator.KINDS
            ):
                if event.kind == "arrived":
                    merged = self._arrive(event.task_id, now, result, classes)
                else:
                    merged = self._fill_event(event, now, classes)
                due = result.series[-1]["updates"] + self.scenario.eval_every_updates
                if merged and self.engine.stats.accepted >= due:
                    self._evaluate(now, result)
                    if self.progress:
                        self.progress(self.engine.stats.accepted, budget, result.final_accuracy)
            if self.engine.stats.accepted < budget:
                # Why: once the budget is met the loop ends before any event is
                # handled; a task sent now (a synchronous strategy's whole next
                # round) would only be trained and thrown away.
                self._dispatch(now, result)
        if not result.series or result.series[-1]["version"] != self.engine.version:
            self._evaluate(now, result)
        result.final_accuracy = final_accuracy(result.series, tail=self.scenario.final_tail)
        result.updates = self.engine.stats.accepted
        result.merges = self.engine.stats.merges
        result.failed_tasks = self.engine.stats.failed
        result.rejected = {str(k): v for k, v in self.engine.stats.rejected.items()}
        result.virtual_time_s = now
        result.wall_s = time.perf_counter() - started
        result.updates_by_class = dict(classes)
        if self.guard is not None:
            self._privacy_figures(result)
        result.subset_by_class = {
            c: {
                "tier": s.tier,
                "subset_id": s.subset_id,
                "trained_fraction": s.numel(self.shapes)
                / sum(int(np.prod(v)) for v in self.shapes.values()),
                "train_memory_bytes": footprint_bytes(
                    self.model_config, s.names, self.scenario.batch_size
                ),
            }
            for c, s in tiers.items()
        }
        result.by_class = self._class_figures(tiers)
        result.epsilon_series = list(self._epsilons)
        for handle in self._jobs.values():  # tasks still in flight at the end
            handle.result()
        if self.fills is not None:
            self.fills.drain()
            result.upload_bytes += self.fills.upload_bytes
            result.download_bytes += self.fills.download_bytes
            result.secagg = {
                **self.fills.costs.as_dict(),
                "calibration": self.calibration.as_dict(),
                "cohort": self.engine.fills.policy.cohort_size if self.engine.fills else None,
                "threshold": self.engine.fills.policy.threshold if self.engine.fills else None,
            }
            if self.run_kind.distributed_dp:
                self._ddp_figures(result)
        return result

    def _fill_event(self, event: _Event, now: float, classes: Counter[str]) -> bool:
        """A secagg event; True if a fill merged (its survivors counted per class)."""
        if self.fills is None:
            return False
        return self._fill_merged(self.fills.handle(event.kind, event.payload, now), classes)

    def _fill_merged(self, merges: list[Any], classes: Counter[str]) -> bool:
        for merge in merges:
            for device_id in merge.device_ids:
                classes[self._class_of(device_id)] += 1
        return bool(merges)

    def _evaluate_if_due(self, now: float, result: StudyResult) -> None:
        if (
            self.engine.stats.accepted
            >= result.series[-1]["updates"] + self.scenario.eval_every_updates
        ):
            self._evaluate(now, result)

    def _arrive(self, task_id: str, now: float, result: StudyResult, classes: Counter[str]) -> bool:
        order = self.engine.tasks.get(task_id)
        outcome = self._jobs.pop(task_id).result()
        if order is None:
            return False
        header = update_header(
            outcome,
            device_id=order.device_id,
            subset_id=order.subset.subset_id,
            base_version=order.model_version,
            privacy=self._record_spend(order, outcome),
        )
        try:
            frame = encode_update(
                header,
                outcome,
                max_bytes=DEFAULT_MAX_MESSAGE_BYTES,
                encoding=self.spec.update_encoding,
                rounding_key=self._rounding_key(task_id),
            )
        except EncodeError as exc:  # a non-finite delta has no int8 words: the device gives up
            self.engine.task_failed(task_id, now=now, reason=f"update not encodable: {exc}")
            return False
        result.upload_bytes += len(frame)
        incoming = decode_update(
            frame,
            max_bytes=DEFAULT_MAX_MESSAGE_BYTES,
            encoding=self.spec.update_encoding,
            max_abs=self.spec.max_delta_abs,
        )
        before = self.engine.stats.merges
        outcome_ = self.engine.submit(incoming.update, now=now, context=incoming.privacy)
        if outcome_.accepted:
            classes[self.by_id[order.device_id].profile.device_class.value] += 1
        late = getattr(self.engine.strategy, "late_tasks", None)
        for task in late() if callable(late) and self.engine.stats.merges > before else ():
            # an over-selected round closed without these: the coordinator cancels them
            self.engine.task_failed(task, now=now, reason="round closed (over-selected)")
        if self.progress and self.engine.stats.merges == before:
            self.progress(self.engine.stats.accepted, self.scenario.update_budget, None)
        return self.engine.stats.merges > before

    def _rounding_key(self, task_id: str) -> bytes:
        """The int8 rounding key of one simulated update: fixed by the seed and the task.

        A device draws it from ``os.urandom``; the simulator derives it (BLAKE2b
        of the scenario's seed and the task id) so a study is reproducible.
        """
        material = f"fedward-int8-rounding/{self.scenario.seed}/{task_id}".encode()
        return hashlib.blake2b(material, digest_size=ROUNDING_KEY_BYTES).digest()

    # -- differential privacy (DP rows only) -----------------------------------------
    def _refuses(self, order: TaskOrder, now: float) -> bool:
        """DP rows: the device checks its own budget before it trains (and may refuse)."""
        dp = self.guard.task_dp(order) if self.guard is not None else None
        if self.guard is None or dp is None:  # none: patient-level DP, no device budget
            return False
        budget = self.budgets.setdefault(
            order.device_id, DeviceBudget(self.guard.settings.policy())
        )
        try:
            budget.check(dp)
        except TaskRefused:
            self.refused_tasks += 1
            self.engine.task_refused(
                order.task_id, now=now, reason="refused by the device: privacy budget"
            )
            return True
        return False

    def _dp_config(self, order: TaskOrder) -> DPTrainConfig | None:
        """The task's DP-SGD settings: the study's mechanism, the device's memory cap."""
        settings = self.guard.settings if self.guard is not None else None
        dp = self.guard.task_dp(order) if self.guard is not None else None
        if not isinstance(settings, StudyPrivacy) or dp is None:  # patient-level: no DP-SGD
            return None
        return self.budgets[order.device_id].train_config(
            dp,
            lr=self.train.lr,
            momentum=self.train.momentum,
            max_physical_batch_size=settings.max_physical_batch_size,
        )

    def _record_spend(self, order: TaskOrder, outcome: LocalOutcome) -> PrivacyReport | None:
        """The device adopts its new accountant state and claims its own epsilon."""
        if outcome.dp is None:
            return None
        return self.budgets[order.device_id].record(outcome)

    def save_privacy_ledger(self, data_dir: Path) -> Path | None:
        """DP rows: write ``privacy-ledger-<study>.json`` for ``fedward budget report``."""
        if self.guard is None:
            return None
        return save_guard_state(self.guard, ledger_file(data_dir, self.spec.name))

    def _anyone_can_work(self) -> bool:
        return any(
            d.state in (DeviceState.IDLE, DeviceState.BUSY)
            and not (d.state is DeviceState.IDLE and self._over_ddp_budget(d.device_id))
            for d in self.engine.devices.values()
        )

    # -- distributed DP (ftte+secagg+ddp) ---------------------------------------------
    def _ddp(self) -> Any:
        fills = self.engine.fills
        return fills.policy.ddp if fills is not None else None

    def _fill_length(self) -> int:
        """Coordinates of the fills' vector: FTTE's global subset (the same for every class)."""
        subset = self.engine.subset_for(self.engine.devices[self.fleet[0].device_id])
        return sum(int(np.prod(self.shapes[n])) for n in subset.names)

    def _ddp_fill_cap(self) -> int:
        """The most fills a device may join with its epsilon within ``dp_epsilon`` at ``dp_delta``.

        Counted per fill joined, not survived: the device cannot know it survived until
        the unmask request, so it budgets as the ledger reserves (every member).
        """
        ddp, d = self._ddp(), self._fill_length()
        eps, delta = self.scenario.dp_epsilon, self.scenario.dp_delta
        if ddp.epsilon(d, fills=1, delta=delta) > eps:
            return 0
        low, high = 1, 2
        while ddp.epsilon(d, fills=high, delta=delta) <= eps and high < 1 << 20:
            low, high = high, high * 2
        while high - low > 1:  # epsilon grows with fills: the last k within the budget
            mid = (low + high) // 2
            low, high = (mid, high) if ddp.epsilon(d, fills=mid, delta=delta) <= eps else (low, mid)
        return low

    def _over_ddp_budget(self, device_id: str) -> bool:
        cap = self.ddp_fill_cap
        return cap is not None and self.fills_joined[device_id] >= cap

    def _ddp_figures(self, result: StudyResult) -> None:
        """Each device's client-level epsilon over the fills it survived (its update released)."""
        if self.fills is None:
            return
        ddp, d, delta = self._ddp(), self._fill_length(), self.scenario.dp_delta
        survived: Counter[str] = Counter()
        for merge in self.fills.merges:
            survived.update(merge.device_ids)
        eps_of = {k: ddp.epsilon(d, fills=k, delta=delta) for k in set(survived.values())}
        by_class: dict[str, list[float]] = defaultdict(list)
        for device in self.fleet:
            k = survived[device.device_id]
            by_class[device.profile.device_class.value].append(eps_of[k] if k else 0.0)
        everyone = [e for values in by_class.values() for e in values]
        capped = [d_ for d_ in self.fleet if self._over_ddp_budget(d_.device_id)]
        result.exhausted_devices = len(capped)
        result.privacy = {
            "mechanism": "distributed Skellam under secure aggregation",
            "unit": "device update per fill (client level)",
            "epsilon_budget": self.scenario.dp_epsilon,
            "delta": delta,
            "accountant": "rdp (Skellam, Agarwal et al. 2021)",
            "noise_multiplier": ddp.noise_multiplier,
            "l2_clip": ddp.l2_clip,
            "bits": ddp.bits,
            "scale": ddp.scale,
            "min_survivors": ddp.min_survivors,
            "fills_cap_per_device": self.ddp_fill_cap,
            "fills_survived_max": max(survived.values(), default=0),
            "epsilon_max": max(everyone, default=0.0),
            "epsilon_mean": float(np.mean(everyone)) if everyone else 0.0,
            "epsilon_by_class": {
                c: {"mean": float(np.mean(v)), "max": max(v)} for c, v in sorted(by_class.items())
            },
            "exhausted_by_class": dict(Counter(d_.profile.device_class.value for d_ in capped)),
        }

    def _privacy_figures(self, result: StudyResult) -> None:
        guard = self.guard
        if guard is None:
            return
        ledger = guard.ledger
        by_class: dict[str, list[float]] = defaultdict(list)
        for d in self.fleet:
            by_class[d.profile.device_class.value].append(ledger.spent(d.device_id))
        exhausted = {
            d.device_id for d in self.engine.devices.values() if d.state is DeviceState.EXHAUSTED
        }
        result.exhausted_devices = len(exhausted)
        everyone = [e for values in by_class.values() for e in values]
        result.privacy = {
            "epsilon_budget": ledger.policy.epsilon,
            "delta": ledger.policy.delta,
            "accountant": ledger.policy.accountant.value,
            "noise_multiplier": guard.settings.noise_multiplier,
            "max_grad_norm": guard.settings.max_grad_norm,
            "sample_rate": guard.task_step.sample_rate,
            "steps_per_task": guard.task_step.steps,
            "unit": guard.unit.value,  # what each epsilon protects: a window or a patient
            "epsilon_max": max(everyone, default=0.0),
            "epsilon_mean": float(np.mean(everyone)) if everyone else 0.0,
            "epsilon_by_class": {
                c: {"mean": float(np.mean(v)), "max": max(v)} for c, v in sorted(by_class.items())
            },
            "exhausted_by_class": dict(
                Counter(self.by_id[d].profile.device_class.value for d in exhausted)
            ),
            "refused_tasks": self.refused_tasks,
        }


def final_accuracy(series: list[dict[str, float]], *, tail: float) -> float:
    """Mean held-out accuracy over the evaluations in the last ``tail`` of the updates.

    One evaluation on a finite test set is noisy (and so is one merge); the
    mean over the tail of the run is what the strategy converged to.
    """
    last = series[-1]["updates"]
    cut = last * (1 - tail)
    window = [p["accuracy"] for p in series if p["updates"] >= cut and p["updates"] > 0]
    return float(np.mean(window)) if window else float(series[-1]["accuracy"])
