"""``fedward study``: check a study file, or turn it into a running coordinator's study.

``fedward study check STUDY.yaml`` validates the file (and its data) and says
what it describes; ``fedward study spec STUDY.yaml`` prints the body of
``POST /v1/studies`` (``{"spec": ..., "study_id": ...}``) for the same study
that ``fedward simulate`` and ``fedward up --study`` run, e.g.::

    fedward study spec study.yaml > body.json
    curl -sS -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
         --data @body.json http://127.0.0.1:8000/v1/studies
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedward.coordinator.study_spec import StopRule
from fedward.simulation.scenario import StrategyRun
from fedward.simulation.studyfile import load_study_file

from .simulate import or_exit

app = typer.Typer(help="Study files: check one, or print its spec for a running coordinator.")


@app.command()
def check(
    study: Annotated[Path, typer.Argument(help="A study file (YAML).")],
) -> None:
    """Validate STUDY.yaml and its data; print what it describes."""
    console = Console()
    sc, run = or_exit(console, lambda: load_study_file(study))
    data = "synthetic ECG rhythm task" if sc.data is None else f"{sc.data.path} ({sc.data.format})"
    console.print(
        f"{study}: study {sc.name!r}, strategy {run.value}, {sc.devices} devices, data {data}, "
        f"model {sc.model_kind} [{sc.in_channels} x {sc.window}] -> {sc.num_classes} classes, "
        f"target {sc.target_accuracy:g}, stop after {sc.update_budget} updates",
        highlight=False,
        markup=False,
    )


@app.command()
def spec(
    study: Annotated[Path, typer.Argument(help="A study file (YAML).")],
    study_id: Annotated[
        str | None, typer.Option(help="Study id to ask for (default: <name>-<random>).")
    ] = None,
    strategy: Annotated[
        StrategyRun | None, typer.Option(help="Strategy row (default: the study file's).")
    ] = None,
) -> None:
    """Print the POST /v1/studies body (JSON) for STUDY.yaml."""
    console = Console()
    sc, run = or_exit(console, lambda: load_study_file(study))
    # live, the study file's update budget is the coordinator's stop rule
    live = sc.study_spec(strategy or run).model_copy(
        update={"stop": StopRule(max_updates=sc.update_budget)}
    )
    body: dict[str, object] = {"spec": live.model_dump(mode="json")}
    if study_id is not None:
        body["study_id"] = study_id
    typer.echo(json.dumps(body, indent=2))
