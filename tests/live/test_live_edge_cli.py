"""``fedward edge run`` as a separate process joins a live study over Mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from live_helpers import TINY_SPEC, wait_until

from coordinator.bridge import StudyBridge
from coordinator.service import StudyService
from coordinator.settings import CoordinatorSettings
from edge.dataset import save_dataset
from protocol.mqtt import MqttTransport
from protocol.mqtt_settings import MqttProtocol, MqttSettings

pytestmark = pytest.mark.mqtt


def test_edge_run_enrols_trains_and_delivers(mqtt_broker, study_id, tmp_path):
    # Prepare: a coordinator on Mosquitto and a device dataset on disk
    service = StudyService.open(
        CoordinatorSettings(
            database_url=f"sqlite:///{tmp_path / 'c.db'}",
            data_dir=tmp_path / "coordinator",
            operator_token="edge-cli-9f8e7d6c5b4a",
        ),
        seed=0,
    )
    service.create_study(TINY_SPEC, study_id=study_id)
    service.start(study_id)
    transport = MqttTransport(
        MqttSettings(host=mqtt_broker[0], port=mqtt_broker[1], client_id=f"coord.{study_id}")
    )
    bridge = StudyBridge(service, transport, study_id=study_id, dispatch_interval_s=0.2)
    bridge.start()
    transport.connect()
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    save_dataset(data, rng.standard_normal((16, 3, TINY_SPEC.window)), rng.integers(0, 4, 16))
    device = f"dev-{study_id[-8:]}"
    command = [os.path.join(os.path.dirname(sys.executable), "fedward"), "edge", "run"]
    args = [
        "--broker", f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}",
        "--protocol", MqttProtocol.MQTT5.value,
        "--study", study_id,
        "--device-id", device,
        "--data", str(data),
        "--memory-bytes", str(64 << 20),
        "--state-dir", str(tmp_path / "device"),
        "--window", str(TINY_SPEC.window),
        "--width", str(TINY_SPEC.width),
        "--heartbeat", "1",
        "--seed", "1",
    ]  # fmt: skip
    # Execute
    process = subprocess.Popen(command + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: service.status(study_id).updates_accepted >= 3, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
        bridge.stop()
        transport.close()
        service.close()
    # Assert: it enrolled with its own key; an update whose Ack was still on its way
    # when the process stopped stays in the outbox for the next start
    assert process.returncode == 0, output
    assert "enrolled" in output
    assert any(f"pending in outbox {n}" in output for n in (0, 1)), output
    assert (tmp_path / "device" / "device.key").stat().st_mode & 0o077 == 0
