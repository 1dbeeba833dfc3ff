"""``fedward.bench.ingest`` end to end on a small load: the coordinator must accept its updates.

The benchmark builds update frames itself (no training); this keeps them honest
(e.g. a header's ``update_energy`` must match the tensors, or every update
would be rejected and the throughput figure would measure refusals).
"""

from __future__ import annotations

import pytest

from fedward.bench.ingest import IngestConfig, run_ingest
from fedward.live import parse_broker_url
from fedward.protocol.mqtt_settings import MqttProtocol

pytestmark = pytest.mark.mqtt


def test_ingest_bench_updates_are_accepted_and_merged(mqtt_broker) -> None:
    # Prepare
    config = IngestConfig(
        broker=parse_broker_url(
            f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}", protocol=MqttProtocol.MQTT5
        ),
        devices=2,
        updates=12,
        warmup=4,
        width=8,
        buffer_size=4,
        timeout_s=120,
    )
    # Execute
    row = run_ingest(config, database_url=None, label="sqlite")
    # Assert
    assert row["updates"] >= 12
    assert row["rejections"] == {} and row["bridge_rejected"] == {}
    assert row["merges"] >= 3
