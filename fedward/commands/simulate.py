"""``fedward simulate``: one strategy on a simulated clinical sensor study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedward.simulation.executor import ExecutorKind, make_executor
from fedward.simulation.report import plot_accuracy
from fedward.simulation.scenario import StrategyRun, load_scenario
from fedward.simulation.study import Study

from ..progress import make_progress, tracker


def command(
    scenario: Annotated[
        str, typer.Option(help="Preset (tiny, quick, full) or a JSON/YAML scenario file.")
    ] = "quick",
    strategy: Annotated[StrategyRun, typer.Option(help="Strategy row to run.")] = StrategyRun.FTTE,
    devices: Annotated[
        int | None, typer.Option(min=2, help="Override the number of devices.")
    ] = None,
    updates: Annotated[int | None, typer.Option(min=1, help="Override the update budget.")] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="Override the seed (fleet, data split, model, timing)."),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Output folder for metrics.json and accuracy.png.")
    ] = Path("runs/simulate"),
    executor: Annotated[
        ExecutorKind, typer.Option(help="Where device training runs.")
    ] = ExecutorKind.PROCESS,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: CPU count).")
    ] = None,
) -> None:
    """Run a simulated study in virtual time and write metrics and a plot."""
    console = Console()
    sc = load_scenario(scenario)
    overrides = {
        k: v
        for k, v in {"devices": devices, "update_budget": updates, "seed": seed}.items()
        if v is not None
    }
    if overrides:
        sc = sc.model_copy(update=overrides)
        sc = type(sc).model_validate(sc.model_dump())
    spec = sc.study_spec(strategy)
    pool = make_executor(executor, sc.data_config(), spec.model_settings(), workers=workers)
    try:
        with make_progress() as progress:
            study = Study(
                sc,
                strategy,
                executor=pool,
                progress=tracker(progress)(strategy.value, sc.update_budget),
            )
            result = study.run()
    finally:
        pool.close()
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"scenario": sc.model_dump(mode="json"), "result": result.as_dict()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    png = plot_accuracy(
        {strategy.value: result.series},
        out / "accuracy.png",
        title=sc.name,
        target=sc.target_accuracy,
    )
    ttt = "not reached" if result.time_to_target_s is None else f"{result.time_to_target_s:,.0f} s"
    console.print(
        f"[bold]{strategy.value}[/] on {sc.name}: final accuracy {result.final_accuracy:.4f}, "
        f"time to {sc.target_accuracy:.2f}: {ttt}, {result.updates} updates, "
        f"{result.upload_bytes_per_update:,.0f} B/update, wall {result.wall_s:.1f} s"
    )
    console.print(f"wrote {out / 'metrics.json'} and {png}")
