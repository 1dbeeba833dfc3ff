"""``fedward simulate``: one strategy on a simulated clinical sensor study.

What to run: a study file (``fedward simulate STUDY.yaml``), your own data with
small defaults (``--data FILE``), or a preset / scenario file (``--scenario``).
Each run writes to a folder of its own (``runs/simulate/<study>-<strategy>-<time>``
unless ``--out`` names one): ``metrics.json``, ``accuracy.png``, the final model
(``final-model.npz``, usable as a study file's ``warm_start.file``), for a DP
study the privacy ledger ``fedward budget report`` reads, and ``report.html``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import numpy as np
import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from fedward.errors import CliError, FedwardError
from fedward.simulation.executor import ExecutorKind, make_executor
from fedward.simulation.report import plot_accuracy
from fedward.simulation.runs import new_run_dir, write_run_files
from fedward.simulation.scenario import Scenario, StrategyRun, load_scenario
from fedward.simulation.study import Study
from fedward.simulation.studyfile import StudyFileError, data_study, explain, load_study_file

from ..progress import make_progress, tracker

T = TypeVar("T")


def resolve_study(
    study: Path | None, data: Path | None, scenario: str | None, strategy: StrategyRun | None
) -> tuple[Scenario, StrategyRun]:
    """The scenario and strategy row a command runs (raises FedwardError on bad input)."""
    given = [x for x in (study, data, scenario) if x is not None]
    if len(given) > 1:
        raise UsageError("give one of STUDY.yaml, --data FILE or --scenario NAME")
    if study is not None:
        sc, run = load_study_file(study)
    elif data is not None:
        sc, run = data_study(data).scenario(base=Path.cwd())
    else:
        name = scenario or "quick"
        try:
            sc, run = load_scenario(name), StrategyRun.FTTE
        except ValidationError as exc:  # a scenario file's typo: file, key and message
            raise StudyFileError(
                explain(exc, path=Path(name), root=None, schema=Scenario)
            ) from None
    return sc, strategy or run


class UsageError(CliError, ValueError):
    """Options that do not go together."""


RayAddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to join with --executor ray (ray.init(address=...); "
        "RAY_ADDRESS is read too)."
    ),
]


def or_exit(console: Console, load: Callable[[], T]) -> T:
    """``load()``, or end the command plainly (exit 2) on a bad study, data or scenario file."""
    try:
        return load()
    except (FedwardError, ValidationError, OSError, ValueError, yaml.YAMLError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


def command(
    study: Annotated[
        Path | None,
        typer.Argument(help="A study file (YAML); see docs/study-file.md and examples/."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Your own .npz or CSV: FTTE with small defaults, one device per patient."
        ),
    ] = None,
    scenario: Annotated[
        str | None,
        typer.Option(help="Preset (tiny, quick, full) or a JSON/YAML scenario file."),
    ] = None,
    strategy: Annotated[
        StrategyRun | None, typer.Option(help="Strategy row (default: the study's, or ftte).")
    ] = None,
    devices: Annotated[
        int | None, typer.Option(min=2, help="Override the number of devices (synthetic data).")
    ] = None,
    updates: Annotated[int | None, typer.Option(min=1, help="Override the update budget.")] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="Override the seed (fleet, data split, model, timing)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder (default: a new runs/simulate/<study>-<strategy>-<time>)."
        ),
    ] = None,
    executor: Annotated[
        ExecutorKind, typer.Option(help="Where device training runs.")
    ] = ExecutorKind.PROCESS,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: CPU count).")
    ] = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Run a simulated study in virtual time; write metrics, plots and a report."""
    console = Console()
    started = time.perf_counter()
    sc, run = or_exit(console, lambda: resolve_study(study, data, scenario, strategy))
    overrides = {
        k: v
        for k, v in {"devices": devices, "update_budget": updates, "seed": seed}.items()
        if v is not None
    }
    if devices is not None and sc.data is not None:
        console.print("[red]error:[/] --devices: a data file has one device per patient")
        raise typer.Exit(2)
    if overrides:
        base = sc
        sc = or_exit(console, lambda: Scenario.model_validate({**base.model_dump(), **overrides}))
    spec = sc.study_spec(run)
    folder = out or new_run_dir(Path("runs/simulate"), f"{sc.name}-{run.slug}")
    pool = or_exit(
        console,
        lambda: make_executor(
            executor,
            sc.data_config(),
            spec.model_settings(),
            workers=workers,
            ray_address=ray_address,
        ),
    )
    try:
        with make_progress() as progress:
            bar = tracker(progress)(run.value, sc.update_budget)
            try:
                sim = Study(sc, run, executor=pool, progress=bar)
            except FedwardError as exc:
                console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
                raise typer.Exit(2) from None
            result = sim.run()
            bar(result.updates, max(result.updates, sc.update_budget), result.final_accuracy)
    finally:
        pool.close()
    folder.mkdir(parents=True, exist_ok=True)
    ledger = sim.save_privacy_ledger(folder)
    np.savez(folder / "final-model.npz", allow_pickle=False, **sim.engine.params)
    metrics = {
        "kind": "simulation",
        "study": sim.spec.name,
        "scenario": sc.model_dump(mode="json"),
        "spec": spec.model_dump(mode="json"),
        "result": result.as_dict(),
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    png = plot_accuracy(
        {run.value: result.series},
        folder / "accuracy.png",
        title=sc.name,
        target=sc.target_accuracy,
    )
    report = write_run_files(folder)
    ttt = (
        "not reached"
        if result.time_to_target_s is None
        else f"{result.time_to_target_s:,.0f} virtual s"
    )
    console.print(
        f"[bold]{run.value}[/] on {sc.name}: final accuracy {result.final_accuracy:.4f} "
        f"(mean of the last {sc.final_tail:.0%} of updates), time to {sc.target_accuracy:g}: "
        f"{ttt}, {result.updates} updates accepted (budget {sc.update_budget}), "
        f"{result.upload_bytes_per_update:,.0f} B/update; wall {time.perf_counter() - started:.1f} s "
        f"(setup {result.setup_s:.1f} s, simulation {result.wall_s:.1f} s)",
        highlight=False,
    )
    console.print(f"wrote {folder}/: metrics.json, {png.name}, final-model.npz, {report.name}")
    if ledger is not None:
        console.print(
            f"privacy ledger: {ledger.name}; read it with: fedward budget report "
            f"--study {sim.spec.name} --data-dir {folder}",
            highlight=False,
        )
