"""Study credentials: the CA, broker, coordinator and device certificates, and the
broker configuration rendered from ``deploy/mosquitto``.

Why its own CA per study: the broker trusts exactly the certificates this CA
signed, and a device certificate's CN is its device id, which the broker's ACL
(``deploy/mosquitto/acl``) binds to the device's own topics. So a device can
neither publish as another device nor read another device's tasks, whatever
client id it claims. Keys are written ``0600``, certificates ``0644``.

Here, on the transport floor beside :mod:`fedward.protocol.mqtt_settings`, so the
CLI (``fedward pki``), ``fedward up`` and the benchmarks share one implementation.

Layout of a credentials directory (the broker's files carry the names its
container expects)::

    ca.crt ca.key                 the study CA (keep ca.key offline)
    tls.crt tls.key               the broker's server certificate
    fedward-coordinator.crt/.key  the coordinator's client certificate
    devices/<id>.crt/.key         one client certificate per device
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedward.protocol.errors import ProtocolError
from fedward.protocol.ids import is_valid_id
from fedward.protocol.mqtt_settings import TlsSettings

COORDINATOR_CN = "fedward-coordinator"
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
"""The shipped broker configuration (a source checkout; the Helm chart copies it)."""
_VALID_DAYS = 825


class PkiError(ProtocolError):
    """A credential cannot be issued or a configuration rendered (the message says why)."""


class BrokerAuth(StrEnum):
    CERT = "cert"  # a client certificate per device (CN = device id)
    PASSWORD = "password"  # username/password per device (password_file), TLS server auth


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def write_file(path: Path, data: bytes, *, mode: int) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedward"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def create_ca(directory: Path, *, study: str) -> Issued:
    """A new study CA in ``directory`` (refuses to overwrite one)."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() or key_path.exists():
        raise PkiError(f"{directory} already holds a CA; use another --dir")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"fedward study CA {study}"))
        .issuer_name(_name(f"fedward study CA {study}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(key, hashes.SHA256())
    )
    write_file(key_path, _key_pem(key), mode=0o600)
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return Issued(cert_path, key_path)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise PkiError(f"no usable study CA in {directory} ({exc}); run fedward pki init") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{directory / 'ca.key'} is not an EC key made by fedward pki")
    return cert, key


def issue(
    directory: Path,
    *,
    cn: str,
    cert_path: Path,
    key_path: Path,
    server_names: tuple[str, ...] = (),
) -> Issued:
    """A certificate for ``cn`` signed by the CA in ``directory`` (a server one if
    ``server_names`` are given: DNS names or IP addresses)."""
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_file(key_path, _key_pem(key), mode=0o600)
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return Issued(cert_path, key_path)


def issue_device(directory: Path, device_id: str) -> Issued:
    if not is_valid_id(device_id):
        raise PkiError("a device id must match [A-Za-z0-9_.-]{1,64}")
    devices = directory / "devices"
    return issue(
        directory,
        cn=device_id,
        cert_path=devices / f"{device_id}.crt",
        key_path=devices / f"{device_id}.key",
    )


LOCAL_BROKER_NAMES = ("localhost", "127.0.0.1")


def init_study_pki(
    directory: Path, *, study: str, broker_names: tuple[str, ...] = LOCAL_BROKER_NAMES
) -> None:
    """A credentials directory (the layout above): the study CA, the broker's server
    certificate for ``broker_names`` (the first is its CN) and the coordinator's."""
    if not broker_names:
        raise PkiError("the broker needs at least one DNS name or IP")
    create_ca(directory, study=study)
    issue(
        directory,
        cn=broker_names[0],
        cert_path=directory / "tls.crt",
        key_path=directory / "tls.key",
        server_names=broker_names,
    )
    issue(
        directory,
        cn=COORDINATOR_CN,
        cert_path=directory / f"{COORDINATOR_CN}.crt",
        key_path=directory / f"{COORDINATOR_CN}.key",
    )


def render_broker_config(
    *,
    tls_dir: Path,
    config_dir: Path,
    data_dir: Path,
    port: int = 8883,
    auth: BrokerAuth = BrokerAuth.CERT,
    run_as: str | None = None,
) -> tuple[str, str]:
    """``(mosquitto.conf, acl)`` from ``deploy/mosquitto`` for local paths and a port.

    The canonical files name the container's paths; only those paths, the port and,
    for ``PASSWORD``, the authentication lines change, so what is tested here is
    what the chart deploys. ``run_as``: the ``user`` Mosquitto keeps when started
    as root (by default it drops to ``mosquitto``, which cannot read 0600 keys of
    another user).
    """
    try:
        conf = (DEPLOY_DIR / "mosquitto.conf").read_text()
        acl = (DEPLOY_DIR / "acl").read_text()
    except OSError as exc:
        raise PkiError(f"the broker configuration is not at {DEPLOY_DIR}: {exc}") from exc
    conf = (
        conf.replace("/mosquitto/tls/", f"{tls_dir}/")
        .replace("/mosquitto/config/", f"{config_dir}/")
        .replace("/mosquitto/data/", f"{data_dir}/")
        .replace("listener 8883", f"listener {port}")
    )
    if auth is BrokerAuth.PASSWORD:
        conf = conf.replace("require_certificate true", "require_certificate false").replace(
            "use_identity_as_username true", f"password_file {config_dir}/passwd"
        )
    if run_as is not None:
        conf += f"user {run_as}\n"
    return conf, acl


def pki_tls(directory: Path) -> tuple[TlsSettings, Callable[[str], TlsSettings]]:
    """The coordinator's TLS settings and, per device id, a device's (its certificate
    is issued from the study CA in ``directory`` on first use)."""
    ca = directory / "ca.crt"
    coordinator = TlsSettings(
        ca_file=ca,
        cert_file=directory / f"{COORDINATOR_CN}.crt",
        key_file=directory / f"{COORDINATOR_CN}.key",
    )

    def device_tls(device_id: str) -> TlsSettings:
        cert = directory / "devices" / f"{device_id}.crt"
        if not cert.exists():
            issue_device(directory, device_id)
        return TlsSettings(ca_file=ca, cert_file=cert, key_file=cert.with_suffix(".key"))

    return coordinator, device_tls


__all__ = [
    "COORDINATOR_CN",
    "BrokerAuth",
    "Issued",
    "PkiError",
    "LOCAL_BROKER_NAMES",
    "create_ca",
    "init_study_pki",
    "write_file",
    "issue",
    "issue_device",
    "pki_tls",
    "render_broker_config",
]
