"""How far can FTTE's subset go? Central training of a subset on the pooled federated data.

The federation's devices' windows pooled and shuffled (no non-IID split, no
staleness, no stragglers), the subset trained from the benchmark's warm start
with the study's batch, optimizer and learning rate, one held-out evaluation
per epoch (the benchmark's held-out windows)::

    python -m fedward.bench.ftte_ceiling --scenario quick --seed 0 --epochs 6

If the subset reaches FedBuff's accuracy here, what holds FTTE back in the
federation is how the updates are merged, not how much of the model it trains.
"""

from __future__ import annotations

import argparse

import numpy as np

from fedward.simulation.scenario import PRESETS, StrategyRun
from fedward.simulation.sensordata import load_study_data
from fedward.simulation.warmstart import scenario_start
from fedward.tinytrain.models import build_model
from fedward.tinytrain.runtime import fixed_threads
from fedward.tinytrain.training import LocalTrainConfig, evaluate, train_subset


def subsets(names: list[str]) -> dict[str, list[str]]:
    last = names[-4:]  # the last block's weight and bias, the head's
    return {
        "last block + head (FTTE's wearable subset)": last,
        "every bias + last block + head": [n for n in names if n in last or n.endswith("bias")],
        "full model": names,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    base = PRESETS[args.scenario]
    sc = type(base).model_validate({**base.model_dump(), "seed": args.seed})
    config = sc.study_spec(StrategyRun.FTTE).model_settings()
    with fixed_threads():
        model = build_model(config, seed=sc.seed)
        data = load_study_data(sc.data_config())
        start = scenario_start(sc, config)
        x, y = np.concatenate(data.device_x), np.concatenate(data.device_y)
        pick = np.random.default_rng(sc.seed + 7).permutation(len(data.test_y))[: sc.eval_windows]
        test_x, test_y = data.test_x[pick], data.test_y[pick]
        print(f"warm start {evaluate(model, start, test_x, test_y)[0]:.4f} ({len(x)} windows)")
        train = LocalTrainConfig(epochs=1, batch_size=sc.batch_size, lr=sc.lr, momentum=sc.momentum)
        for label, names in subsets([n for n, _ in model.named_parameters()]).items():
            params, accuracies = dict(start), []
            for epoch in range(args.epochs):
                result = train_subset(model, params, names, x, y, config=train, seed=epoch)
                params = {n: params[n] + result.delta.get(n, 0) for n in params}
                accuracies.append(evaluate(model, params, test_x, test_y)[0])
            print(f"{label}: per epoch " + " ".join(f"{a:.4f}" for a in accuracies))


if __name__ == "__main__":
    main()
