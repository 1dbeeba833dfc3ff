"""The shipped broker configuration (deploy/mosquitto) on a real Mosquitto of our own.

The broker runs on a free port with exactly the files ``fedward pki broker-config``
renders: TLS with a study CA, client certificates (CN = device id) and the ACL.
Attacks come from plain paho clients; a genuine agent and the signed coordinator
then run a study over the same broker with ``mqtts``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.mqtt.security import WireSecurity
from fedward.live import free_port
from fedward.protocol.credentials import (
    COORDINATOR_CN,
    init_study_pki,
    issue_device,
    render_broker_config,
)
from fedward.protocol.errors import TransportError
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttSettings, TlsSettings
from tests.wire.wire_helpers import Attacker, SignedStudy, wait_until

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """``(port, credentials dir)`` of a Mosquitto started with deploy/mosquitto."""
    root = tmp_path_factory.mktemp("broker")
    creds, config = root / "creds", root / "config"
    init_study_pki(creds, study="wire")
    for device in ("d1", "d2", "genuine"):
        issue_device(creds, device)
    port = free_port()
    conf, acl = render_broker_config(
        tls_dir=creds, config_dir=config, data_dir=root / "data", port=port, run_as="root"
    )
    (root / "data").mkdir()
    config.mkdir()
    (config / "mosquitto.conf").write_text(conf)
    (config / "acl").write_text(acl)
    log = open(root / "mosquitto.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        ["mosquitto", "-c", str(config / "mosquitto.conf")], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail((root / "mosquitto.log").read_text())
            time.sleep(0.05)
        yield port, creds
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _client(port, creds, name: str | None, *, client_id: str) -> Attacker:
    tls = {"ca_certs": str(creds / "ca.crt")}
    if name is not None:
        folder = creds if name == COORDINATOR_CN else creds / "devices"
        tls |= {"certfile": str(folder / f"{name}.crt"), "keyfile": str(folder / f"{name}.key")}
    return Attacker("127.0.0.1", port, client_id=client_id, tls_set=tls)


def test_anonymous_clients_are_refused(tls_broker):
    # Prepare
    port, creds = tls_broker
    # Execute: TLS with the right CA but no client certificate; and no TLS at all
    settings = MqttSettings(
        host="127.0.0.1", port=port, client_id="anon", connect_timeout_s=1.5,
        tls=TlsSettings(ca_file=creds / "ca.crt"),
    )  # fmt: skip
    plain = MqttSettings(host="127.0.0.1", port=port, client_id="plain", connect_timeout_s=1.5)
    # Assert
    for s in (settings, plain):
        with pytest.raises(TransportError):
            MqttTransport(s).connect()


def test_a_device_can_neither_read_nor_publish_another_devices_topics(tls_broker):
    # Prepare: the coordinator, d2 and d1 (d1 claims d2's client id: the id proves nothing)
    port, creds = tls_broker
    coordinator = _client(port, creds, COORDINATOR_CN, client_id="coordinator")
    d2 = _client(port, creds, "d2", client_id="d2-own")
    d1 = _client(port, creds, "d1", client_id="d2")
    for client in (coordinator, d1, d2):
        assert client.connected.wait(5), client.refused
    coordinator.subscribe("fedward/v1/s/update/+")
    d2.subscribe("fedward/v1/s/task/d2")
    d1.subscribe("fedward/v1/s/task/d2")  # the ACL denies it
    time.sleep(0.5)
    # Execute: the coordinator sends d2 a task; d1 publishes an update as d2, then its own
    coordinator.publish("fedward/v1/s/task/d2", b"task for d2")
    d1.client.publish("fedward/v1/s/update/d2", b"forged by d1", qos=1)
    d1.publish("fedward/v1/s/update/d1", b"d1's own")
    # Assert: d2 got its task, d1 did not; the coordinator got only d1's own update
    assert d2.wait_for(lambda s: len(s) >= 1) == [("fedward/v1/s/task/d2", b"task for d2")]
    seen = coordinator.wait_for(lambda s: any(p == b"d1's own" for _, p in s))
    assert ("fedward/v1/s/update/d1", b"d1's own") in seen
    assert all(p != b"forged by d1" for _, p in seen)
    assert d1.seen == []
    for client in (coordinator, d1, d2):
        client.close()


def test_a_signed_study_runs_over_mqtts_with_client_certificates(tls_broker, tmp_path):
    # Prepare: the coordinator and a genuine agent connect with their certificates
    port, creds = tls_broker

    def tls_for(name: str) -> TlsSettings:
        folder = creds if name == COORDINATOR_CN else creds / "devices"
        return TlsSettings(
            ca_file=creds / "ca.crt",
            cert_file=folder / f"{name}.crt",
            key_file=folder / f"{name}.key",
        )

    study = SignedStudy(
        ("127.0.0.1", port),
        "tls-study",
        tmp_path,
        coordinator_tls=tls_for(COORDINATOR_CN),
        device_tls=tls_for,
    )
    try:
        agent = study.agent("genuine")
        # Execute
        agent.start(wait_enrolled_s=20)
        # Assert: updates flow end to end over TLS
        assert wait_until(lambda: study.service.status("tls-study").updates_accepted >= 2, 30)
        assert isinstance(study.bridge, StudyBridge) and isinstance(
            study.bridge.security, WireSecurity
        )
    finally:
        study.close()
