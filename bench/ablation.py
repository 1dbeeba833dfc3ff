"""Ablation of FTTE's merge weights: does each term earn its place?

Runs the FTTE row with its staleness term (``a``), its variance term
(``beta``), both, and neither, on the same scenario over several seeds, and
reports time to target and final accuracy (mean and spread) side by side.

    python -m bench.ablation [--scenario quick] [--seeds 3] [--json runs/ablation.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from simulation.executor import ExecutorKind, make_executor
from simulation.scenario import StrategyRun, load_scenario
from simulation.study import Study

VARIANTS = {
    "ftte (age + variance)": {},
    "no variance term (beta=0)": {"variance_beta": 0.0},
    "no age term (a=0)": {"staleness_exponent": 0.0},
    "neither (plain weighted mean)": {"variance_beta": 0.0, "staleness_exponent": 0.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", default="quick")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("runs/ablation/ablation.json"))
    args = parser.parse_args()
    base = load_scenario(args.scenario)
    results: dict[str, list[dict[str, float | None]]] = {name: [] for name in VARIANTS}
    with Progress() as progress:
        bar = progress.add_task("ablation", total=args.seeds * len(VARIANTS))
        for seed in range(args.seeds):
            seeded = base.model_copy(update={"seed": base.seed + seed})
            spec = seeded.study_spec(StrategyRun.FTTE)
            pool = make_executor(ExecutorKind.PROCESS, seeded.data_config(), spec.model_settings())
            try:
                for name, change in VARIANTS.items():
                    scenario = type(base).model_validate({**seeded.model_dump(), **change})
                    result = Study(scenario, StrategyRun.FTTE, executor=pool).run()
                    results[name].append(
                        {
                            "seed": scenario.seed,
                            "time_to_target_s": result.time_to_target_s,
                            "final": result.final_accuracy,
                        }
                    )
                    progress.advance(bar)
            finally:
                pool.close()
    table = Table(title=f"FTTE weighting ablation on {base.name} ({args.seeds} seeds)")
    for col in ("variant", "time to target (s) mean", "reached", "final acc mean", "final acc sd"):
        table.add_column(col)
    summary = {}
    for name, rows in results.items():
        times = [r["time_to_target_s"] for r in rows if r["time_to_target_s"] is not None]
        finals = [r["final"] for r in rows]
        summary[name] = {
            "time_to_target_mean_s": statistics.mean(times) if times else None,
            "reached": f"{len(times)}/{len(rows)}",
            "final_accuracy_mean": statistics.mean(finals),
            "final_accuracy_sd": statistics.pstdev(finals),
            "runs": rows,
        }
        s = summary[name]
        table.add_row(
            name,
            "-" if s["time_to_target_mean_s"] is None else f"{s['time_to_target_mean_s']:.0f}",
            s["reached"],
            f"{s['final_accuracy_mean']:.4f}",
            f"{s['final_accuracy_sd']:.4f}",
        )
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"scenario": base.model_dump(mode="json"), "variants": summary}, indent=2)
    )


if __name__ == "__main__":
    main()
