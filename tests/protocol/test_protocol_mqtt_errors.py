"""paho's errors never leak through MqttTransport: every failure is a TransportError.

Real paho against the real Mosquitto (no mocks). A connection that breaks is a
real one cut by :class:`Relay`, a TCP relay to the broker that the test closes
like a network outage; reconnects then find the relay's port closed.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from fedward.errors import FedwardError
from fedward.protocol.errors import EncodeError, TransportError
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttProtocol, MqttSettings, TlsSettings


def settings(host: str, port: int, **overrides: object) -> MqttSettings:
    values: dict[str, object] = {
        "host": host,
        "port": port,
        "client_id": "e-" + uuid.uuid4().hex[:20],
        "clean_start": True,
        "session_expiry_s": 0,
        "connect_timeout_s": 2.0,
        "ack_timeout_s": 2.0,
        "reconnect_min_delay_s": 0.1,
        "reconnect_max_delay_s": 0.2,
    }
    return MqttSettings(**(values | overrides))


def closed_port() -> int:
    """A loopback port that was just bound and closed, so nothing listens on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def assert_ours(exc: BaseException) -> None:
    """A TransportError (so a FedwardError), never paho's or the socket's own class."""
    assert type(exc) is TransportError and isinstance(exc, FedwardError)
    assert not isinstance(exc, OSError | RuntimeError | ValueError)


class Relay:
    """A TCP relay from a loopback port to the broker; :meth:`cut` is a network outage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # accept() polls, so cut() stops it promptly
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._cut.is_set():
            try:
                near, _ = self._listener.accept()
            except TimeoutError:
                continue
            far = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [near, far]
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()
        self._listener.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # the other direction, or cut(), closed the pair

    def cut(self) -> None:
        """Drop every relayed connection and stop listening (reconnects are refused)."""
        self._cut.set()
        self._thread.join(timeout=5)
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer
            sock.close()


@pytest.fixture
def relay(mqtt_broker):
    made = Relay(mqtt_broker)
    yield made
    made.cut()


@pytest.mark.parametrize("protocol", list(MqttProtocol))
def test_connecting_to_a_closed_port_raises_transport_error(protocol):
    # Prepare: a port bound and closed again, so the connect is refused
    port = closed_port()
    transport = MqttTransport(settings("127.0.0.1", port, protocol=protocol, connect_timeout_s=1))
    # Execute
    with pytest.raises(TransportError) as caught:
        transport.connect()
    # Assert: ours, names the address and what to check, paho's socket error as the cause
    assert_ours(caught.value)
    assert f"127.0.0.1:{port}" in str(caught.value) and "check that a broker runs" in str(
        caught.value
    )
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert not transport.connected


@pytest.mark.mqtt
@pytest.mark.parametrize("qos", [0, 1])
def test_publishing_after_close_raises_transport_error(mqtt_broker, qos):
    # Prepare: a transport that was connected to Mosquitto, then closed
    transport = MqttTransport(settings(*mqtt_broker))
    transport.connect()
    transport.close()
    # Execute
    with pytest.raises(TransportError) as caught:
        transport.publish("fedward-test/errors/closed", b"late", qos=qos)
    # Assert
    assert_ours(caught.value)
    assert "call connect()" in str(caught.value)
    with pytest.raises(TransportError):
        transport.flush()
    transport.close()  # idempotent, and never raises


@pytest.mark.mqtt
def test_a_cut_connection_refuses_qos0_and_times_out_flush_with_transport_errors(relay):
    # Prepare: connected to Mosquitto through the relay, then the network goes away
    transport = MqttTransport(settings("127.0.0.1", relay.port))
    transport.connect()
    try:
        transport.publish("fedward-test/errors/before-cut", b"fine", qos=1)
        transport.flush()
        relay.cut()
        assert wait_until(lambda: not transport.connected, 10)
        # Execute / Assert: QoS 0 is not queued offline, so paho refuses it; we say so
        with pytest.raises(TransportError) as refused:
            transport.publish("fedward-test/errors/after-cut", b"lost", qos=0)
        assert_ours(refused.value)
        assert "QoS 0" in str(refused.value)
        # QoS 1 is queued by paho for the reconnect; waiting for its ack times out as ours
        transport.publish("fedward-test/errors/after-cut", b"queued", qos=1)
        with pytest.raises(TransportError) as unacked:
            transport.flush(timeout_s=0.3)
        assert_ours(unacked.value)
        assert "flush again later" in str(unacked.value)
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("tls_file", "content"),
    [
        ("missing-ca.pem", None),
        ("garbage-ca.pem", b"-----BEGIN CERTIFICATE-----\nnot a certificate\n"),
    ],
)
def test_a_bad_tls_ca_file_raises_transport_error(tmp_path: Path, tls_file, content):
    # Prepare: a CA file that does not exist, or is not PEM; the broker is never reached
    ca_file = tmp_path / tls_file
    if content is not None:
        ca_file.write_bytes(content)
    transport = MqttTransport(settings("127.0.0.1", 1883, tls=TlsSettings(ca_file=ca_file)))
    # Execute
    with pytest.raises(TransportError) as caught:
        transport.connect()
    # Assert: ours, names the file, and paho's (ssl's) error is the cause
    assert_ours(caught.value)
    assert str(ca_file) in str(caught.value) and "readable PEM" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)  # FileNotFoundError, ssl.SSLError
    assert not transport.connected


def test_a_bad_client_certificate_raises_transport_error(tmp_path: Path):
    # Prepare: certificate and key files that hold no PEM
    cert, key = tmp_path / "device.crt", tmp_path / "device.key"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    tls = TlsSettings(cert_file=cert, key_file=key)
    transport = MqttTransport(settings("127.0.0.1", 1883, tls=tls))
    # Execute
    with pytest.raises(TransportError) as caught:
        transport.connect()
    # Assert
    assert_ours(caught.value)
    assert "key belongs to the certificate" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


@pytest.mark.mqtt
def test_tls_to_a_plain_mqtt_listener_raises_transport_error(mqtt_broker):
    # Prepare: TLS (system CAs) against Mosquitto's plain listener: the handshake fails
    transport = MqttTransport(settings(*mqtt_broker, tls=TlsSettings()))
    # Execute
    with pytest.raises(TransportError) as caught:
        transport.connect()
    # Assert: the TLS/socket failure is paho's cause, not what the caller has to catch
    assert_ours(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    assert "TLS settings" in str(caught.value)


@pytest.mark.mqtt
def test_a_topic_paho_cannot_encode_is_refused_before_paho(mqtt_broker):
    # Prepare: a connected transport; a lone surrogate is no UTF-8, so paho's encode would fail
    transport = MqttTransport(settings(*mqtt_broker))
    transport.connect()
    try:
        # Execute / Assert: our EncodeError (a ProtocolError), not paho's UnicodeEncodeError
        with pytest.raises(EncodeError) as caught:
            transport.publish("fedward-test/errors/\ud800", b"x")
        assert not isinstance(caught.value, ValueError)
    finally:
        transport.close()
