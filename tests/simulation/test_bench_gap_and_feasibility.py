"""Issue 14 items 2 and 4: gap-closure times and the accuracy AUC; the feasibility
rule (a device trains the full model only if its measured step fits); FedAvg with
over-selection closes its round on the first C reports."""

from __future__ import annotations

import numpy as np
import pytest

from fedward.coordinator.errors import UpdateRejected
from fedward.coordinator.strategies.base import ClientUpdate
from fedward.coordinator.strategies.fedavg import FedAvg
from fedward.protocol.messages import DeviceClass
from fedward.simulation.bench import accuracy_auc, gap_closure_times
from fedward.simulation.feasibility import fitting_micro_batch, micro_batches, step_footprint
from fedward.simulation.profiles import DEFAULT_PROFILES
from fedward.tinytrain.models import ModelConfig, build_model, parameter_groups
from fedward.tinytrain.subsets import SubsetLadder

SERIES = [
    {"t": 0.0, "accuracy": 0.80},
    {"t": 10.0, "accuracy": 0.86},
    {"t": 30.0, "accuracy": 0.89},
    {"t": 70.0, "accuracy": 0.90},
]


def test_gap_closure_times_are_the_first_evaluation_past_each_fraction() -> None:
    # Execute
    closed = gap_closure_times(SERIES, start=0.80, reference=0.90)
    no_gap = gap_closure_times(SERIES, start=0.80, reference=0.79)
    # Assert: 50% = 0.85 at t=10, 80% = 0.88 at t=30, 95% = 0.895 at t=70
    assert closed == {"50%": 10.0, "80%": 30.0, "95%": 70.0}
    assert set(no_gap.values()) == {None}
    assert gap_closure_times(SERIES, start=0.80, reference=0.95)["95%"] is None


def test_accuracy_auc_is_the_step_curve_mean_over_the_common_horizon() -> None:
    # Execute
    over_run = accuracy_auc(SERIES, horizon=70.0)
    extended = accuracy_auc(SERIES, horizon=100.0)
    # Assert: 0.80*10 + 0.86*20 + 0.89*40 over 70 s; past the end the last value holds
    assert over_run == pytest.approx((8.0 + 17.2 + 35.6) / 70)
    assert extended == pytest.approx((8.0 + 17.2 + 35.6 + 0.90 * 30) / 100)


def test_full_model_fits_a_class_only_at_a_micro_batch_whose_measured_step_fits() -> None:
    # Prepare
    config = ModelConfig(width=24)
    full = SubsetLadder(parameter_groups(build_model(config, seed=0))).full().names
    budget = {c: DEFAULT_PROFILES[c].memory_bytes for c in DeviceClass}
    # Execute
    chosen = {
        c: fitting_micro_batch(config, full, batch_size=32, memory_bytes=b)
        for c, b in budget.items()
    }
    # Assert: the wearable cannot hold even a one-window step; the phone accumulates;
    # every chosen micro-batch's measured step fits and the next larger one does not
    assert micro_batches(32) == [32, 16, 8, 4, 2, 1]
    assert chosen[DeviceClass.WEARABLE] is None
    assert step_footprint(config, full, 32, 1).total > budget[DeviceClass.WEARABLE]
    assert chosen[DeviceClass.GATEWAY] == 32
    phone = chosen[DeviceClass.PHONE]
    assert phone is not None and phone < 32
    assert step_footprint(config, full, 32, phone).total <= budget[DeviceClass.PHONE]
    assert step_footprint(config, full, 32, phone * 2).total > budget[DeviceClass.PHONE]


def update(task: str, value: float) -> ClientUpdate:
    return ClientUpdate(
        task_id=task,
        device_id=f"d-{task}",
        base_version=0,
        subset_id="s",
        delta={"a": np.array([value], dtype=np.float32)},
        num_samples=1,
    )


def test_over_selected_fedavg_merges_on_the_goal_and_refuses_late_reports() -> None:
    # Prepare: goal 4 reports, 30% over-selected -> 6 tasks
    strategy = FedAvg(shapes={"a": (1,)}, over_selection=0.3)
    room = strategy.dispatch_room(in_flight=0, concurrency=4)
    tasks = [f"t{i}" for i in range(room)]
    strategy.tasks_dispatched(tasks)
    # Execute
    for i, task in enumerate(tasks[:4]):
        assert not strategy.ready()
        strategy.accept(update(task, float(i)), server_version=0)
    ready = strategy.ready()
    merged = strategy.aggregate({"a": np.zeros(1, dtype=np.float32)}, server_version=0)
    # Assert
    assert room == 6 and ready
    assert merged.params["a"][0] == pytest.approx(1.5)  # mean of the first four
    assert strategy.late_tasks() == {"t4", "t5"}
    with pytest.raises(UpdateRejected):
        strategy.accept(update("t4", 9.0), server_version=1)
    assert strategy.late_tasks() == {"t5"}
