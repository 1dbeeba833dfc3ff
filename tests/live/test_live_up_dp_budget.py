"""``fedward up --strategy ftte+dp`` makes progress, and ``budget report`` reads its folder.

The agents hold the study's budget as their own (without one an agent declines
every DP task, which is how this path once stalled at 0 updates), and the
folder ``up`` prints is the one ``audit verify`` and ``budget report`` take.
"""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from fedward.cli import app


def test_a_dp_live_study_progresses_and_its_budget_report_reads_the_printed_folder(tmp_path):
    # Prepare
    runner = CliRunner()
    # Execute
    up = runner.invoke(
        app,
        [
            "up",
            "--devices",
            "6",
            "--scenario",
            "tiny",
            "--strategy",
            "ftte+dp",
            "--updates",
            "8",
            "--data-dir",
            str(tmp_path),
            "--timeout",
            "300",
        ],
        env={"COLUMNS": "200"},
    )
    assert up.exit_code == 0, up.output
    study = re.search(r"study id:\s+(\S+)", up.output)
    assert study is not None, up.output
    budget = runner.invoke(
        app,
        ["budget", "report", "--study", study.group(1), "--data-dir", str(tmp_path)],
        env={"COLUMNS": "200"},
    )
    audit = runner.invoke(app, ["audit", "verify", "--data-dir", str(tmp_path)])
    report = runner.invoke(app, ["report", str(tmp_path)])
    # Assert
    assert "updates" in up.output and f"--data-dir {tmp_path}" in up.output
    assert budget.exit_code == 0, budget.output
    assert "epsilon" in budget.output.lower()
    assert audit.exit_code == 0, audit.output
    assert report.exit_code == 0, report.output
    live = json.loads((tmp_path / "report.json").read_text())["runs"][0]
    assert live["kind"] == "live" and live["series"], "up's metrics.json feeds the report"
    accepted = sum(c["accepted"] for c in live["by_class"].values())
    assert accepted >= 8  # every accepted update is some class's device's
    # the live run's staleness, training memory and epsilon plots have data
    contributing = [c for c in live["by_class"].values() if c["accepted"]]
    assert contributing and all(c["staleness_max"] is not None for c in contributing)
    assert all(c["staleness_max"] >= c["staleness_mean"] >= 0 for c in contributing)
    for c in live["by_class"].values():  # FTTE's global subset fits every class
        assert 0 < c["train_memory_bytes"] <= c["memory_budget_bytes"]
    assert live["privacy"]["unit"] == "window" and live["privacy"]["epsilon_budget"] > 0
    spent = live["epsilon_series"]
    assert spent and {e["class"] for e in spent} <= set(live["by_class"])
    assert max(e["epsilon"] for e in spent) <= live["privacy"]["epsilon_budget"]
    assert all(0 <= e["t"] <= 300 for e in spent)  # wall seconds since the study started
    html = (tmp_path / "report.html").read_text()
    for title in (
        "Staleness by device class",
        "Training memory by device class",
        "Privacy spent over elapsed time",
    ):
        assert f"<b>{title}</b>" in html
    assert html.count('<figure class="plot">') == 6
