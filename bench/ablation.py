"""Ablation of FTTE's merge weights: does each term earn its place?

Runs the FTTE row with its age term (``a``), its energy term (``beta``),
both, and neither, on two fleets built from the same scenario and seeds:

- ``clean``: every device's annotations are right;
- ``mislabelled``: a fraction of devices (``--mislabelled``, default 10%)
  carry systematically wrong labels (``Scenario.mislabelled_fraction``), the
  divergent devices the energy term is there for.

It reports time to target and final accuracy (mean and spread over seeds) side
by side, as a table and JSON, and plots accuracy against virtual time for the
first seed, one PNG per fleet beside the JSON::

    python -m fedward.bench.ablation [--scenario quick] [--seeds 3] [--mislabelled 0.1]
                             [--json runs/ablation/ablation.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from fedward.simulation.executor import ExecutorKind, make_executor
from fedward.simulation.report import plot_accuracy
from fedward.simulation.scenario import Scenario, StrategyRun, load_scenario
from fedward.simulation.study import Study

VARIANTS: dict[str, dict[str, Any]] = {
    "ftte (age + energy)": {},
    "no energy term (beta=0)": {"energy_beta": 0.0},
    "no age term (a=0)": {"staleness_exponent": 0.0},
    "neither (sample-weighted mean)": {"energy_beta": 0.0, "staleness_exponent": 0.0},
    "former energy rule (damp beyond 10x median)": {"energy_rule": "damp", "energy_quantile": 0.5},
    "clip rule (tried in issue 14, not kept)": {"energy_rule": "clip"},
    "undamped normaliser (issue 14)": {"energy_normaliser": "undamped"},
}
Row = dict[str, float | int | None]


def fleets(base: Scenario, *, mislabelled: float) -> dict[str, Scenario]:
    return {
        "clean": base,
        "mislabelled": Scenario.model_validate(
            {**base.model_dump(), "mislabelled_fraction": mislabelled}
        ),
    }


def summarise(rows: list[Row]) -> dict[str, object]:
    times = [r["time_to_target_s"] for r in rows if r["time_to_target_s"] is not None]
    finals = [float(r["final"]) for r in rows if r["final"] is not None]
    return {
        "time_to_target_mean_s": statistics.mean(times) if times else None,
        "reached": f"{len(times)}/{len(rows)}",
        "final_accuracy_mean": statistics.mean(finals),
        "final_accuracy_sd": statistics.pstdev(finals),
        "runs": rows,
    }


Series = list[dict[str, float]]


def run(
    base: Scenario, *, seeds: int, mislabelled: float
) -> tuple[dict[str, dict[str, dict]], dict[str, dict[str, Series]]]:
    """fleet -> variant -> summary over seeds; and the first seed's accuracy series."""
    results: dict[str, dict[str, list[Row]]] = {
        fleet: {name: [] for name in VARIANTS} for fleet in ("clean", "mislabelled")
    }
    first_series: dict[str, dict[str, Series]] = {fleet: {} for fleet in results}
    with Progress() as progress:
        bar = progress.add_task("ablation", total=seeds * len(VARIANTS) * 2)
        for offset in range(seeds):
            seeded = Scenario.model_validate({**base.model_dump(), "seed": base.seed + offset})
            for fleet, scenario in fleets(seeded, mislabelled=mislabelled).items():
                spec = scenario.study_spec(StrategyRun.FTTE)
                pool = make_executor(
                    ExecutorKind.PROCESS, scenario.data_config(), spec.model_settings()
                )
                try:
                    for name, change in VARIANTS.items():
                        variant = Scenario.model_validate({**scenario.model_dump(), **change})
                        result = Study(variant, StrategyRun.FTTE, executor=pool).run()
                        results[fleet][name].append(
                            {
                                "seed": variant.seed,
                                "time_to_target_s": result.time_to_target_s,
                                "final": result.final_accuracy,
                            }
                        )
                        if offset == 0:
                            first_series[fleet][name] = result.series
                        progress.advance(bar)
                finally:
                    pool.close()
    summary = {
        fleet: {name: summarise(rows) for name, rows in by_variant.items()}
        for fleet, by_variant in results.items()
    }
    return summary, first_series


def table(summary: dict[str, dict[str, dict]], *, title: str) -> Table:
    out = Table(title=title)
    out.add_column("variant")
    for fleet in summary:
        for col in ("time to target (s)", "reached", "final acc", "sd"):
            out.add_column(f"{fleet}: {col}")
    for name in VARIANTS:
        cells = [name]
        for fleet in summary:
            s = summary[fleet][name]
            t = s["time_to_target_mean_s"]
            cells += [
                "-" if t is None else f"{t:.0f}",
                str(s["reached"]),
                f"{s['final_accuracy_mean']:.4f}",
                f"{s['final_accuracy_sd']:.4f}",
            ]
        out.add_row(*cells)
    return out


def markdown(summary: dict[str, dict[str, dict]]) -> str:
    fleets_ = list(summary)
    head = "| variant | " + " | ".join(
        f"{f}: time to target (s) | {f}: final acc (sd)" for f in fleets_
    )
    lines = [head + " |", "|---|" + "---:|---:|" * len(fleets_)]
    for name in VARIANTS:
        cells = []
        for fleet in fleets_:
            s = summary[fleet][name]
            t = s["time_to_target_mean_s"]
            cells.append(f"{'-' if t is None else format(t, '.0f')} ({s['reached']})")
            cells.append(f"{s['final_accuracy_mean']:.4f} ({s['final_accuracy_sd']:.4f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", default="quick")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mislabelled", type=float, default=0.1)
    parser.add_argument("--json", type=Path, default=Path("runs/ablation/ablation.json"))
    args = parser.parse_args()
    if args.seeds < 1 or not 0 < args.mislabelled <= 1:
        parser.error("--seeds must be >= 1 and --mislabelled in (0, 1]")
    base = load_scenario(args.scenario)
    summary, series = run(base, seeds=args.seeds, mislabelled=args.mislabelled)
    Console().print(
        table(
            summary,
            title=f"FTTE weighting ablation on {base.name} ({args.seeds} seeds, "
            f"{args.mislabelled:.0%} mislabelled devices in the second fleet)",
        )
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for fleet, by_variant in series.items():
        plot_accuracy(
            by_variant,
            args.json.with_name(f"{args.json.stem}-{fleet}.png"),
            title=f"FTTE weighting on {base.name}, {fleet} fleet (seed {base.seed})",
            target=base.target_accuracy,
        )
    args.json.with_suffix(".md").write_text(markdown(summary))
    args.json.write_text(
        json.dumps(
            {
                "scenario": base.model_dump(mode="json"),
                "mislabelled_fraction": args.mislabelled,
                "fleets": summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
