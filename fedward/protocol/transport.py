"""The one transport seam: publish/subscribe of opaque bytes by topic.

Why one seam: the coordinator bridge, the edge agent and the simulator all
talk through :class:`Transport`, so the same code runs over a real MQTT
broker (:class:`fedward.protocol.mqtt.MqttTransport`) and over the deterministic
in-process :class:`InMemoryTransport` used by the simulator and tests.

Chunking is applied here, transparently: :meth:`Transport.publish` splits
a payload larger than the packet budget into chunks
(:mod:`fedward.protocol.chunking`) and the receiving transport reassembles them
(per topic, i.e. per sender in our topic layout) before the handler runs.
A payload that fits but happens to start with the chunk magic is wrapped
as a one-chunk message, so receivers are never confused. A payload that
needs several chunks cannot be *retained* (a retained slot holds one MQTT
message), and :meth:`Transport.publish` refuses it.

Errors on the receive path (a bad chunk, a handler that raises) never kill
a network loop: they go to ``on_error`` and, with
``ErrorPolicy.RAISE`` (default of the in-memory transport, so simulations
and tests fail loudly), are re-raised to the publisher.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from fedward.protocol.chunking import CHUNK_HEADER_SIZE, MIN_CHUNK_BYTES, Reassembler, is_chunk
from fedward.protocol.chunking import split_message as _split
from fedward.protocol.errors import EncodeError, ProtocolError, TransportError

Handler = Callable[[str, bytes], None]
ErrorHook = Callable[[str, Exception], None]
DEFAULT_MAX_CHUNK_BYTES = 256 * 1024
MAX_TOPIC_BYTES = 65_535

log = logging.getLogger(__name__)


class ErrorPolicy(StrEnum):
    RAISE = "raise"  # report, then re-raise to whoever delivered the message
    LOG = "log"  # report and continue (network loops must survive)


def _check_levels(text: str, what: str) -> None:
    if not isinstance(text, str) or not text:
        raise EncodeError(f"{what} must be a non-empty str")
    try:
        # Strict: MQTT topics are UTF-8, and a lone surrogate would otherwise reach paho
        # and fail there (UnicodeEncodeError) instead of here.
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise EncodeError(f"{what} {text!r} is not valid UTF-8 (a lone surrogate)") from None
    if "\x00" in text or size > MAX_TOPIC_BYTES:
        raise EncodeError(f"invalid {what} {text!r}")


def validate_topic(topic: str) -> None:
    """A concrete topic: no wildcards (MQTT forbids publishing to them)."""
    _check_levels(topic, "topic")
    if "+" in topic or "#" in topic:
        raise EncodeError(f"wildcards are not allowed in a topic: {topic!r}")


def validate_filter(topic_filter: str) -> None:
    """MQTT filter rules: ``+`` is a whole level, ``#`` only as the last level."""
    _check_levels(topic_filter, "topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise EncodeError(f"'#' must be the whole last level: {topic_filter!r}")
        if "+" in level and level != "+":
            raise EncodeError(f"'+' must be a whole level: {topic_filter!r}")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching of a concrete ``topic`` against ``topic_filter``.

    ``+`` matches one level, ``#`` the parent level and everything below
    it; a leading wildcard never matches a topic starting with ``$``.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    levels = topic.split("/")
    for i, pattern in enumerate(filter_levels):
        if pattern == "#":
            return True
        if i >= len(levels) or (pattern != "+" and pattern != levels[i]):
            return False
    return len(levels) == len(filter_levels)


def _check_qos(qos: int) -> None:
    if type(qos) is not int or qos not in (0, 1, 2):
        raise EncodeError(f"qos must be 0, 1 or 2, got {qos!r}")


class Transport(ABC):
    """Publish/subscribe of bytes with transparent chunking.

    Subclasses implement the ``_send*`` hooks plus :meth:`connect` and
    :meth:`close`, and call :meth:`_deliver` for every raw incoming
    message. One handler per filter; subscribing again replaces it.
    """

    def __init__(
        self,
        *,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
        reassembler: Reassembler | None = None,
        error_policy: ErrorPolicy = ErrorPolicy.LOG,
        on_error: ErrorHook | None = None,
    ) -> None:
        if type(max_chunk_bytes) is not int or max_chunk_bytes < MIN_CHUNK_BYTES:
            raise ValueError(f"max_chunk_bytes must be an int >= {MIN_CHUNK_BYTES}")
        self.max_chunk_bytes = max_chunk_bytes
        self.error_policy = error_policy
        self._on_error = on_error
        self._reassembler = reassembler if reassembler is not None else Reassembler()
        self._subscriptions: dict[str, tuple[Handler, int]] = {}
        self._lock = threading.RLock()

    # -- public API ---------------------------------------------------------

    @abstractmethod
    def connect(self) -> None:
        """Connect (blocking); subscriptions made earlier become active."""

    @abstractmethod
    def close(self) -> None:
        """Disconnect and release resources; idempotent."""

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish ``payload``, split into chunks if it exceeds the packet budget."""
        validate_topic(topic)
        _check_qos(qos)
        if not isinstance(payload, bytes | bytearray):
            raise EncodeError(f"payload must be bytes, got {type(payload).__name__}")
        payload = bytes(payload)
        limit = self._chunk_limit(topic)
        if len(payload) <= limit and not is_chunk(payload):
            self._send(topic, payload, qos, retain)
            return
        chunks = _split(payload, max_chunk_bytes=limit)
        if retain and len(chunks) > 1:
            raise EncodeError("a payload that needs several chunks cannot be retained")
        for chunk in chunks:
            self._send(topic, chunk, qos, retain)

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        """Call ``handler(topic, payload)`` for every whole message matching the filter."""
        validate_filter(topic_filter)
        _check_qos(qos)
        with self._lock:
            previous = self._subscriptions.get(topic_filter)
            self._subscriptions[topic_filter] = (handler, qos)
        try:
            self._send_subscribe(topic_filter, qos)
        except Exception:
            with self._lock:  # leave no half-made subscription behind
                if previous is None:
                    self._subscriptions.pop(topic_filter, None)
                else:
                    self._subscriptions[topic_filter] = previous
            raise

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop delivering messages for ``topic_filter`` (no-op if unknown)."""
        with self._lock:
            known = self._subscriptions.pop(topic_filter, None) is not None
        if known:
            self._send_unsubscribe(topic_filter)

    def set_error_hook(self, on_error: ErrorHook | None) -> None:
        """Where receive-path errors (bad chunks, handler failures) are reported."""
        self._on_error = on_error

    @property
    def subscriptions(self) -> dict[str, int]:
        """Current filters and their QoS (what a reconnect re-subscribes)."""
        with self._lock:
            return {f: q for f, (_, q) in self._subscriptions.items()}

    # -- hooks for subclasses -----------------------------------------------

    @abstractmethod
    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...

    @abstractmethod
    def _send_subscribe(self, topic_filter: str, qos: int) -> None: ...

    @abstractmethod
    def _send_unsubscribe(self, topic_filter: str) -> None: ...

    def _chunk_limit(self, topic: str) -> int:
        """Largest payload (chunk header included) one packet may carry on ``topic``."""
        return self.max_chunk_bytes

    def _report(self, topic: str, exc: Exception) -> None:
        if self._on_error is not None:
            self._on_error(topic, exc)
        else:
            log.warning("dropped message on %s: %r", topic, exc)
        if self.error_policy is ErrorPolicy.RAISE:
            raise exc

    def _deliver(self, topic: str, payload: bytes) -> None:
        """Reassemble if needed, then run every handler whose filter matches."""
        if is_chunk(payload):
            try:
                with self._lock:
                    whole = self._reassembler.feed(topic, payload)
            except ProtocolError as exc:
                self._report(topic, exc)
                return
            if whole is None:
                return
            payload = whole
        with self._lock:
            handlers = [h for f, (h, _) in self._subscriptions.items() if topic_matches(f, topic)]
        for handler in handlers:
            try:
                handler(topic, payload)
            except Exception as exc:  # any handler bug goes to the error policy
                self._report(topic, exc)


class InMemoryBroker:
    """A deterministic in-process broker with MQTT matching and retain.

    Delivery is synchronous but queued: a publish enqueues one delivery
    per matching subscriber (subscribers at publish time, each transport
    once) and the outermost publish drains the queue in FIFO order. A
    handler that publishes therefore never recurses, and the order of
    events is a pure function of the order of calls. If a delivery raises,
    the queue is still drained and the first error is re-raised at the end.

    ``max_packet_bytes`` emulates a broker packet limit (raising
    :class:`TransportError`), so simulations exercise chunking for real.
    """

    def __init__(self, *, max_packet_bytes: int | None = None) -> None:
        self.max_packet_bytes = max_packet_bytes
        self.retained: dict[str, bytes] = {}
        self.packets = 0
        self.bytes = 0
        self._clients: list[InMemoryTransport] = []
        self._queue: deque[tuple[InMemoryTransport, str, bytes]] = deque()
        self._draining = False
        self._lock = threading.RLock()

    def attach(self, client: InMemoryTransport) -> None:
        with self._lock:
            if client not in self._clients:
                self._clients.append(client)

    def detach(self, client: InMemoryTransport) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
            self._queue = deque(item for item in self._queue if item[0] is not client)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        with self._lock:
            if self.max_packet_bytes is not None and len(payload) > self.max_packet_bytes:
                raise TransportError(f"packet of {len(payload)} bytes > {self.max_packet_bytes}")
            self.packets += 1
            self.bytes += len(payload)
            if retain:
                if payload:
                    self.retained[topic] = payload
                else:
                    self.retained.pop(topic, None)
            for client in self._clients:
                if client.wants(topic):
                    self._queue.append((client, topic, payload))
            self._drain()

    def replay_retained(self, client: InMemoryTransport, topic_filter: str) -> None:
        """Deliver retained messages matching a new subscription (MQTT semantics)."""
        with self._lock:
            for topic, payload in self.retained.items():
                if topic_matches(topic_filter, topic):
                    self._queue.append((client, topic, payload))
            self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        first_error: Exception | None = None
        try:
            while self._queue:
                client, topic, payload = self._queue.popleft()
                try:
                    client._deliver(topic, payload)
                except Exception as exc:  # re-raised after the drain
                    first_error = first_error or exc
        finally:
            self._draining = False
        if first_error is not None:
            raise first_error


class InMemoryTransport(Transport):
    """A :class:`Transport` on an :class:`InMemoryBroker` (simulator, tests)."""

    def __init__(
        self,
        broker: InMemoryBroker,
        *,
        client_id: str = "",
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
        reassembler: Reassembler | None = None,
        error_policy: ErrorPolicy = ErrorPolicy.RAISE,
        on_error: ErrorHook | None = None,
    ) -> None:
        super().__init__(
            max_chunk_bytes=max_chunk_bytes,
            reassembler=reassembler,
            error_policy=error_policy,
            on_error=on_error,
        )
        self.broker = broker
        self.client_id = client_id
        self.connected = False

    def connect(self) -> None:
        self.broker.attach(self)
        self.connected = True
        for topic_filter in self.subscriptions:
            self.broker.replay_retained(self, topic_filter)

    def close(self) -> None:
        self.broker.detach(self)
        self.connected = False

    def wants(self, topic: str) -> bool:
        """True if any subscription matches ``topic`` (used by the broker)."""
        with self._lock:
            return any(topic_matches(f, topic) for f in self._subscriptions)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if not self.connected:
            raise TransportError("in-memory transport is not connected")
        self.broker.publish(topic, payload, retain=retain)

    def _send_subscribe(self, topic_filter: str, qos: int) -> None:
        if self.connected:
            self.broker.replay_retained(self, topic_filter)

    def _send_unsubscribe(self, topic_filter: str) -> None:
        return None


__all__ = [
    "CHUNK_HEADER_SIZE",
    "DEFAULT_MAX_CHUNK_BYTES",
    "ErrorPolicy",
    "Handler",
    "InMemoryBroker",
    "InMemoryTransport",
    "Transport",
    "topic_matches",
    "validate_filter",
    "validate_topic",
]
