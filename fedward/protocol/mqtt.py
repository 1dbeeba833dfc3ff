"""MQTT implementation of :class:`~protocol.transport.Transport` (paho-mqtt 2.x).

Why these choices (see :mod:`protocol.mqtt_settings` for the knobs):

* paho's own network thread (``loop_start``) with ``reconnect_delay_set``
  gives exponential-backoff reconnects; ``on_connect`` re-subscribes every
  filter after each (re)connect, because a broker may have lost the
  session (expired, taken over, clean start elsewhere).
* QoS 1 by default: at-least-once is what a buffered, semi-async
  coordinator needs; duplicates are harmless because updates are keyed by
  task id and chunked messages are de-duplicated by the reassembler.
* Every packet we send stays under ``max_packet_bytes`` (lowered by an
  MQTT 5 broker's Maximum Packet Size), via transparent chunking.
* Receive-path errors never escape into paho's thread (which would stop
  the loop): the transport's error policy defaults to LOG.

:meth:`MqttTransport.connect` returns (and :attr:`MqttTransport.connected`
turns true after a reconnect) only once every known filter is subscribed
again. :meth:`MqttTransport.subscribe` waits for the SUBACK (except when called
from a message handler, which runs on paho's thread), so a caller that
subscribes and then triggers a reply cannot miss it.
"""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fedward.protocol.chunking import MIN_CHUNK_BYTES, Reassembler
from fedward.protocol.errors import TransportError
from fedward.protocol.mqtt_settings import MqttProtocol, MqttSettings
from fedward.protocol.transport import ErrorHook, ErrorPolicy, Transport

# Fixed header (5) + topic length (2) + packet id (2) + v5 properties (<=9).
_PACKET_OVERHEAD = 18


