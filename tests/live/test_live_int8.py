"""An int8 study over the real Mosquitto: agents send what the tasks ask for (marked ``mqtt``).

The coordinator refuses a float32 delta in an int8 study (``tests/wire/test_wire_int8.py``),
so a study that merges with no rejection proves the agents sent int8 frames.
"""

from __future__ import annotations

import pytest

from fedward.live import BrokerAddress, LiveOptions, LiveStudy
from fedward.protocol.messages import UpdateEncoding
from fedward.protocol.mqtt_settings import MqttProtocol
from fedward.simulation.scenario import PRESETS, StrategyRun

pytestmark = pytest.mark.mqtt

SCENARIO = PRESETS["tiny"].model_copy(
    update={
        "name": "live-int8",
        "devices": 8,
        "update_budget": 40,
        "update_encoding": UpdateEncoding.INT8,
    }
)


def test_an_int8_study_runs_live_with_no_rejection(mqtt_broker, study_id, tmp_path):
    # Prepare
    options = LiveOptions(
        scenario=SCENARIO,
        run=StrategyRun.FEDBUFF,
        broker=BrokerAddress(*mqtt_broker, MqttProtocol.MQTT5),
        data_dir=tmp_path,
        study_id=study_id,
    )
    # Execute
    with LiveStudy(options) as study:
        study.wait(updates=SCENARIO.update_budget, timeout_s=120)
        result = study.result()
    # Assert
    assert result.updates >= SCENARIO.update_budget
    assert result.merges >= 1
    assert result.bridge_rejected == {} and result.rejections == {}
