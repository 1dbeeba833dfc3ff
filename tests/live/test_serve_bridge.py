"""``fedward coordinator serve``'s wiring: the REST API and the MQTT bridge in one process.

Against the real Mosquitto: a study created and started over REST (after the
bridges are up) gets its bridge from the supervisor, and an ``EdgeAgent`` over
MQTT enrols, gets a task and delivers an update; shutdown stops the bridges.
"""

from __future__ import annotations

import warnings

import pytest
from live_helpers import TINY_SPEC, make_agent, random_dataset, wait_until
from pydantic import SecretStr

from fedward.commands.coordinator import serving_bridges
from fedward.coordinator.api import create_app
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import BrokerSettings, CoordinatorSettings
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttSettings

with warnings.catch_warnings():  # starlette's note about httpx2; the client works as is
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.mqtt
TOKEN = "serve-bridge-9f8e7d6c5b4a"


def test_a_study_started_over_rest_is_bridged_and_an_agent_gets_a_task(
    mqtt_broker, study_id, tmp_path
) -> None:
    # Prepare: the serve wiring (one service behind both the API and the bridges)
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        data_dir=tmp_path / "coordinator",
        operator_token=TOKEN,
        mqtt=BrokerSettings(
            host=mqtt_broker[0], port=mqtt_broker[1], client_id=f"coord.{study_id}"[-64:]
        ),
    )
    service = StudyService.open(settings, seed=0)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    spec = TINY_SPEC.model_dump(mode="json")
    agent_transport = MqttTransport(
        MqttSettings(host=mqtt_broker[0], port=mqtt_broker[1], client_id=f"dev.{study_id}"[-64:])
    )
    agent = None
    try:
        with (
            TestClient(create_app(settings, service=service)) as client,
            serving_bridges(service, settings) as supervisor,
        ):
            assert supervisor.bridges == {}  # nothing runs yet
            # Execute: create and start over REST, then a device joins over MQTT
            created = client.post(
                "/v1/studies", json={"spec": spec, "study_id": study_id}, headers=auth
            )
            assert created.status_code == 201, created.text
            started = client.post(f"/v1/studies/{study_id}/start", headers=auth)
            assert started.status_code == 200, started.text
            assert wait_until(lambda: study_id in supervisor.bridges, timeout=10)
            # the operator issues the device's one-time enrolment secret over REST
            issued = client.post(
                f"/v1/studies/{study_id}/devices/dev-0/enrolment-secret", headers=auth
            )
            assert issued.status_code == 201, issued.text
            agent = make_agent(
                transport=agent_transport,
                study_id=study_id,
                device_id="dev-0",
                state_dir=tmp_path / "dev-0",
                spec=TINY_SPEC,
                dataset=random_dataset(TINY_SPEC, seed=0),
                seed=0,
                enrolment_secret=SecretStr(issued.json()["secret"]),
            )
            agent.start(wait_enrolled_s=30)
            # Assert
            assert wait_until(lambda: agent.stats.tasks_received >= 1, timeout=30)
            assert wait_until(lambda: service.status(study_id).updates_accepted >= 1, timeout=60)
            devices = client.get(f"/v1/studies/{study_id}/devices", headers=auth)
            assert [d["device_id"] for d in devices.json()] == ["dev-0"]
            bridge = supervisor.bridges[study_id]
        assert supervisor.bridges == {} and bridge._threads == []  # stopped on exit
    finally:
        if agent is not None:
            agent.stop()
        agent_transport.close()
        service.close()
