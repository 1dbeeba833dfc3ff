"""Helpers of the privacy integration tests: a tiny DP study and its engine.

The model is the tiny CNN (width 4, 64-sample windows) so a real DP task takes
milliseconds; updates in the guard tests carry zero deltas of the right shapes
(the guard judges the privacy report, not the tensors).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from fedward.coordinator.engine import Engine, EngineEvent, EventKind, TaskOrder
from fedward.coordinator.privacy.guard import PrivacyEvent, PrivacyGuard, privacy_guard_of
from fedward.coordinator.privacy.settings import StudyPrivacy
from fedward.coordinator.strategies import ClientUpdate
from fedward.coordinator.study_spec import StudySpec, build_engine
from fedward.privacy.accounting import Accountant, epsilon_for
from fedward.protocol.messages import PrivacyReport

DELTA = 1e-5
PRIVACY = StudyPrivacy(
    epsilon=8.0,
    delta=DELTA,
    noise_multiplier=1.5,
    max_grad_norm=1.0,
    sample_rate=0.25,
    steps_per_task=8,
    max_physical_batch_size=4,
)
SPEC = StudySpec(name="dp-unit", width=4, window=64, concurrency=2, buffer_size=2, privacy=PRIVACY)


@dataclass
class Recorder:
    """Engine and guard events, in order."""

    engine_events: list[EngineEvent] = field(default_factory=list)
    privacy_events: list[PrivacyEvent] = field(default_factory=list)

    def dispatched_to(self, device_id: str) -> list[EngineEvent]:
        return [
            e
            for e in self.engine_events
            if e.kind is EventKind.TASK_DISPATCHED and e.details["device_id"] == device_id
        ]


@dataclass
class DpStudy:
    engine: Engine
    guard: PrivacyGuard
    events: Recorder

    def report_for(
        self, order: TaskOrder, *, claimed: float | None = None, **changes: object
    ) -> PrivacyReport:
        """The report an honest device sends after ``order`` (``claimed`` forges it)."""
        step = self.guard.task_step
        # the ledger charged the task at dispatch: an honest device trained every
        # task charged to it so far (none of its updates were lost)
        history = self.guard.ledger.history(order.device_id)
        if not self.guard.ledger.is_reserved(order.device_id, order.task_id):
            history = [*history, step]
        honest = epsilon_for(history, delta=DELTA, accountant=Accountant.RDP)
        values = dict(
            noise_multiplier=step.noise_multiplier,
            sample_rate=step.sample_rate,
            steps=step.steps,
            max_grad_norm=PRIVACY.max_grad_norm,
            accountant=Accountant.RDP,
            claimed_epsilon=honest if claimed is None else claimed,
            delta=DELTA,
        )
        values.update(changes)
        return PrivacyReport(**values)

    def update_for(self, order: TaskOrder) -> ClientUpdate:
        shapes = {n: v.shape for n, v in self.engine.params.items()}
        return ClientUpdate(
            device_id=order.device_id,
            task_id=order.task_id,
            base_version=order.model_version,
            subset_id=order.subset.subset_id,
            delta={n: np.zeros(shapes[n], np.float32) for n in order.subset.names},
            num_samples=16,
            update_energy=0.0,
        )


def make_dp_study(*, spec: StudySpec = SPEC, devices: int = 2, seed: int = 0) -> DpStudy:
    events = Recorder()
    engine = build_engine(
        spec,
        rng=random.Random(seed),
        listeners=(events.engine_events.append,),
        privacy_listeners=(events.privacy_events.append,),
    )
    for i in range(devices):
        engine.enrol(f"dev-{i:02d}", device_class="wearable", memory_bytes=20_000, now=0.0)
    guard = privacy_guard_of(engine)
    if guard is None:
        raise RuntimeError("a DP spec must give the engine a privacy guard")
    return DpStudy(engine=engine, guard=guard, events=events)
