"""A simulated DP study: devices at their budget never train again; the audit report.

One tiny study (24 devices, a budget that buys two tasks each) runs once per
module; the tests read its engine events, guard events, result and ledger.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest
from typer.testing import CliRunner

from fedward.commands.budget import app as budget_app
from fedward.compliance.events import DENYLIST_KEYS, DENYLIST_WORDS, AuditAction, check_details
from fedward.compliance.reports import build_budget_report, plot_budget, write_report_json
from fedward.coordinator.audit import privacy_entry
from fedward.coordinator.engine import EventKind
from fedward.coordinator.privacy.ledger_store import (
    ledger_file,
    read_guard_state,
    report_from_guard_state,
)
from fedward.simulation.executor import ExecutorKind, make_executor
from fedward.simulation.scenario import PRESETS, StrategyRun
from fedward.simulation.study import Study

BUDGET = 4.5  # sigma 1.5, q 0.25, 8 steps per task: two tasks (3.22, 4.29), not three


@pytest.fixture(scope="module")
def simulated():
    scenario = PRESETS["tiny"].model_copy(update={"dp_epsilon": BUDGET, "update_budget": 200})
    spec = scenario.study_spec(StrategyRun.FTTE_DP)
    pool = make_executor(ExecutorKind.SERIAL, scenario.data_config(), spec.model_settings())
    engine_events, privacy_events = [], []
    try:
        study = Study(
            scenario,
            StrategyRun.FTTE_DP,
            executor=pool,
            listeners=(engine_events.append,),
            privacy_listeners=(privacy_events.append,),
        )
        result = study.run()
    finally:
        pool.close()
    return study, result, engine_events, privacy_events


def test_devices_at_their_budget_are_never_dispatched_again(simulated):
    # Prepare
    study, result, engine_events, _ = simulated
    exhausted_at: dict[str, float] = {}
    dispatches: dict[str, list[float]] = defaultdict(list)

    # Execute
    for event in engine_events:
        d = event.details
        if event.kind is EventKind.DEVICE_STATE and d["state"] == "exhausted":
            exhausted_at.setdefault(d["device_id"], event.at)
        elif event.kind is EventKind.TASK_DISPATCHED:
            dispatches[d["device_id"]].append(event.at)

    # Assert: the update budget (200) was out of reach, the study still ended
    assert result.updates < 200 and result.exhausted_devices == len(study.fleet) == 24
    assert set(exhausted_at) == {d.device_id for d in study.fleet}
    for device_id, at in exhausted_at.items():
        assert all(t <= at for t in dispatches[device_id]), device_id
        assert len(dispatches[device_id]) <= 2
    ledger = study.guard.ledger
    assert all(ledger.spent(d.device_id) <= BUDGET for d in study.fleet)
    assert result.privacy["epsilon_max"] <= BUDGET
    assert result.privacy["refused_tasks"] == 0  # the coordinator never asked too much


def test_every_spend_is_recorded_for_the_audit_log(simulated):
    # Prepare
    study, result, _, privacy_events = simulated
    spends = [e for e in privacy_events if privacy_entry(e).action is AuditAction.PRIVACY_SPENT]

    # Execute
    details = [
        check_details(privacy_entry(e).details) for e in privacy_events
    ]  # the log's own guard

    # Assert
    ledger = study.guard.ledger
    assert len(spends) == sum(len(ledger.records(d)) for d in ledger) >= result.updates
    assert len(details) == len(privacy_events)
    exhausted = [
        e for e in privacy_events if privacy_entry(e).action is AuditAction.BUDGET_EXHAUSTED
    ]
    assert len(exhausted) == 24
    for event in spends:
        assert {"noise_multiplier", "clip_norm", "sample_rate", "steps", "accountant"} <= set(
            privacy_entry(event).details
        )
        assert (
            privacy_entry(event).details["epsilon"]
            <= privacy_entry(event).details["epsilon_budget"]
            == BUDGET
        )


def test_budget_report_json_and_png_are_written_without_health_data(simulated, tmp_path):
    # Prepare
    study, _, _, _ = simulated
    classes = {d.device_id: d.profile.device_class.value for d in study.fleet}

    # Execute
    report = build_budget_report(
        study.guard.ledger,
        study_id=study.spec.name,
        device_classes=classes,
        next_step=study.guard.task_step,
    )
    json_path = write_report_json(report, tmp_path / "budget.json")
    png_path = plot_budget(report, tmp_path / "budget.png")

    # Assert
    data = json.loads(json_path.read_text())
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 5000
    assert len(data["devices"]) == 24 and all(row["exhausted"] for row in data["devices"])
    assert {c["device_class"] for c in data["classes"]} == set(classes.values())
    assert all(row["epsilon_spent"] <= BUDGET for row in data["devices"])
    for name, points in data["epsilon_over_time"].items():
        means = [p["epsilon_mean"] for p in points]
        assert means == sorted(means) and points, name  # cumulative: never decreases
    for key in _keys(data):
        words = {w.rstrip("0123456789") for w in key.split("_")}
        assert key not in DENYLIST_KEYS and not words & DENYLIST_WORDS, key
    text = json_path.read_text()
    assert not re.search(r"num_samples|loss|accuracy|delta_sha|tensor", text)


def test_cli_reports_from_the_persisted_ledger_file(simulated, tmp_path):
    # Prepare
    study, _, _, _ = simulated
    path = study.save_privacy_ledger(tmp_path)
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"

    # Execute
    run = CliRunner().invoke(
        budget_app,
        [
            "report",
            "--study",
            study.spec.name,
            "--data-dir",
            str(tmp_path),
            "--json",
            str(out_json),
            "--png",
            str(out_png),
        ],
    )

    # Assert
    assert run.exit_code == 0, run.output
    assert path == ledger_file(tmp_path, study.spec.name)
    assert "wearable" in run.output and "exhausted" in run.output
    report = json.loads(out_json.read_text())
    restored = report_from_guard_state(read_guard_state(path), study_id=study.spec.name)
    assert report == json.loads(restored.model_dump_json())
    assert out_png.exists()


def _keys(value):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)
