"""A secure-aggregation study live over the real Mosquitto with the real edge agents
(``fedward.live.LiveStudy``, what ``fedward up --secagg`` runs): every merge is a fill."""

from __future__ import annotations

import pytest

from fedward.live import BrokerAddress, LiveOptions, LiveStudy
from fedward.protocol.mqtt_settings import MqttProtocol
from fedward.simulation.scenario import PRESETS, StrategyRun

# 8 devices, buffer 3: cohorts of 4 (threshold 3), two fills in flight
SCENARIO = PRESETS["tiny"].model_copy(
    update={
        "devices": 8,
        "buffer_size": 3,
        "concurrency": 8,
        "secagg_expected_dropout": 0.25,
        "secagg_phase_timeout_s": 30.0,
        "secagg_fills_in_flight": 2,
    }
)


@pytest.mark.timeout(600)
def test_a_secagg_study_runs_live_with_the_edge_agents_to_two_merges(tmp_path, mqtt_broker):
    # Prepare
    options = LiveOptions(
        scenario=SCENARIO,
        run=StrategyRun.FTTE_SECAGG,
        broker=BrokerAddress(mqtt_broker[0], mqtt_broker[1], MqttProtocol.MQTT5),
        data_dir=tmp_path,
        update_budget=None,
        task_deadline_s=120.0,
    )
    # Execute
    with LiveStudy(options) as study:
        assert study.spec.secagg_on
        # every device checks its peers' keys against the coordinator's signed audit log
        assert all(a.peer_evidence is not None for a in study.agents)
        study.wait(updates=6, timeout_s=300)
        result = study.result()
        assert study.service is not None and study.bridge is not None
        secagg = study.service.secagg_stats(study.study_id)
        bridge = dict(study.bridge.stats.received)
        sent = sum(
            (a.stats.secagg_sent for a in study.agents),
            start=type(study.agents[0].stats.secagg_sent)(),
        )
    # Assert: merges came from fills only, no device sent its update in the clear
    assert result.merges >= 2 and secagg["fills"]["merged"] >= 2
    assert bridge.get("update", 0) == 0 and bridge.get("secagg", 0) > 0
    assert sent["masked_input"] >= 6 and sent["unmask_response"] >= 6
    assert result.secagg["fills"]["merged"] == secagg["fills"]["merged"]


def test_fedward_up_secagg_runs_fills_over_the_real_broker(tmp_path, mqtt_broker):
    # Prepare
    import json

    from typer.testing import CliRunner

    from fedward.cli import app

    scenario = tmp_path / "scenario.json"
    scenario.write_text(SCENARIO.model_dump_json())
    # Execute
    result = CliRunner().invoke(
        app,
        [
            "up",
            "--secagg",
            "--devices",
            "8",
            "--scenario",
            str(scenario),
            "--updates",
            "6",
            "--broker",
            f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}",
            "--data-dir",
            str(tmp_path / "run"),
        ],
    )
    # Assert
    assert result.exit_code == 0, result.output
    assert "ftte+secagg" in result.output and "secure aggregation:" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["result"]["run"] == "ftte+secagg"
    assert metrics["result"]["secagg"]["fills"]["merged"] >= 2
    assert metrics["result"]["merges"] >= 2


def test_a_distributed_dp_secagg_study_runs_live_with_skellam_shares(tmp_path, mqtt_broker):
    # Prepare: the ftte+secagg+ddp row: devices add Skellam shares under the masks
    options = LiveOptions(
        scenario=SCENARIO,
        run=StrategyRun.FTTE_SECAGG_DDP,
        broker=BrokerAddress(mqtt_broker[0], mqtt_broker[1], MqttProtocol.MQTT5),
        data_dir=tmp_path,
        task_deadline_s=120.0,
    )
    # Execute
    with LiveStudy(options) as study:
        policy = study.spec.secagg_policy()
        study.wait(updates=6, timeout_s=300)
        result = study.result()
    # Assert: the engine ran DDP fills (no histogram: every weight is 1) and merged them
    assert policy.ddp is not None and policy.ddp.min_survivors == policy.threshold - 1
    assert policy.count_words == 1
    assert result.merges >= 2 and result.secagg["fills"]["merged"] >= 2
    # and every fill membership was charged to the patient's ledger, within the budget
    assert result.privacy["unit"] == "patient"
    assert result.privacy["epsilon_budget"] == SCENARIO.dp_epsilon
    assert result.epsilon_series and all(
        0 < p["epsilon"] <= SCENARIO.dp_epsilon for p in result.epsilon_series
    )
