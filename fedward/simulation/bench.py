"""The benchmark: strategies side by side on one scenario and seed.

Every row runs the same fleet, data split, warm start, model, batch size,
optimizer and local work (``Scenario.study_spec``); only the merge rule and, for
FTTE, the subset differ. Figures per row:

- ``time_to_target_s``: virtual seconds until held-out accuracy first reaches
  the scenario's target (evaluated after every merge);
- ``final_accuracy``: mean held-out accuracy over the last tenth of the run;
- ``peak_train_memory_bytes``: measured training footprint (parameters held,
  gradients, optimizer state, tensors saved for backward: ``fedward.tinytrain.memory``)
  of the subset the most constrained device class trains; the profiler's peak
  of the same step is reported beside it;
  (DP rows: measured with Opacus at the scenario's physical batch, per-sample
  gradients included);
- ``upload_bytes_per_update``: mean encoded update frame size;
- ``updates`` accepted and ``wall_s`` of the run on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from fedward.coordinator.engine import Device
from fedward.edge.dp_training import measure_dp_training_step
from fedward.tinytrain.memory import Footprint, measure_training_step

from .executor import ExecutorKind, make_executor
from .profiles import DEFAULT_PROFILES
from .scenario import Scenario, StrategyRun
from .study import Study, StudyResult

# The required rows plus the DP row; --quick runs the required rows only.
# Others (ftte_nested, fedasync) are one ``--run`` away.
DEFAULT_RUNS = (StrategyRun.FEDAVG, StrategyRun.FEDBUFF, StrategyRun.FTTE, StrategyRun.FTTE_DP)
QUICK_RUNS = (StrategyRun.FEDAVG, StrategyRun.FEDBUFF, StrategyRun.FTTE)

ProgressFactory = Callable[[str, int], Callable[[int, int, float | None], None]]


def constrained_class(scenario: Scenario) -> str:
    """The device class with the least memory among those the fleet mix uses."""
    used = [c for c, w in scenario.mix.items() if w > 0]
    return min(used, key=lambda c: DEFAULT_PROFILES[c].memory_bytes).value


LEVELS = (0.95, 0.96, 0.97, 0.975, 0.98, 0.985)


def time_to_levels(
    series: list[dict[str, float]], levels: Sequence[float] = LEVELS
) -> dict[str, float | None]:
    """Virtual seconds until held-out accuracy first reaches each level (None: never)."""
    return {
        f"{level:g}": next((p["t"] for p in series if p["accuracy"] >= level), None)
        for level in levels
    }


def measured_footprint(study: Study, names: tuple[str, ...], *, memory_bytes: int) -> Footprint:
    """What one local step of ``names`` holds on a device of this row.

    DP rows are measured with Opacus at the largest physical batch (down from
    the scenario's, halving) that fits the device's memory: what the device
    would run; the mechanism and result do not depend on the physical batch.
    """
    scenario = study.scenario
    if not study.run_kind.dp:
        return measure_training_step(study.model_config, names, batch_size=scenario.batch_size)
    physical = scenario.dp_max_physical_batch
    while True:
        footprint = measure_dp_training_step(
            study.model_config,
            names,
            batch_size=scenario.batch_size,
            max_physical_batch_size=physical,
            noise_multiplier=scenario.dp_noise_multiplier,
            max_grad_norm=scenario.dp_max_grad_norm,
            momentum=scenario.momentum,
        )
        if footprint.total <= memory_bytes or physical == 1:
            return footprint
        physical = max(1, physical // 2)


def row(study: Study, result: StudyResult, *, device_class: str) -> dict[str, Any]:
    profile = next(d for d in study.fleet if d.profile.device_class.value == device_class).profile
    probe = Device(device_id="probe", device_class=device_class, memory_bytes=profile.memory_bytes)
    subset = study.engine.subset_for(probe)
    footprint = measured_footprint(study, subset.names, memory_bytes=profile.memory_bytes)
    return {
        "time_to_target_s": result.time_to_target_s,
        "final_accuracy": result.final_accuracy,
        "peak_train_memory_bytes": footprint.total,
        "upload_bytes_per_update": result.upload_bytes_per_update,
        "updates": result.updates,
        "wall_s": result.wall_s,
        "time_to_accuracy_s": time_to_levels(result.series),
        "memory_breakdown": footprint.as_dict(),
        "constrained_device_memory_bytes": profile.memory_bytes,
        "constrained_class": device_class,
        "constrained_subset": {
            "tier": subset.tier,
            "subset_id": subset.subset_id,
            "names": list(subset.names),
        },
        "merges": result.merges,
        "failed_tasks": result.failed_tasks,
        "rejected": result.rejected,
        "virtual_time_s": result.virtual_time_s,
        "download_bytes_total": result.download_bytes,
        "updates_by_class": result.updates_by_class,
        "subset_by_class": result.subset_by_class,
        "series": result.series,
        **(
            {"exhausted_devices": result.exhausted_devices, "privacy": result.privacy}
            if study.run_kind.dp
            else {}
        ),
    }


def run_benchmark(
    scenario: Scenario,
    *,
    runs: Sequence[StrategyRun] = DEFAULT_RUNS,
    executor: ExecutorKind = ExecutorKind.PROCESS,
    workers: int | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    spec = scenario.study_spec(runs[0])
    pool = make_executor(executor, scenario.data_config(), spec.model_settings(), workers=workers)
    device_class = constrained_class(scenario)
    strategies: dict[str, Any] = {}
    try:
        for run in runs:
            callback = progress(run.value, scenario.update_budget) if progress else None
            study = Study(scenario, run, executor=pool, progress=callback)
            strategies[run.value] = row(study, study.run(), device_class=device_class)
    finally:
        pool.close()
    return {
        "scenario": {
            "name": scenario.name,
            "devices": scenario.devices,
            "straggler_fraction": scenario.straggler_fraction,
            "target_accuracy": scenario.target_accuracy,
            "seed": scenario.seed,
            "settings": scenario.model_dump(mode="json"),
        },
        "strategies": strategies,
        "total_wall_s": time.perf_counter() - started,
    }


def ratios(
    report: dict[str, Any], *, of: str = "ftte", to: str = "fedavg"
) -> dict[str, float | None]:
    a, b = report["strategies"][of], report["strategies"][to]
    t = (
        a["time_to_target_s"] / b["time_to_target_s"]
        if a["time_to_target_s"] is not None and b["time_to_target_s"]
        else None
    )
    return {
        "time_to_target": t,
        "peak_train_memory": a["peak_train_memory_bytes"] / b["peak_train_memory_bytes"],
        "upload_bytes_per_update": a["upload_bytes_per_update"] / b["upload_bytes_per_update"],
        "final_accuracy_points": 100 * (a["final_accuracy"] - b["final_accuracy"]),
    }
