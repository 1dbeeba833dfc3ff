"""``fedward bench``: FedAvg, FedBuff and FTTE side by side on one scenario."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown

from fedward.bench.seeds import load_reports, summarise
from fedward.bench.seeds import markdown as seeds_markdown
from fedward.simulation.bench import (
    DEFAULT_RUNS,
    QUICK_RUNS,
    ratios,
    run_benchmark,
    verdict_table,
)
from fedward.simulation.executor import ExecutorKind
from fedward.simulation.report import levels_table, markdown_table, plot_accuracy
from fedward.simulation.scenario import PRESETS, Scenario, StrategyRun, load_scenario

from ..progress import make_progress, tracker
from .simulate import RayAddressOption


def command(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="The small scenario (100 devices, five rows; minutes on 2 cores)."
        ),
    ] = False,
    scenario: Annotated[
        str | None, typer.Option(help="Preset or scenario file (overrides --quick).")
    ] = None,
    json_path: Annotated[
        Path, typer.Option("--json", help="Where to write the JSON report.")
    ] = Path("runs/bench/bench.json"),
    runs: Annotated[
        list[StrategyRun] | None, typer.Option("--run", help="Rows to run (repeat).")
    ] = None,
    executor: Annotated[
        ExecutorKind, typer.Option(help="Where device training runs.")
    ] = ExecutorKind.PROCESS,
    workers: Annotated[int | None, typer.Option(min=1)] = None,
    ray_address: RayAddressOption = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="Override the scenario's seed (fleet, data split, model)."),
    ] = None,
    seeds: Annotated[
        int,
        typer.Option(
            min=1, help="Run N seeds (from --seed or the scenario's) and report medians and ranges."
        ),
    ] = 1,
) -> None:
    """Run the benchmark; write JSON, a markdown table and a PNG beside it."""
    sc = load_scenario(scenario) if scenario else PRESETS["quick" if quick else "full"]
    if seed is not None:
        sc = type(sc).model_validate({**sc.model_dump(), "seed": seed})
    rows = tuple(runs or (QUICK_RUNS if quick and not scenario else DEFAULT_RUNS))
    if seeds == 1:
        _one(sc, json_path, rows=rows, executor=executor, workers=workers, ray_address=ray_address)
        return
    paths = []
    for offset in range(seeds):
        seeded = type(sc).model_validate({**sc.model_dump(), "seed": sc.seed + offset})
        paths.append(json_path.with_name(f"{json_path.stem}-s{seeded.seed}.json"))
        _one(
            seeded,
            paths[-1],
            rows=rows,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
        )
    summary = summarise(load_reports(paths))
    text = seeds_markdown(summary)
    json_path.write_text(
        json.dumps({"reports": [str(p) for p in paths], "summary": summary}, indent=2)
    )
    json_path.with_suffix(".md").write_text(text)
    Console().print(Markdown(text))
    Console().print(f"wrote {json_path} and {json_path.with_suffix('.md')} ({seeds} seeds)")


def _one(
    sc: Scenario,
    json_path: Path,
    *,
    rows: tuple[StrategyRun, ...],
    executor: ExecutorKind,
    workers: int | None,
    ray_address: str | None = None,
) -> None:
    console = Console()
    json_path.parent.mkdir(parents=True, exist_ok=True)  # DP rows write their ledger there
    with make_progress() as progress:
        report = run_benchmark(
            sc,
            runs=rows,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            progress=tracker(progress),
            ledger_dir=json_path.parent,
        )
    if "ftte" in report["strategies"] and "fedavg" in report["strategies"]:
        report["ratios_ftte_vs_fedavg"] = ratios(report)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    table = (
        verdict_table(report)
        + "\n"
        + markdown_table(report)
        + "\nVirtual seconds to each accuracy level:\n\n"
        + levels_table(report)
    )
    json_path.with_suffix(".md").write_text(table)
    png = plot_accuracy(
        {k: v["series"] for k, v in report["strategies"].items()},
        json_path.with_suffix(".png"),
        title=f"{sc.name}: accuracy vs virtual time",
        target=sc.target_accuracy,
    )
    console.print(Markdown(table))
    if "ratios_ftte_vs_fedavg" in report:
        console.print(f"FTTE / FedAvg: {report['ratios_ftte_vs_fedavg']}")
    console.print(
        f"wrote {json_path}, {json_path.with_suffix('.md')}, {png} (total {report['total_wall_s']:.0f} s)"
    )
    for name, row in report["strategies"].items():
        if "privacy_ledger" in row:
            ledger = row["privacy_ledger"]
            console.print(
                f"{name}: privacy ledger {ledger['file']}; fedward budget report --study "
                f"{ledger['study']} --data-dir {json_path.parent}",
                highlight=False,
                markup=False,
            )
