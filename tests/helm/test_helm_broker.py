"""The chart's broker: the project's Mosquitto file, and the `helm test` check run against it.

* The ConfigMap the chart renders holds, byte for byte, the files under
  helm/fedward/files/mosquitto/, which are symlinks to the wire-trust broker
  configuration in deploy/mosquitto/ (the file its tests start Mosquitto
  with), and a packaged chart carries their contents.
* helm/fedward/files/tests/check_release.py (what `helm test` runs) is run
  here against a real Mosquitto started with the chart's own configuration
  (paths and port moved into a temporary folder, nothing else changed), with
  a study CA made by ``cryptography``: an anonymous client and a plaintext
  client are refused, a device certificate signed by the CA is accepted (so
  the refusal is the broker's rule, not a broken broker), and the check
  reports a broker that lets anonymous clients in.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helm.helm_chart_helpers import CHART, REPO, manifests, named

BROKER_FILES = CHART / "files" / "mosquitto"
DEPLOY = REPO / "deploy" / "mosquitto"


def test_the_rendered_broker_config_is_the_chart_file() -> None:
    # Prepare
    configmap = named(manifests("default"), "ConfigMap", "-broker")

    # Execute
    rendered = configmap["data"]

    # Assert
    assert rendered == {p.name: p.read_text() for p in sorted(BROKER_FILES.iterdir())}


def test_the_chart_file_is_the_wire_trust_broker_config() -> None:
    # Execute: the chart's files are links to deploy/mosquitto, so they cannot drift
    links = {p.name: p.resolve() for p in BROKER_FILES.iterdir()}

    # Assert
    assert all(p.is_symlink() for p in BROKER_FILES.iterdir())
    assert links == {"acl": DEPLOY / "acl", "mosquitto.conf": DEPLOY / "mosquitto.conf"}


def test_the_packaged_chart_carries_the_broker_files(tmp_path: Path) -> None:
    # Prepare
    import tarfile

    import helm_python

    # Execute: `helm package` follows the links and stores the contents
    archive = tarfile.open(helm_python.package(CHART, destination=tmp_path))
    packaged = {
        name: archive.extractfile(f"fedward/files/mosquitto/{name}").read()  # type: ignore[union-attr]
        for name in ("acl", "mosquitto.conf")
    }

    # Assert
    assert packaged == {name: (DEPLOY / name).read_bytes() for name in packaged}


def test_the_broker_config_refuses_anonymous_and_plaintext() -> None:
    # Prepare
    conf = (BROKER_FILES / "mosquitto.conf").read_text().splitlines()

    # Execute
    settings = {
        line.split()[0]: line.split()[1:]
        for line in conf
        if line.strip() and not line.startswith("#")
    }

    # Assert
    assert settings["allow_anonymous"] == ["false"]
    assert settings["require_certificate"] == ["true"]
    assert "certfile" in settings and "acl_file" in settings
    assert settings["listener"] == ["8883"]  # the chart's containerPort


# --- check_release.py against a real Mosquitto --------------------------------


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_release", CHART / "files/tests/check_release.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pki(folder: Path) -> None:
    """ca.crt, tls.crt/tls.key (broker), device.crt/device.key (CN dev-0001)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test study CA", ca_key, None, ca=True)
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    for stem, cn in (("tls", "localhost"), ("device", "dev-0001")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(cn, key, (ca.subject, ca_key), ca=False)
        (folder / f"{stem}.crt").write_bytes(cert.public_bytes(pem))
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_mosquitto(folder: Path, conf_text: str) -> Iterator[int]:
    binary = shutil.which("mosquitto")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed")
    port = _free_port()
    conf = conf_text.replace("/mosquitto/", f"{folder}/").replace(
        "listener 8883", f"listener {port}"
    )
    if os.geteuid() == 0:
        conf += (
            "\nuser root\n"  # as root Mosquitto would switch to its own user, which cannot read tmp
        )
    (folder / "config").mkdir(exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    shutil.copy(BROKER_FILES / "acl", folder / "config" / "acl")
    (folder / "config" / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen(
        [binary, "-c", str(folder / "config" / "mosquitto.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"mosquitto did not start with the chart's config:\n{out}")
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def chart_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    (tmp_path / "tls").mkdir()
    _write_pki(tmp_path / "tls")
    for port in _start_mosquitto(tmp_path, (BROKER_FILES / "mosquitto.conf").read_text()):
        yield port, tmp_path / "tls"


def test_helm_test_check_passes_on_the_chart_broker(chart_broker: tuple[int, Path]) -> None:
    # Prepare
    port, tls = chart_broker
    check = _load_check()

    # Execute
    anonymous = check.check_broker_refuses_anonymous("localhost", port, str(tls / "ca.crt"))
    plaintext = check.check_broker_refuses_plaintext("localhost", port)

    # Assert
    assert anonymous == []
    assert plaintext == []


def test_a_device_certificate_is_accepted_by_the_chart_broker(
    chart_broker: tuple[int, Path],
) -> None:
    # Prepare: the positive control: same broker, a certificate signed by the study CA
    port, tls = chart_broker
    check = _load_check()
    context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    context.load_cert_chain(str(tls / "device.crt"), str(tls / "device.key"))

    # Execute
    with socket.create_connection(("localhost", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(check._connect_packet("dev-0001"))
            code = check._read_connack(conn)

    # Assert
    assert code == 0


def test_the_check_reports_a_broker_that_admits_anonymous_clients(tmp_path: Path) -> None:
    # Prepare: the chart's config with the lines that keep strangers out flipped
    (tmp_path / "tls").mkdir()
    _write_pki(tmp_path / "tls")
    conf = (
        (BROKER_FILES / "mosquitto.conf")
        .read_text()
        .replace("allow_anonymous false", "allow_anonymous true")
        .replace("require_certificate true", "require_certificate false")
        .replace("use_identity_as_username true", "use_identity_as_username false")
    )
    check = _load_check()

    # Execute
    for port in _start_mosquitto(tmp_path, conf):
        failures = check.check_broker_refuses_anonymous(
            "localhost", port, str(tmp_path / "tls" / "ca.crt")
        )

    # Assert
    assert failures == ["broker ACCEPTED an anonymous client without a certificate"]


def test_the_check_reports_an_unreachable_broker() -> None:
    # Execute
    failures = _load_check().check_broker_refuses_anonymous(
        "127.0.0.1", _free_port(), "/nonexistent-ca.crt"
    )

    # Assert: unreachable is a failure, never taken as "refused"
    assert len(failures) == 1 and "unreachable" in failures[0]


def test_the_coordinator_identity_is_the_acl_user() -> None:
    # Prepare
    from fedward.coordinator.settings import BrokerSettings

    deployment = named(manifests("default"), "Deployment", "-coordinator")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    acl_users = [
        line.split()[1]
        for line in (BROKER_FILES / "acl").read_text().splitlines()
        if line.startswith("user ")
    ]

    # Assert: the generated client certificate's CN, the client id and the ACL agree
    assert env["FEDWARD_MQTT__CLIENT_ID"] == BrokerSettings().client_id
    assert env["FEDWARD_MQTT__CLIENT_ID"] in acl_users


def test_generated_pki_chains_to_one_study_ca_with_the_right_names() -> None:
    # Prepare
    import base64

    docs = manifests("default")

    def load(secret: str, key: str) -> x509.Certificate:
        data = named(docs, "Secret", secret)["data"][key]
        return x509.load_pem_x509_certificate(base64.b64decode(data))

    ca = load("-study-ca", "ca.crt")
    server = load("-broker-tls", "tls.crt")
    client = load("-coordinator-mqtt", "tls.crt")

    # Execute
    for cert in (server, client):
        cert.verify_directly_issued_by(ca)  # raises if another key signed it
    names = server.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)

    # Assert
    assert "fw-fedward-broker.clinical.svc" in names
    assert (
        client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "fedward-coordinator"
    )
    assert load("-broker-tls", "ca.crt") == ca == load("-coordinator-mqtt", "ca.crt")
    # EC keys, like fedward pki's own, so `fedward pki device` can sign with this CA
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
