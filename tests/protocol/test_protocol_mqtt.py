"""MqttTransport against the real Mosquitto on 127.0.0.1:1883."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedward.protocol.errors import TransportError
from fedward.protocol.messages import Update, decode_frame, encode_frame
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttProtocol, MqttSettings
from fedward.protocol.topics import TopicKind, device_filter, device_topic

pytestmark = pytest.mark.mqtt


def settings_for(broker, protocol: MqttProtocol, **overrides) -> MqttSettings:
    values = {
        "host": broker[0],
        "port": broker[1],
        "client_id": "t-" + uuid.uuid4().hex[:20],
        "protocol": protocol,
        "clean_start": True,
        "session_expiry_s": 30,
        "connect_timeout_s": 5.0,
        "reconnect_min_delay_s": 0.1,
        "reconnect_max_delay_s": 0.5,
    }
    return MqttSettings(**(values | overrides))


class Inbox:
    """Thread-safe collector used as a handler."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self._cv = threading.Condition()

    def __call__(self, topic: str, payload: bytes) -> None:
        with self._cv:
            self.items.append((topic, payload))
            self._cv.notify_all()

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        with self._cv:
            self._cv.wait_for(lambda: len(self.items) >= n, timeout)
            return list(self.items)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def transports():
    made: list[MqttTransport] = []

    def make(settings: MqttSettings) -> MqttTransport:
        transport = MqttTransport(settings)
        made.append(transport)
        transport.connect()
        return transport

    yield make
    for transport in made:
        transport.close()


@pytest.mark.parametrize("protocol", list(MqttProtocol))
def test_qos1_frame_round_trip(mqtt_broker, study_id, transports, protocol):
    # Prepare
    coordinator = transports(settings_for(mqtt_broker, protocol))
    device = transports(settings_for(mqtt_broker, protocol))
    inbox = Inbox()
    coordinator.subscribe(device_filter(TopicKind.UPDATE, study_id), inbox)
    header = Update(
        task_id="t1",
        device_id="dev1",
        base_model_version=0,
        subset_id="all",
        num_samples=8,
        update_energy=1.0,
        train_loss=0.5,
    )
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    # Execute
    device.publish(device_topic(TopicKind.UPDATE, study_id, "dev1"), encode_frame(header, tensors))
    device.flush()
    # Assert
    [(topic, payload)] = inbox.wait(1)
    message, out = decode_frame(payload, max_bytes=1 << 20)
    assert topic.endswith("/update/dev1") and message == header
    np.testing.assert_array_equal(out["w"], tensors["w"])


@pytest.mark.parametrize("protocol", list(MqttProtocol))
def test_large_payload_is_chunked_under_a_small_packet_limit(
    mqtt_broker, study_id, transports, protocol
):
    # Prepare: 1.5 MB through 16 KiB packets (~100 chunks)
    sender = transports(settings_for(mqtt_broker, protocol, max_packet_bytes=16 * 1024))
    receiver = transports(settings_for(mqtt_broker, protocol))
    inbox = Inbox()
    topic = device_topic(TopicKind.UPDATE, study_id, "big")
    receiver.subscribe(topic, inbox)
    payload = os.urandom(1_500_000)
    # Execute
    sender.publish(topic, payload)
    sender.flush()
    # Assert
    assert inbox.wait(1, timeout=20) == [(topic, payload)]


@pytest.mark.parametrize("protocol", list(MqttProtocol))
def test_reconnects_and_resubscribes_after_session_takeover(
    mqtt_broker, study_id, transports, protocol
):
    # Prepare: a device subscribed to its task topic
    settings = settings_for(mqtt_broker, protocol, clean_start=protocol is MqttProtocol.MQTT311)
    device = transports(settings)
    coordinator = transports(settings_for(mqtt_broker, protocol))
    inbox = Inbox()
    task_topic = device_topic(TopicKind.TASK, study_id, "dev1")
    device.subscribe(task_topic, inbox)
    # Execute: another client takes over the client id with a clean session
    # (the broker drops the device and its session), then leaves
    kicker = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=mqtt.MQTTv5 if protocol is MqttProtocol.MQTT5 else mqtt.MQTTv311,
    )
    kicker.connect(*mqtt_broker)
    assert wait_until(lambda: kicker.loop(0.05) == 0 and kicker.is_connected(), 5)
    assert wait_until(lambda: not device.connected, 5)
    kicker.disconnect()
    # Assert: the device comes back by itself and its subscription works again
    # (connected is announced only after the re-subscription's SUBACK)
    assert wait_until(lambda: device.connected and device.connect_count >= 2, 10)
    coordinator.publish(task_topic, b"task-after-reconnect")
    assert inbox.wait(1) == [(task_topic, b"task-after-reconnect")]


def test_persistent_session_receives_messages_sent_while_offline(mqtt_broker, study_id, transports):
    # Prepare: MQTT 5 persistent session, then the device goes away
    settings = settings_for(mqtt_broker, MqttProtocol.MQTT5, clean_start=False)
    topic = device_topic(TopicKind.TASK, study_id, "dev1")
    first = MqttTransport(settings)
    first.connect()
    first.subscribe(topic, Inbox())
    first.close()
    coordinator = transports(settings_for(mqtt_broker, MqttProtocol.MQTT5))
    # Execute: publish while offline, then reconnect with the same client id
    coordinator.publish(topic, b"queued-task")
    coordinator.flush()
    inbox = Inbox()
    again = MqttTransport(settings)
    again.subscribe(topic, inbox)  # registered before connect: active on connect
    try:
        again.connect()
        # Assert
        assert inbox.wait(1) == [(topic, b"queued-task")]
    finally:
        again.close()


def test_connect_failure_raises_transport_error():
    # Prepare: nothing listens on port 1
    settings = MqttSettings(client_id="nobody", port=1, connect_timeout_s=0.5)
    transport = MqttTransport(settings)
    # Execute / Assert
    with pytest.raises(TransportError):
        transport.connect()
    with pytest.raises(TransportError):
        transport.publish("a", b"x")


def test_publish_while_offline_is_delivered_and_flushes_after_reconnect(
    mqtt_broker, study_id, transports
):
    # Prepare: a device kicked off the broker (session takeover), a listener
    settings = settings_for(mqtt_broker, MqttProtocol.MQTT5)
    device = transports(settings)
    listener = transports(settings_for(mqtt_broker, MqttProtocol.MQTT5))
    inbox = Inbox()
    topic = device_topic(TopicKind.UPDATE, study_id, "dev1")
    listener.subscribe(topic, inbox)
    kicker = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv5
    )
    kicker.connect(*mqtt_broker)
    assert wait_until(lambda: kicker.loop(0.05) == 0 and kicker.is_connected(), 5)
    assert wait_until(lambda: not device.connected, 5)
    # Execute: publish while offline (paho queues it), then let the device back
    device.publish(topic, b"sent-offline")
    kicker.disconnect()
    assert wait_until(lambda: device.connected and device.connect_count >= 2, 10)
    device.publish(topic, b"sent-online")
    device.flush()
    # Assert: both arrive, and neither the later publish nor flush raised
    assert sorted(p for _, p in inbox.wait(2, timeout=5)) == [b"sent-offline", b"sent-online"]
