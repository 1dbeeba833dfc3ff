"""``fedward edge run`` as a separate process joins a live study over Mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from live_helpers import TINY_SPEC, wait_until

from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.mqtt.security import WireSecurity
from fedward.coordinator.privacy.settings import StudyPrivacy
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.study_spec import StudySpec
from fedward.edge.dataset import save_dataset
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttProtocol, MqttSettings

pytestmark = pytest.mark.mqtt


DP_SPEC = TINY_SPEC.model_copy(
    update={
        "name": "live-dp",
        "privacy": StudyPrivacy(
            epsilon=8.0,
            delta=1e-5,
            noise_multiplier=1.5,
            max_grad_norm=1.0,
            sample_rate=0.25,
            steps_per_task=8,
            max_physical_batch_size=4,
        ),
    }
)


def _run_device(
    mqtt_broker, study_id: str, tmp_path, spec: StudySpec, extra: list[str], *, updates: int
) -> tuple[StudyService, int, str, str]:
    """A coordinator on Mosquitto, one ``fedward edge run`` process until ``updates``
    are accepted; returns the (closed) service's last state, exit code, output, device."""
    service = StudyService.open(
        CoordinatorSettings(
            database_url=f"sqlite:///{tmp_path / 'c.db'}",
            data_dir=tmp_path / "coordinator",
            operator_token="edge-cli-9f8e7d6c5b4a",
        ),
        seed=0,
    )
    service.create_study(spec, study_id=study_id)
    service.start(study_id)
    transport = MqttTransport(
        MqttSettings(host=mqtt_broker[0], port=mqtt_broker[1], client_id=f"coord.{study_id}")
    )
    bridge = StudyBridge(
        service,
        transport,
        study_id=study_id,
        dispatch_interval_s=0.2,
        security=WireSecurity.ephemeral(),
    )
    bridge.start()
    transport.connect()
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    save_dataset(data, rng.standard_normal((16, 3, spec.window)), rng.integers(0, 4, 16))
    device = f"dev-{study_id[-8:]}"
    secret_file = tmp_path / "secret"
    secret_file.write_text(service.issue_enrolment_secret(study_id, device))
    command = [os.path.join(os.path.dirname(sys.executable), "fedward"), "edge", "run"]
    args = [
        "--broker", f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}",
        "--protocol", MqttProtocol.MQTT5.value,
        "--study", study_id,
        "--device-id", device,
        "--data", str(data),
        "--memory-bytes", str(64 << 20),
        "--state-dir", str(tmp_path / "device"),
        "--window", str(spec.window),
        "--width", str(spec.width),
        "--heartbeat", "1",
        "--seed", "1",
        "--enrolment-secret-file", str(secret_file),
    ]  # fmt: skip
    process = subprocess.Popen(
        command + args + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_until(lambda: service.status(study_id).updates_accepted >= updates, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
        bridge.stop()
        transport.close()
    return service, process.returncode, output, device


def test_edge_run_enrols_trains_and_delivers(mqtt_broker, study_id, tmp_path):
    # Execute: a coordinator on Mosquitto, the device as a separate process
    service, code, output, _ = _run_device(
        mqtt_broker, study_id, tmp_path, TINY_SPEC, [], updates=3
    )
    try:
        accepted = service.status(study_id).updates_accepted
    finally:
        service.close()
    # Assert: it enrolled with its own key; an update whose Ack was still on its way
    # when the process stopped stays in the outbox for the next start
    assert accepted >= 3, output
    assert code == 0, output
    assert "enrolled" in output
    assert any(f"pending in outbox {n}" in output for n in (0, 1)), output
    assert (tmp_path / "device" / "device.key").stat().st_mode & 0o077 == 0


def test_edge_run_with_its_own_budget_trains_dp_tasks(mqtt_broker, study_id, tmp_path):
    # Execute: a DP study; the device brings its own budget (without one it declines)
    service, code, output, device = _run_device(
        mqtt_broker,
        study_id,
        tmp_path,
        DP_SPEC,
        ["--dp-epsilon", "20", "--dp-max-physical-batch", "4"],
        updates=2,
    )
    try:
        accepted = service.status(study_id).updates_accepted
        report = service.privacy_report(study_id)
    finally:
        service.close()
    # Assert: DP updates were accepted and the coordinator's ledger composed their spend
    assert accepted >= 2, output
    assert code == 0, output
    row = next(r for r in report.devices if r.device_id == device)
    assert row.tasks >= 2 and 0 < row.epsilon_spent <= DP_SPEC.privacy.epsilon
