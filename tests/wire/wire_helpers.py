"""Helpers of the wire tests: a signed coordinator on a real broker, genuine agents,
and a plain paho client playing the attacker (it knows the topic layout, nothing else)."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.mqtt.security import WireSecurity
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.study_spec import StudySpec
from fedward.edge.agent import EdgeAgent
from fedward.edge.identity import load_or_create_identity
from fedward.edge.settings import AgentSettings
from fedward.protocol.messages import DeviceClass
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttSettings, TlsSettings
from tests.live.live_helpers import TINY_SPEC, random_dataset, wait_until

__all__ = ["Attacker", "SignedStudy", "TINY_SPEC", "audit_records", "wait_until"]


def audit_records(path: Path) -> list[dict]:
    """Every complete record; a last line still being written (no newline yet) is left out."""
    complete = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


class Attacker:
    """A plain paho client: subscribes to whatever it likes and records what it saw."""

    def __init__(self, host: str, port: int, *, client_id: str, **connect: object) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        for key, value in connect.items():
            getattr(self.client, key)(**value)  # e.g. username_pw_set={...}, tls_set={...}
        self.seen: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.refused: object = None
        self._cv = threading.Condition()
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = reason_code
        else:
            self.connected.set()

    def _on_message(self, client, userdata, message) -> None:
        with self._cv:
            self.seen.append((message.topic, bytes(message.payload)))
            self._cv.notify_all()

    def subscribe(self, topic_filter: str) -> None:
        self.client.subscribe(topic_filter, qos=1)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def wait_for(self, predicate, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        with self._cv:
            self._cv.wait_for(lambda: predicate(self.seen), timeout)
            return list(self.seen)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class SignedStudy:
    """A coordinator service and its signed bridge on a broker, plus genuine agents."""

    broker: tuple[str, int]
    study_id: str
    tmp: Path
    spec: StudySpec = TINY_SPEC
    coordinator_tls: TlsSettings | None = None
    device_tls: Callable[[str], TlsSettings] | None = None
    service: StudyService = field(init=False)
    bridge: StudyBridge = field(init=False)
    transport: MqttTransport = field(init=False)
    agents: list[EdgeAgent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = CoordinatorSettings(
            database_url=f"sqlite:///{self.tmp / 'c.db'}",
            data_dir=self.tmp / "coordinator",
            operator_token="wire-tests-5e4d3c2b1a",
        )
        self.service = StudyService.open(self.settings, seed=0)
        self.service.create_study(self.spec, study_id=self.study_id)
        self.service.start(self.study_id)
        self.transport = MqttTransport(
            MqttSettings(
                host=self.broker[0],
                port=self.broker[1],
                client_id=f"coord.{self.study_id}",
                tls=self.coordinator_tls,
            )
        )
        self.bridge = StudyBridge(
            self.service,
            self.transport,
            study_id=self.study_id,
            dispatch_interval_s=0.2,
            security=WireSecurity.from_settings(self.settings),
        )
        self.transport.set_error_hook(self.bridge.on_transport_error)
        self.bridge.start()
        self.transport.connect()

    def agent(self, device_id: str, *, seed: int = 1, pace=None, secret: bool = True) -> EdgeAgent:
        state = self.tmp / device_id
        text = self.service.issue_enrolment_secret(self.study_id, device_id) if secret else None
        settings = AgentSettings(
            device_id=device_id,
            study_id=self.study_id,
            device_class=DeviceClass.WEARABLE,
            memory_bytes=64 << 20,
            data_path=state / "data.npz",
            state_dir=state,
            window=self.spec.window,
            width=self.spec.width,
            heartbeat_interval_s=1.0,
            poll_interval_s=0.05,
            resend_after_s=5.0,
            model_wait_s=10.0,
            enrol_retry_s=1.0,
            enrolment_secret=SecretStr(text) if text else None,
        )
        transport = MqttTransport(
            MqttSettings(
                host=self.broker[0],
                port=self.broker[1],
                client_id=f"{self.study_id}.{device_id}"[-64:],
                tls=self.device_tls(device_id) if self.device_tls else None,
            )
        )
        agent = EdgeAgent(
            settings,
            transport=transport,
            identity=load_or_create_identity(state, device_id=device_id),
            dataset=random_dataset(self.spec, seed=seed),
            rng=random.Random(seed),
            pace=pace,
        )
        self.agents.append(agent)
        return agent

    def audit(self) -> list[dict]:
        return audit_records(self.settings.audit_log_path)

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.bridge.stop()
        self.transport.close()
        self.service.close()
