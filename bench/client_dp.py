"""The client-level (patient-level) DP row: FTTE's global subset, a uniform buffered
merge of clipped updates noised for the 2C/K sensitivity, and a per-patient budget.

What the row changes against ``ftte`` is only what the strategy changes: devices
train plainly (no DP-SGD), the coordinator clips every update to ``CLIP``, sums
a buffer of ``K`` over ``K`` with uniform weights, adds N(0, (z 2C/K)^2), and
charges each participation to the patient's ledger (one Gaussian mechanism of
multiplier z, no sampling amplification claimed); a patient whose budget
cannot afford another participation is never dispatched again. Client-level
DP needs large merges (the noise falls as 1/K), so the row uses the scenario's
concurrency as its buffer: that is the strategy's own setting, reported below.

Usage: ``python -m fedward.bench.client_dp [--scenario tiny|quick|full] [--z 1.0]
[--clip 0.5] [--epsilon 8]``; prints one JSON row (accuracy, merges, the epsilon
each patient reached, which unit it protects).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from fedward.coordinator.study_spec import StudySpec
from fedward.privacy.accounting import Accountant, epsilon_for
from fedward.privacy.central import patient_level_step
from fedward.simulation.executor import ExecutorKind, make_executor
from fedward.simulation.scenario import Scenario, StrategyRun, load_scenario
from fedward.simulation.study import Study


class ClientDPScenario(Scenario):
    """A scenario whose FTTE row runs client-level DP instead (same model, data, work)."""

    client_dp_clip: float = 0.5
    client_dp_z: float = 1.0
    client_dp_epsilon: float = 8.0

    def study_spec(self, run: StrategyRun) -> StudySpec:
        base = super().study_spec(run).model_dump()
        base.update(
            name=f"{self.name}-client-dp",
            strategy="client_dp",
            buffer_size=self.concurrency,
            client_dp={
                "clip_norm": self.client_dp_clip,
                "noise_multiplier": self.client_dp_z,
                "epsilon": self.client_dp_epsilon,
                "delta": self.dp_delta,
            },
            norm_bound_tolerance=None,
        )
        return StudySpec.model_validate(base)


def client_dp_row(scenario_name: str, *, z: float, clip: float, epsilon: float) -> dict[str, Any]:
    preset = load_scenario(scenario_name)
    scenario = ClientDPScenario(
        **preset.model_dump(),
        client_dp_clip=clip,
        client_dp_z=z,
        client_dp_epsilon=epsilon,
    )
    spec = scenario.study_spec(StrategyRun.FTTE)
    executor = make_executor(ExecutorKind.SERIAL, scenario.data_config(), spec.model_settings())
    started = time.perf_counter()
    study = Study(scenario, StrategyRun.FTTE, executor=executor)
    result = study.run()
    guard = study.guard
    if guard is None:
        raise SystemExit("the client-level DP row has no privacy guard")
    spent = [guard.ledger.spent(d) for d in guard.ledger.devices()]
    one = patient_level_step(noise_multiplier=z, participations=1)
    return {
        "row": "client_dp",
        "scenario": scenario.name,
        "unit": guard.unit.value,
        "clip_norm": clip,
        "noise_multiplier": z,
        "buffer_size": spec.buffer_size,
        "noise_std_per_coordinate": z * 2 * clip / spec.buffer_size,
        "epsilon_budget": epsilon,
        "delta": scenario.dp_delta,
        "epsilon_one_participation": epsilon_for(
            [one], delta=scenario.dp_delta, accountant=Accountant.RDP
        ),
        "epsilon_max": max(spent, default=0.0),
        "epsilon_mean": float(np.mean(spent)) if spent else 0.0,
        "patients_charged": len(spent),
        "exhausted_devices": result.exhausted_devices,
        "final_accuracy": result.final_accuracy,
        "updates": result.updates,
        "merges": result.merges,
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="quick")
    parser.add_argument("--z", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=0.5)
    parser.add_argument("--epsilon", type=float, default=8.0)
    args = parser.parse_args()
    row = client_dp_row(args.scenario, z=args.z, clip=args.clip, epsilon=args.epsilon)
    print(json.dumps(row, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
