"""MQTT implementation of :class:`~fedward.protocol.transport.Transport` (paho-mqtt 2.x).

Why these choices (see :mod:`fedward.protocol.mqtt_settings` for the knobs):

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

Errors: nothing of paho's escapes this module. Every call into paho that can
raise, and every error code it returns, surfaces as
:class:`~fedward.protocol.errors.TransportError` with a message that says what to
check, chained to paho's exception (``__cause__``) where there is one: a
closed port, an unreachable host, a failed TLS handshake, unusable TLS files,
a full offline queue, a QoS 0 publish while offline, a refused subscription.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fedward.protocol.chunking import MIN_CHUNK_BYTES, Reassembler
from fedward.protocol.errors import TransportError
from fedward.protocol.mqtt_settings import MqttProtocol, MqttSettings
from fedward.protocol.transport import ErrorHook, ErrorPolicy, Transport

# Fixed header (5) + topic length (2) + packet id (2) + v5 properties (<=9).
_PACKET_OVERHEAD = 18

# What paho raises from the calls we make (besides the error codes it returns):
# OSError for files and sockets (ssl.SSLError, FileNotFoundError, ConnectionError
# and socket.gaierror are OSErrors), ValueError for arguments it refuses (a topic,
# filter or TLS setup), RuntimeError from MQTTMessageInfo and from settings changed on
# a live connection, MQTTException from MQTT 5 properties. TypeError is left out on
# purpose: only a wrong argument type from this module raises it, a bug to see.
_PAHO_ERRORS = (OSError, RuntimeError, ValueError, MQTTException)

log = logging.getLogger(__name__)


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
        self._connect_failure: OSError | None = None
        self.connect_count = 0

    # -- lifecycle ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def broker(self) -> str:
        """``host:port`` of the broker, as error messages name it."""
        return f"{self.settings.host}:{self.settings.port}"

    def connect(self) -> None:
        """Connect and start the network thread; TransportError on any failure.

        Failures: unusable TLS files, a broker that does not answer within
        ``connect_timeout_s`` (closed port, unreachable host, failed TLS
        handshake; paho's last socket error is the ``__cause__``) or that
        refuses the connection (credentials, client id).
        """
        if self._client is not None:
            return
        s = self.settings
        client = self._new_client()
        self._last_error = None
        self._connect_failure = None
        self._client = client
        try:
            properties = None
            if s.protocol is MqttProtocol.MQTT5:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = s.session_expiry_s
            client.connect_async(
                s.host, s.port, s.keepalive_s, clean_start=s.clean_start, properties=properties
            )
            client.loop_start()
        except _PAHO_ERRORS as exc:
            self._client = None
            self._shutdown(client)
            raise TransportError(
                f"could not start the MQTT connection to {self.broker}: {exc}; check the "
                "host, port and session settings"
            ) from exc
        if not self._connected.wait(s.connect_timeout_s):
            reason, cause = self._last_error or "no answer", self._connect_failure
            self._client = None
            self._shutdown(client)
            raise TransportError(
                f"could not connect to the MQTT broker at {self.broker} within "
                f"{s.connect_timeout_s}s ({reason}); check that a broker runs there and that "
                "host, port, protocol version, credentials and TLS settings match it"
            ) from cause

    def _new_client(self) -> mqtt.Client:
        """A configured paho client, not yet connected; TransportError if paho refuses."""
        s = self.settings
        v5 = s.protocol is MqttProtocol.MQTT5
        try:
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
            # paho annotates the delays as int; it only adds them to time.monotonic().
            client.reconnect_delay_set(s.reconnect_min_delay_s, s.reconnect_max_delay_s)  # type: ignore[arg-type]
            client.max_inflight_messages_set(s.max_inflight)
            client.max_queued_messages_set(s.max_queued)
        except _PAHO_ERRORS as exc:
            raise TransportError(
                f"paho refused the MQTT settings for {self.broker}: {exc}; check client_id, "
                "username and the inflight/queue limits"
            ) from exc
        if s.tls is not None:
            try:
                client.tls_set(
                    ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None,
                    certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                    keyfile=str(s.tls.key_file) if s.tls.key_file else None,
                )
            except _PAHO_ERRORS as exc:
                raise TransportError(
                    f"the TLS files for {self.broker} cannot be used ({exc}); check that "
                    f"ca_file={s.tls.ca_file}, cert_file={s.tls.cert_file} and "
                    f"key_file={s.tls.key_file} exist, are readable PEM files, and that the "
                    "key belongs to the certificate"
                ) from exc
        client.suppress_exceptions = True
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def close(self) -> None:
        """Disconnect cleanly (pending QoS>0 publishes get a short grace period); idempotent.

        Never raises: close is the release path (``finally`` blocks, ``stop()``)
        and a failed DISCONNECT leaves the caller nothing to do; the socket and
        paho's thread are released either way and the broker sees the
        connection drop. Such a failure is logged.
        """
        client, self._client = self._client, None
        if client is None:
            return
        if self._connected.is_set():
            try:
                self._flush(client, timeout_s=min(self.settings.ack_timeout_s, 2.0))
            except TransportError:
                pass
        failure = self._shutdown(client)
        if failure is not None:
            log.warning(
                "MQTT disconnect from %s was not clean (%r); the connection is released",
                self.broker,
                failure,
            )

    def _shutdown(self, client: mqtt.Client) -> Exception | None:
        """Disconnect and stop paho's thread, both tried; paho's first error, if any."""
        failure: Exception | None = None
        try:
            client.disconnect()
        except _PAHO_ERRORS as exc:
            failure = exc
        try:
            client.loop_stop()
        except _PAHO_ERRORS as exc:
            failure = failure or exc
        self._connected.clear()
        return failure

    def flush(self, *, timeout_s: float | None = None) -> None:
        """Block until every QoS>0 publish so far is acknowledged by the broker.

        Not from a message handler: acks are processed on that same thread.
        """
        client = self._require_client()
        if threading.get_ident() == self._loop_thread:
            raise TransportError("flush() from a message handler would deadlock")
        self._flush(client, timeout_s=timeout_s or self.settings.ack_timeout_s)

    # -- paho callbacks (network thread) ------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
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
        try:
            rc, mid = client.subscribe(subs)
        except _PAHO_ERRORS as exc:  # on paho's thread: connect() reports it on timeout
            self._last_error = f"re-subscription refused by paho: {exc}"
            return
        if mid is None:  # the connection dropped again; the next on_connect retries
            self._last_error = f"re-subscription failed: {mqtt.error_string(rc)}"
            return
        with self._state:
            self._unawaited.add(mid)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # paho calls this from inside its ``except OSError`` around opening the socket
        # (and the TLS handshake), so the exception being handled is why it failed.
        failure = sys.exc_info()[1]
        self._connect_failure = failure if isinstance(failure, OSError) else None
        self._last_error = (
            f"{type(failure).__name__}: {failure}" if failure is not None else "no connection"
        )

    def _mark_connected(self) -> None:
        self.connect_count += 1
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._last_error = f"disconnected: {reason_code}"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError as exc:
            self._report("<undecodable topic>", exc)
            return
        self._deliver(topic, bytes(message.payload))  # received payloads are bytes already

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
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
            raise TransportError(
                f"the MQTT transport to {self.broker} is closed or was never connected; "
                "call connect() first"
            )
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
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        except _PAHO_ERRORS as exc:
            raise TransportError(
                f"paho could not publish to {topic!r} on {self.broker}: {exc}; nothing was "
                "sent, publish it again"
            ) from exc
        queued_offline = info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not queued_offline:
            raise TransportError(self._refused_publish(topic, info.rc))
        if qos > 0:
            with self._state:
                self._pending = [i for i in self._pending if not _acknowledged(i)]
                self._pending.append(info)

    def _send_subscribe(self, topic_filter: str, qos: int) -> None:
        client = self._client
        if client is None or not self._connected.is_set():
            return  # on_connect subscribes everything in self.subscriptions
        try:
            rc, mid = client.subscribe(topic_filter, qos)
        except _PAHO_ERRORS as exc:
            raise TransportError(
                f"paho could not subscribe to {topic_filter!r} on {self.broker}: {exc}"
            ) from exc
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return  # the connection just dropped: on_connect subscribes it with the rest
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(
                f"subscribe to {topic_filter!r} on {self.broker} failed: "
                f"{mqtt.error_string(rc)}; subscribe again"
            )
        if threading.get_ident() == self._loop_thread:
            return  # waiting on paho's own thread would deadlock
        timeout_s = self.settings.ack_timeout_s
        with self._state:
            if not self._state.wait_for(lambda: mid in self._subacks, timeout_s):
                raise TransportError(
                    f"no SUBACK for {topic_filter!r} from {self.broker} within {timeout_s}s; "
                    "subscribe again, or raise ack_timeout_s for a slow broker"
                )
            if not self._subacks.pop(mid):
                raise TransportError(
                    f"the broker at {self.broker} refused the subscription {topic_filter!r}; "
                    "check its ACL for this client id and username"
                )

    def _send_unsubscribe(self, topic_filter: str) -> None:
        client = self._client
        if client is None or not self._connected.is_set():
            return  # the filter is gone from self.subscriptions, so no reconnect restores it
        try:
            client.unsubscribe(topic_filter)
        except _PAHO_ERRORS as exc:
            raise TransportError(
                f"paho could not unsubscribe from {topic_filter!r} on {self.broker}: {exc}; "
                "no handler runs for it any more, but the broker may keep sending its "
                "messages until the session ends"
            ) from exc

    def _refused_publish(self, topic: str, rc: MQTTErrorCode) -> str:
        """What to tell the caller about a publish paho refused with ``rc``."""
        what = f"publish to {topic!r} on {self.broker} failed"
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return (
                f"{what}: not connected, and a QoS 0 message is not queued while offline; "
                "publish it with QoS 1, or again once the transport is connected"
            )
        if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            return (
                f"{what}: paho's outgoing queue is full (max_queued="
                f"{self.settings.max_queued}) while the broker does not acknowledge; publish "
                "it again once the transport is connected, or raise max_queued"
            )
        return f"{what}: {mqtt.error_string(rc)}; publish it again"

    def _flush(self, client: mqtt.Client, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._state:
                self._pending = [i for i in self._pending if not _acknowledged(i)]
                left = len(self._pending)
            if not left:
                return
            if time.monotonic() >= deadline:
                raise TransportError(
                    f"{left} publishes not acknowledged by {self.broker} in {timeout_s}s; they "
                    "stay queued and are sent again on reconnect: flush again later"
                )
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
