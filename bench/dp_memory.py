"""DP training memory on the wearable class vs full-model non-DP FedAvg, measured.

Both sides run one real step and count what stays resident (parameters held,
gradients, optimizer state, tensors saved for backward; for DP also Opacus'
per-sample gradients of one physical batch, its clipped-sum accumulators and
the layer inputs its hooks keep): ``fedward.edge.dp_training.measure_dp_training_step``
and ``fedward.tinytrain.memory.measure_training_step``. Everything is fp32; no frozen
weight is held at lower precision.

- DP side: the subset FTTE's planner gives the wearable class in the scenario
  (the global subset sized to the smallest device), logical batch
  ``batch_size``, physical batches of ``dp_max_physical_batch`` (Opacus'
  ``BatchMemoryManager``, what a wearable runs);
- non-DP side: the whole model, the same batch, plain SGD with momentum.

Per-sample gradients grow with the physical batch, so the figures also give
the largest physical batch (8, 4, 2, 1) whose DP footprint fits the wearable's
training memory: the physical batch changes memory and wall time only, never
the mechanism or the result (``BatchMemoryManager`` splits a logical batch).

Usage: ``python -m fedward.bench.dp_memory [--scenario quick|full|tiny]``.
"""

from __future__ import annotations

import argparse
import json

from fedward.coordinator.study_spec import build_planner
from fedward.edge.dp_training import measure_dp_training_step
from fedward.protocol.messages import DeviceClass
from fedward.simulation.profiles import DEFAULT_PROFILES
from fedward.simulation.scenario import StrategyRun, load_scenario
from fedward.tinytrain.memory import measure_training_step


def dp_memory_figures(scenario_name: str) -> dict[str, object]:
    scenario = load_scenario(scenario_name)
    spec = scenario.study_spec(StrategyRun.FTTE_DP)
    config = spec.model_settings()
    planner = build_planner(spec)
    used = [c for c, w in scenario.mix.items() if w > 0]
    fleet = [DEFAULT_PROFILES[c].memory_bytes for c in used]
    wearable = DEFAULT_PROFILES[DeviceClass.WEARABLE]
    subset = planner.subset_for(wearable.memory_bytes, fleet_memory=fleet)
    full_names = planner.ladder.full().names
    full = measure_training_step(config, full_names, batch_size=scenario.batch_size)
    dp = measure_dp_training_step(
        config,
        subset.names,
        batch_size=scenario.batch_size,
        max_physical_batch_size=scenario.dp_max_physical_batch,
        noise_multiplier=scenario.dp_noise_multiplier,
        max_grad_norm=scenario.dp_max_grad_norm,
        momentum=scenario.momentum,
    )
    fitting: dict[str, float] | None = None
    for physical in (8, 4, 2, 1):
        footprint = measure_dp_training_step(
            config, subset.names, batch_size=scenario.batch_size, max_physical_batch_size=physical
        )
        if footprint.total <= wearable.memory_bytes:
            fitting = {"max_physical_batch_size": physical, **footprint.as_dict()}
            fitting["ratio"] = footprint.total / full.total
            break
    return {
        "scenario": scenario.name,
        "wearable_memory_bytes": wearable.memory_bytes,
        "subset": {"tier": subset.tier, "subset_id": subset.subset_id, "names": list(subset.names)},
        "batch_size": scenario.batch_size,
        "max_physical_batch_size": scenario.dp_max_physical_batch,
        "dp_tier_footprint": {**dp.as_dict(), "per_sample_grads": dp.per_sample_grads},
        "full_fedavg_footprint": full.as_dict(),
        "ratio": dp.total / full.total,
        "fits_wearable": dp.total <= wearable.memory_bytes,
        "largest_fitting_physical_batch": fitting,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="full")
    args = parser.parse_args()
    figures = dp_memory_figures(args.scenario)
    dp, full = figures["dp_tier_footprint"], figures["full_fedavg_footprint"]
    print(json.dumps(figures, indent=2))
    print(
        f"\nDP tier {figures['subset']['tier']} on the wearable: {dp['total']:,} B "  # type: ignore[index]
        f"vs full non-DP FedAvg {full['total']:,} B: ratio {figures['ratio']:.3f} "  # type: ignore[index]
        f"(target <= 0.25); fits the wearable's {figures['wearable_memory_bytes']:,} B: "
        f"{figures['fits_wearable']}"
    )
    fitting = figures["largest_fitting_physical_batch"]
    if fitting:
        print(
            f"fits the wearable at physical batch {fitting['max_physical_batch_size']}: "  # type: ignore[index]
            f"{fitting['total']:,} B, ratio {fitting['ratio']:.3f}"  # type: ignore[index]
        )
    else:
        print("no physical batch makes this subset fit the wearable under DP")


if __name__ == "__main__":
    main()
