"""Transport seam: MQTT matching, in-memory delivery, transparent chunking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedward.protocol.chunking import CHUNK_MAGIC, MIN_CHUNK_BYTES
from fedward.protocol.errors import ChunkError, EncodeError, TransportError
from fedward.protocol.messages import ModelDownload, decode_frame, encode_frame
from fedward.protocol.topics import (
    TopicKind,
    device_filter,
    device_topic,
    model_filter,
    model_topic,
)
from fedward.protocol.transport import (
    ErrorPolicy,
    InMemoryBroker,
    InMemoryTransport,
    topic_matches,
    validate_filter,
)


def connected(broker: InMemoryBroker, **kwargs) -> InMemoryTransport:
    transport = InMemoryTransport(broker, **kwargs)
    transport.connect()
    return transport


@pytest.mark.parametrize(
    "topic_filter, topic, expected",
    [
        ("a/b/c", "a/b/c", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+", "a", True),
        ("+", "a/b", False),
        ("a/+", "a/", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        ("+/x", "$SYS/x", False),
        ("#", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
    ],
)
def test_topic_matches(topic_filter, topic, expected):
    # Execute / Assert
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a+/b", "a/+b", "x\x00"])
def test_invalid_filters_are_refused(bad):
    # Execute / Assert
    with pytest.raises(EncodeError):
        validate_filter(bad)


def test_wildcard_delivery_between_coordinator_and_devices():
    # Prepare
    broker = InMemoryBroker()
    coordinator = connected(broker, client_id="coord")
    devices = {d: connected(broker, client_id=d) for d in ("d1", "d2")}
    got: list[tuple[str, str, bytes]] = []
    coordinator.subscribe(
        device_filter(TopicKind.UPDATE, "s"), lambda t, p: got.append(("coord", t, p))
    )
    for name, dev in devices.items():
        dev.subscribe(model_filter("s"), lambda t, p, n=name: got.append((n, t, p)))
    # Execute
    devices["d2"].publish(device_topic(TopicKind.UPDATE, "s", "d2"), b"u2")
    coordinator.publish(model_topic("s", 1, "all"), b"model")
    devices["d1"].publish(device_topic(TopicKind.HEARTBEAT, "s", "d1"), b"ignored")
    # Assert
    assert got == [
        ("coord", "fedward/v1/s/update/d2", b"u2"),
        ("d1", "fedward/v1/s/model/1/all", b"model"),
        ("d2", "fedward/v1/s/model/1/all", b"model"),
    ]


def test_large_frames_are_chunked_and_reassembled_transparently():
    # Prepare: the broker refuses packets above 4 KiB
    broker = InMemoryBroker(max_packet_bytes=4096)
    sender = connected(broker, max_chunk_bytes=4096)
    receiver = connected(broker)
    tensors = {"w": np.random.default_rng(0).standard_normal(20_000).astype(np.float32)}
    frame = encode_frame(ModelDownload(model_version=2, subset_id="all", names=("w",)), tensors)
    got: list[bytes] = []
    receiver.subscribe("fedward/#", lambda t, p: got.append(p))
    # Execute
    sender.publish(model_topic("s", 2, "all"), frame)
    # Assert
    assert got == [frame] and broker.packets == -(-len(frame) // (4096 - 74))
    assert np.array_equal(decode_frame(got[0], max_bytes=1 << 24)[1]["w"], tensors["w"])
    with pytest.raises(TransportError):
        connected(broker, max_chunk_bytes=8192).publish("x", frame)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2000), st.integers(MIN_CHUNK_BYTES, 700))
def test_any_payload_arrives_intact(payload, max_chunk):
    # Prepare: payloads that look like chunks must also survive
    broker = InMemoryBroker(max_packet_bytes=max_chunk)
    a, b = connected(broker, max_chunk_bytes=max_chunk), connected(broker)
    got: list[bytes] = []
    b.subscribe("t", lambda t, p: got.append(p))
    # Execute
    a.publish("t", payload)
    a.publish("t", CHUNK_MAGIC + payload[: max_chunk // 2])
    # Assert
    assert got == [payload, CHUNK_MAGIC + payload[: max_chunk // 2]]


def test_handler_publishing_does_not_recurse_and_order_is_fifo():
    # Prepare: a ping-pong chain 200 deep would overflow a recursive broker
    broker = InMemoryBroker()
    a, b = connected(broker), connected(broker)
    seen: list[int] = []

    def bounce(transport: InMemoryTransport, out: str):
        def handler(topic: str, payload: bytes) -> None:
            n = int(payload)
            seen.append(n)
            if n < 2000:
                transport.publish(out, str(n + 1).encode())

        return handler

    a.subscribe("ping", bounce(a, "pong"))
    b.subscribe("pong", bounce(b, "ping"))
    # Execute
    a.publish("ping", b"0")
    # Assert
    assert seen == list(range(2001))


def test_retained_messages_and_retain_rules():
    # Prepare
    broker = InMemoryBroker()
    pub = connected(broker, max_chunk_bytes=MIN_CHUNK_BYTES + 10)
    pub.publish("cfg/a", b"small", retain=True)
    late = InMemoryTransport(broker)
    got: list[tuple[str, bytes]] = []
    late.subscribe("cfg/+", lambda t, p: got.append((t, p)))
    # Execute
    late.connect()
    pub.publish("cfg/a", b"", retain=True)  # clears the retained slot
    # Assert
    assert got == [("cfg/a", b"small"), ("cfg/a", b"")]
    assert broker.retained == {}
    with pytest.raises(EncodeError):
        pub.publish("cfg/a", b"x" * 100, retain=True)  # would need several chunks


def test_errors_follow_the_policy():
    # Prepare
    broker = InMemoryBroker()
    pub = connected(broker)
    strict = connected(broker)
    seen: list[Exception] = []
    lenient = connected(broker, error_policy=ErrorPolicy.LOG, on_error=lambda t, e: seen.append(e))
    delivered: list[bytes] = []

    def boom(topic: str, payload: bytes) -> None:
        raise RuntimeError("handler bug")

    strict.subscribe("t", boom)
    lenient.subscribe("t", lambda t, p: delivered.append(p))
    lenient.subscribe("#", boom)
    # Execute / Assert: strict re-raises to the publisher after everyone got the message
    with pytest.raises(RuntimeError, match="handler bug"):
        pub.publish("t", b"1")
    assert delivered == [b"1"] and len(seen) == 1
    # a corrupted chunk injected at the broker goes to on_error as a ChunkError
    strict.unsubscribe("t")
    broker.publish("t", CHUNK_MAGIC + b"\x01" * 100)
    assert len(seen) == 2 and isinstance(seen[-1], ChunkError)


def test_publish_rules():
    # Prepare
    broker = InMemoryBroker()
    t = InMemoryTransport(broker)
    # Execute / Assert
    with pytest.raises(TransportError):
        t.publish("a", b"x")
    t.connect()
    for topic in ("a/+", "a/#", ""):
        with pytest.raises(EncodeError):
            t.publish(topic, b"x")
    with pytest.raises(EncodeError):
        t.publish("a", b"x", qos=3)
    with pytest.raises(EncodeError):
        t.publish("a", "text")  # type: ignore[arg-type]
    t.close()
    with pytest.raises(TransportError):
        t.publish("a", b"x")
