"""``fedward budget report``: per-device privacy budgets of a study, from its persisted ledger.

Where the ledger is read from, in order:

1. ``<data-dir>/privacy-ledger-<study>.json`` (written by
   ``fedward.coordinator.privacy.ledger_store.save_guard_state``: simulator runs, offline
   copies handed to an auditor);
2. the coordinator's database (``--database-url``, default the SQLite file
   ``<data-dir>/coordinator.db``): the privacy guard's state inside the
   study's engine snapshot.

Either way the ledger's checksum is verified and every device's epsilon is
recomputed from its mechanism history before anything is printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fedward.compliance.reports import BudgetReport, plot_budget, write_report_json
from fedward.coordinator.privacy.ledger_store import (
    guard_state_from_snapshot,
    ledger_file,
    read_guard_state,
    report_from_guard_state,
    snapshot_device_classes,
)
from fedward.privacy.budget import PrivacyUnit

app = typer.Typer(help="Privacy budget audit.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Privacy budget audit (a group, so ``report`` stays a sub-command)."""


def _from_database(url: str, study: str) -> tuple[dict[str, Any], dict[str, str]]:
    from fedward.coordinator.store.db import create_db_engine
    from fedward.coordinator.store.repository import Repository

    repo = Repository(create_db_engine(url))
    try:
        row = repo.engine_state(study)
    finally:
        repo.close()
    if row is None:
        raise typer.BadParameter(f"no engine state for study {study!r} in {url}")
    state = guard_state_from_snapshot(row.state)
    if state is None:
        raise typer.BadParameter(f"study {study!r} has no privacy guard (not a DP study)")
    return state, snapshot_device_classes(row.state)


def load_report(study: str, *, data_dir: Path, database_url: str | None) -> BudgetReport:
    path = ledger_file(data_dir, study)
    if path.exists():
        return report_from_guard_state(read_guard_state(path), study_id=study)
    db_file = data_dir / "coordinator.db"
    url = database_url or (f"sqlite:///{db_file}" if db_file.exists() else None)
    if url is None:
        raise typer.BadParameter(f"neither {path} nor {db_file} exists (or pass --database-url)")
    state, classes = _from_database(url, study)
    return report_from_guard_state(state, study_id=study, device_classes=classes)


def print_report(report: BudgetReport, console: Console, *, max_rows: int) -> None:
    policy = report.policy
    protects = {
        PrivacyUnit.WINDOW: "one 10-s window of a patient's data (sample-level DP-SGD)",
        PrivacyUnit.PATIENT: "a patient: a device's whole contribution (client-level DP)",
    }[report.unit]
    console.print(
        f"[bold]{report.study_id}[/]: budget epsilon={policy.epsilon:g} at "
        f"delta={policy.delta:g} ({policy.accountant}), per device over the whole study"
    )
    console.print(f"each epsilon protects {protects}")
    classes = Table(title="per device class")
    for column in ("class", "devices", "with spend", "exhausted", "tasks", "eps mean", "eps max"):
        classes.add_column(column, justify="right" if column != "class" else "left")
    for c in report.classes:
        classes.add_row(
            c.device_class,
            str(c.devices),
            str(c.devices_with_spend),
            str(c.exhausted),
            str(c.tasks),
            f"{c.epsilon_mean:.3f}",
            f"{c.epsilon_max:.3f}",
        )
    console.print(classes)
    rows = sorted(report.devices, key=lambda r: (-r.epsilon_spent, r.device_id))[:max_rows]
    devices = Table(title=f"devices (top {len(rows)} by epsilon spent)")
    for column in ("device", "class", "epsilon", "remaining", "tasks", "exhausted"):
        devices.add_column(column, justify="left" if column in ("device", "class") else "right")
    for r in rows:
        devices.add_row(
            r.device_id,
            r.device_class,
            f"{r.epsilon_spent:.3f}",
            f"{r.epsilon_remaining:.3f}",
            str(r.tasks),
            "yes" if r.exhausted else "",
        )
    console.print(devices)


@app.command()
def report(
    study: Annotated[str, typer.Option(help="Study id.")],
    data_dir: Annotated[
        Path, typer.Option(help="Coordinator data directory (ledger file or coordinator.db).")
    ] = Path("fedward-data"),
    database_url: Annotated[
        str | None, typer.Option(help="Coordinator database URL (default: the data dir's).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON here.")
    ] = None,
    png_out: Annotated[
        Path | None, typer.Option("--png", help="Write epsilon over time per class here.")
    ] = None,
    max_rows: Annotated[int, typer.Option(min=1, help="Device rows to print.")] = 20,
) -> None:
    """Print per-device budgets; write JSON and a PNG of epsilon over time per class."""
    console = Console()
    result = load_report(study, data_dir=data_dir, database_url=database_url)
    print_report(result, console, max_rows=max_rows)
    json_path = json_out or data_dir / f"budget-report-{study}.json"
    png_path = png_out or data_dir / f"budget-report-{study}.png"
    write_report_json(result, json_path)
    plot_budget(result, png_path)
    console.print(f"wrote {json_path} and {png_path}")
