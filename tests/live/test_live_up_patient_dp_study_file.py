"""``fedward up --study`` runs a study file's patient-level DP live, and reports it.

The coordinator clips and noises the merges (client_dp) and charges each
patient per participation; ``metrics.json`` carries that ledger's epsilon per
class (unit ``patient``), so ``fedward report`` draws the privacy plot for the
live run, and ``budget report`` reads the printed folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from fedward.cli import app

STUDY = """
name: live-pdp
data: {min_windows: 8, max_windows: 12, test_patients: 4}
warm_start: {patients: 0}
model: {width: 4}
strategy: {name: client_dp, concurrency: 3, buffer_size: 3}
privacy: {mode: patient, epsilon: 6.0, noise_multiplier: 2.0, clip_norm: 0.5}
evaluation: {windows: 40}
stop: {updates: 9}
"""


def test_a_patient_dp_study_file_runs_live_and_reports_patient_epsilon(tmp_path: Path):
    # Prepare
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    data = tmp_path / "run"
    runner = CliRunner()
    # Execute
    up = runner.invoke(
        app,
        ["up", "--study", str(study), "--devices", "6", "--data-dir", str(data)]
        + ["--timeout", "300"],
        env={"COLUMNS": "200"},
    )
    assert up.exit_code == 0, up.output
    found = re.search(r"study id:\s+(\S+)", up.output)
    assert found is not None, up.output
    budget = runner.invoke(
        app,
        ["budget", "report", "--study", found.group(1), "--data-dir", str(data)],
        env={"COLUMNS": "200"},
    )
    report = runner.invoke(app, ["report", str(data)])
    # Assert
    assert budget.exit_code == 0, budget.output
    assert "patient" in budget.output.lower()
    assert report.exit_code == 0, report.output
    live = json.loads((data / "report.json").read_text())["runs"][0]
    assert live["label"] == "client_dp" and live["privacy"]["unit"] == "patient"
    assert live["privacy"]["epsilon_budget"] == 6.0
    spent = [e["epsilon"] for e in live["epsilon_series"]]
    assert spent and 0 < max(spent) <= 6.0
    assert (data / "report.html").read_text().count('<figure class="plot">') == 6
