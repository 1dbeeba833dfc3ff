"""FTTE accuracy levers (issue 14, item 6): one FTTE row with a lever switched on.

``fedward bench`` builds FTTE from the study spec (which now has
``server_optimizer``; the other levers have no field), so this script runs the benchmark's own
``run_benchmark`` with FTTE's constructor options overridden (the same
scenario, fleet, split, warm start and local work as ``fedward bench``)::

    python -m fedward.bench.ftte_levers --scenario quick --seed 0 --run ftte \\
        --server-optimizer adam --server-adam-lr 0.003 [--set mislabelled_fraction=0.1] \\
        [--biases-everywhere] --json runs/levers/q0-adam.json

``--biases-everywhere`` trains, as Lin et al. do, the biases of every block
besides the last block and the head, with gradients accumulated one window at
a time (the only micro-batch at which that subset fits a wearable: 550,664 B
measured, against 1,033,784 B at 4 windows); the planner's ladder cannot
express it yet, so the script swaps the global subset and the devices' micro-batch.
FLOPs, memory and bytes are still counted on the real step and frames.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedward.coordinator.engine import planning
from fedward.coordinator.strategies import ftte as ftte_module
from fedward.simulation import study as study_module
from fedward.simulation.bench import run_benchmark
from fedward.simulation.executor import ExecutorKind
from fedward.simulation.scenario import PRESETS, StrategyRun
from fedward.tinytrain.subsets import SubsetSpec


def override_ftte(options: dict[str, Any]) -> None:
    """Every FTTE built from now on takes ``options`` over the study spec's values."""
    if not options:
        return
    original = ftte_module.FTTE.__init__

    def patched(self: ftte_module.FTTE, **kwargs: Any) -> None:
        original(self, **{**kwargs, **options})

    ftte_module.FTTE.__init__ = patched  # type: ignore[method-assign]


@contextlib.contextmanager
def ftte_options(options: dict[str, Any]) -> Iterator[None]:
    """``override_ftte`` for the block only (label_groups' rows)."""
    original = ftte_module.FTTE.__init__
    override_ftte(options)
    try:
        yield
    finally:
        ftte_module.FTTE.__init__ = original  # type: ignore[method-assign]


def biases_everywhere(micro_batch: int) -> None:
    """The global subset: every bias, the last block and the head, accumulated per window."""
    original = planning.SubsetPlanner.subset_for

    def subset_for(
        self: planning.SubsetPlanner, memory_bytes: int, *, fleet_memory: Any
    ) -> SubsetSpec:
        if self.mode is not planning.SubsetMode.GLOBAL:
            return original(self, memory_bytes, fleet_memory=fleet_memory)
        last = self.ladder.full().names[-4:]  # last block's weight and bias, the head's
        names = tuple(n for n in self.ladder.full().names if n in last or n.endswith("bias"))
        return SubsetSpec(names=names, tier=self.ladder.num_tiers + 1)

    def train_for(self: study_module.Study, device: Any) -> Any:
        del device
        return dataclasses.replace(self.train, micro_batch=micro_batch)

    planning.SubsetPlanner.subset_for = subset_for  # type: ignore[method-assign]
    study_module.Study._train_for = train_for  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", default="ftte", choices=["ftte", "ftte_nested"])
    parser.add_argument("--server-optimizer", default="sgd", choices=["sgd", "momentum", "adam"])
    parser.add_argument("--server-adam-lr", type=float, default=0.01)
    parser.add_argument("--server-momentum", type=float, default=0.9)
    parser.add_argument("--biases-everywhere", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="scenario field=JSON value")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    options: dict[str, Any] = {}
    if args.server_optimizer != "sgd":
        options = {
            "server_optimizer": args.server_optimizer,
            "server_adam_lr": args.server_adam_lr,
            "server_momentum": args.server_momentum,
        }
    override_ftte(options)
    if args.biases_everywhere:
        biases_everywhere(1)
    changes = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    base = PRESETS[args.scenario]
    scenario = type(base).model_validate({**base.model_dump(), "seed": args.seed, **changes})
    started = time.perf_counter()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = run_benchmark(
        scenario,
        runs=(StrategyRun(args.run),),
        executor=ExecutorKind.PROCESS,
        workers=None,
        progress=None,
        ledger_dir=args.json.parent,
    )
    report["levers"] = {**options, "biases_everywhere": args.biases_everywhere, **changes}
    args.json.write_text(json.dumps(report, indent=2))
    row = report["strategies"][args.run]
    print(
        f"{args.json}: final {row['final_accuracy']:.4f}, AUC {row['accuracy_auc']:.4f}, "
        f"memory {row['peak_train_memory_bytes']:,} B, upload {row['upload_bytes_per_update']:,.0f} "
        f"B/update, {time.perf_counter() - started:.0f} s wall"
    )


if __name__ == "__main__":
    main()