class MqttTransport(Transport):
    """A :class:`Transport` over a real MQTT broker."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        reassembler: Reassembler | None = None,
        error_policy: ErrorPolicy = ErrorPolicy.LOG,
        on_error: ErrorHook | None = None,
    ) -> None:
        super().__init__(
            max_chunk_bytes=settings.max_packet_bytes,
            reassembler=reassembler,
            error_policy=error_policy,
            on_error=on_error,
        )
        self.settings = settings
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._state = threading.Condition()
        self._last_error: str | None = None
        self._loop_thread: int | None = None
        self._subacks: dict[int, bool] = {}
        self._unawaited: set[int] = set()
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self._broker_max_packet: int | None = None
        self.connect_count = 0

    # -- lifecycle ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self) -> None:
        """Connect and start the network thread; raise TransportError on timeout/refusal."""
        if self._client is not None:
            return
        s = self.settings
        v5 = s.protocol is MqttProtocol.MQTT5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=None if v5 else s.clean_start,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=True,
        )
        if s.username is not None:
            password = s.password.get_secret_value() if s.password else None
            client.username_pw_set(s.username, password)
        if s.tls is not None:
            client.tls_set(
                ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None,
                certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                keyfile=str(s.tls.key_file) if s.tls.key_file else None,
            )
        client.reconnect_delay_set(s.reconnect_min_delay_s, s.reconnect_max_delay_s)
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(s.max_queued)
        client.suppress_exceptions = True
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = s.session_expiry_s
        self._client = client
        client.connect_async(
            s.host, s.port, s.keepalive_s, clean_start=s.clean_start, properties=properties
        )
        client.loop_start()
        if not self._connected.wait(s.connect_timeout_s):
            reason = self._last_error or "timeout"
            self.close()
            raise TransportError(f"could not connect to {s.host}:{s.port}: {reason}")

    def close(self) -> None:
        """Disconnect cleanly (pending QoS>0 publishes get a short grace period)."""
        client, self._client = self._client, None
        if client is None:
            return
        if self._connected.is_set():
            try:
                self._flush(client, timeout_s=min(self.settings.ack_timeout_s, 2.0))
            except TransportError:
                pass
        client.disconnect()
        client.loop_stop()
        self._connected.clear()

    def flush(self, *, timeout_s: float | None = None) -> None:
        """Block until every QoS>0 publish so far is acknowledged by the broker.

        Not from a message handler: acks are processed on that same thread.
        """
        client = self._require_client()
        if threading.get_ident() == self._loop_thread:
            raise TransportError("flush() from a message handler would deadlock")
        self._flush(client, timeout_s=timeout_s or self.settings.ack_timeout_s)

    # -- paho callbacks (network thread) ------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._loop_thread = threading.get_ident()
        if reason_code.is_failure:
            self._last_error = f"broker refused: {reason_code}"
            return
        packet_limit = getattr(properties, "MaximumPacketSize", None) if properties else None
        self._broker_max_packet = packet_limit
        subs = list(self.subscriptions.items())
        if not subs:
            self._mark_connected()
            return
        # "connected" is announced only once the re-subscription is acknowledged,
        # so nobody publishes a request whose reply could arrive unsubscribed.
        _, mid = client.subscribe(subs)
        with self._state:
            self._unawaited.add(mid)

    def _mark_connected(self) -> None:
        self.connect_count += 1
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        self._last_error = f"disconnected: {reason_code}"

    def _on_message(self, client, userdata, message) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError as exc:
            self._report("<undecodable topic>", exc)
            return
        self._deliver(topic, message.payload)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        ok = not any(rc.is_failure for rc in reason_codes)
        with self._state:
            if mid in self._unawaited:  # re-subscription after a (re)connect
                self._unawaited.discard(mid)
                self._mark_connected()
                if not ok:
                    self._report("<resubscribe>", TransportError(f"refused: {reason_codes}"))
                return
            self._subacks[mid] = ok
            self._state.notify_all()

    # -- Transport hooks ----------------------------------------------------

    def _require_client(self) -> mqtt.Client:
        if self._client is None:
            raise TransportError("MQTT transport is not connected (call connect())")
        return self._client

    def _chunk_limit(self, topic: str) -> int:
        packet = self.max_chunk_bytes
        if self._broker_max_packet:
            packet = min(packet, self._broker_max_packet)
        limit = packet - _PACKET_OVERHEAD - len(topic.encode("utf-8"))
        if limit < MIN_CHUNK_BYTES:
            raise TransportError(f"max packet size {packet} too small for topic {topic!r}")
        return limit

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        client = self._require_client()
        info = client.publish(topic, payload, qos=qos, retain=retain)
        queued_offline = info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not queued_offline:
            raise TransportError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        if qos > 0:
            with self._state:
                self._pending = [i for i in self._pending if not _acknowledged(i)]
                self._pending.append(info)

    def _send_subscribe(self, topic_filter: str, qos: int) -> None:
        client = self._client
        if client is None or not self._connected.is_set():
            return  # on_connect subscribes everything in self.subscriptions
        rc, mid = client.subscribe(topic_filter, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError(f"subscribe {topic_filter!r} failed: {mqtt.error_string(rc)}")
        if threading.get_ident() == self._loop_thread:
            return  # waiting on paho's own thread would deadlock
        with self._state:
            if not self._state.wait_for(lambda: mid in self._subacks, self.settings.ack_timeout_s):
                raise TransportError(f"no SUBACK for {topic_filter!r}")
            if not self._subacks.pop(mid):
                raise TransportError(f"broker refused subscription {topic_filter!r}")

    def _send_unsubscribe(self, topic_filter: str) -> None:
        client = self._client
        if client is not None and self._connected.is_set():
            client.unsubscribe(topic_filter)

    def _flush(self, client: mqtt.Client, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._state:
                self._pending = [i for i in self._pending if not _acknowledged(i)]
                left = len(self._pending)
            if not left:
                return
            if time.monotonic() >= deadline:
                raise TransportError(f"{left} publishes not acknowledged in {timeout_s}s")
            time.sleep(0.01)


def _acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker acknowledged a QoS>0 publish.

    ``is_published()`` raises for a message published while offline (its
    ``rc`` stays NO_CONN although paho queues it and sends it on reconnect);
    paho still marks such a message published when its PUBACK arrives, in the
    ``_published`` flag that ``is_published`` itself reads.
    """
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return bool(getattr(info, "_published", False))
