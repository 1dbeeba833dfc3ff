"""``fedward pki``: the study CA, broker, coordinator and device credentials, the
broker configuration, and operator-issued enrolment secrets.

Why its own CA per study: the broker trusts exactly the certificates this CA
signed, and a device certificate's CN is its device id, which the broker's ACL
(``deploy/mosquitto/acl``) binds to the device's own topics. So a device can
neither publish as another device nor read another device's tasks, whatever
client id it claims. Keys are written ``0600``, certificates ``0644``.

Layout of ``--dir`` (the broker's files carry the names its container expects)::

    ca.crt ca.key                 the study CA (keep ca.key offline)
    tls.crt tls.key               the broker's server certificate
    fedward-coordinator.crt/.key  the coordinator's client certificate
    devices/<id>.crt/.key         one client certificate per device

Commands::

    fedward pki init --dir D [--broker-host H ...]     CA, broker and coordinator
    fedward pki device --dir D --device-id X           a device's certificate
    fedward pki broker-config --dir D --out O          mosquitto.conf + acl for D
    fedward pki enrolment-secret --api URL --study S --device-id X
                                                       ask the coordinator for a secret
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rich.console import Console

import fedward
from fedward.errors import CliError
from fedward.protocol.ids import is_valid_id
from fedward.protocol.mqtt_settings import TlsSettings

app = typer.Typer(help="Credentials and broker configuration of a study.", no_args_is_help=True)
console = Console()

COORDINATOR_CN = "fedward-coordinator"
DEPLOY_DIR = Path(fedward.__file__).resolve().parent.parent / "deploy" / "mosquitto"
_VALID_DAYS = 825


class PkiError(CliError):
    """A credential cannot be issued or a configuration rendered (the message says why)."""


class BrokerAuth(StrEnum):
    CERT = "cert"  # a client certificate per device (CN = device id)
    PASSWORD = "password"  # username/password per device (password_file), TLS server auth


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write(path: Path, data: bytes, *, mode: int) -> None:
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
    _write(key_path, _key_pem(key), mode=0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
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
    _write(key_path, _key_pem(key), mode=0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
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


# -- commands ----------------------------------------------------------------------------

DirOption = Annotated[Path, typer.Option("--dir", help="Where the study's credentials live.")]


@app.command()
def init(
    directory: DirOption,
    study: Annotated[str, typer.Option(help="Study id (named in the CA).")] = "study",
    broker_host: Annotated[
        list[str] | None, typer.Option(help="Broker DNS name or IP (repeatable).")
    ] = None,
) -> None:
    """Create the study CA, the broker's server certificate and the coordinator's."""
    try:
        create_ca(directory, study=study)
        names = tuple(broker_host or ["localhost", "127.0.0.1"])
        issue(
            directory,
            cn=names[0],
            cert_path=directory / "tls.crt",
            key_path=directory / "tls.key",
            server_names=names,
        )
        issue(
            directory,
            cn=COORDINATOR_CN,
            cert_path=directory / f"{COORDINATOR_CN}.crt",
            key_path=directory / f"{COORDINATOR_CN}.key",
        )
    except PkiError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    console.print(
        f"study CA, broker ({', '.join(names)}) and coordinator credentials in {directory}"
    )


@app.command()
def device(
    directory: DirOption,
    device_id: Annotated[str, typer.Option(help="The device id (the certificate's CN).")],
) -> None:
    """Issue a device's client certificate (its CN is the device id the ACL binds)."""
    try:
        issued = issue_device(directory, device_id)
    except PkiError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    console.print(f"{issued.cert} and {issued.key} (0600): copy both to the device")


@app.command("broker-config")
def broker_config(
    directory: DirOption,
    out: Annotated[Path, typer.Option(help="Where to write mosquitto.conf and acl.")],
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8883,
    auth: Annotated[BrokerAuth, typer.Option(help="Client certificates or passwords.")] = (
        BrokerAuth.CERT
    ),
) -> None:
    """Render deploy/mosquitto for this directory's certificates (run: mosquitto -c OUT/mosquitto.conf)."""
    try:
        conf, acl = render_broker_config(
            tls_dir=directory.resolve(),
            config_dir=out.resolve(),
            data_dir=(out / "data").resolve(),
            port=port,
            auth=auth,
            run_as="root" if os.geteuid() == 0 else None,
        )
    except PkiError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    (out / "data").mkdir(parents=True, exist_ok=True)
    _write(out / "mosquitto.conf", conf.encode(), mode=0o644)
    _write(out / "acl", acl.encode(), mode=0o644)
    hint = (
        " (add users with: mosquitto_passwd OUT/passwd DEVICE_ID)"
        if auth is BrokerAuth.PASSWORD
        else ""
    )
    console.print(f"{out / 'mosquitto.conf'} and {out / 'acl'} written{hint}")


@app.command("enrolment-secret")
def enrolment_secret(
    study: Annotated[str, typer.Option(help="Study id.")],
    device_id: Annotated[str, typer.Option(help="The device id the secret is for.")],
    api: Annotated[str, typer.Option(help="Coordinator API, e.g. http://127.0.0.1:8080")] = (
        "http://127.0.0.1:8080"
    ),
    token: Annotated[
        str | None, typer.Option(envvar="FEDWARD_TOKEN", help="An operator token (devices:write).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the secret here (0600).")] = None,
) -> None:
    """Ask the running coordinator for a device's one-time enrolment secret (audited)."""
    import httpx

    if not token:
        console.print("[red]an operator token is needed (--token or FEDWARD_TOKEN)[/]")
        raise typer.Exit(2)
    url = f"{api.rstrip('/')}/v1/studies/{study}/devices/{device_id}/enrolment-secret"
    try:
        response = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach the coordinator at {api}: {exc}[/]")
        raise typer.Exit(1) from None
    if response.status_code != 201:
        console.print(f"[red]refused ({response.status_code}): {response.text[:300]}[/]")
        raise typer.Exit(1)
    secret = response.json()["secret"]
    if out is not None:
        _write(out, secret.encode(), mode=0o600)
        console.print(
            f"enrolment secret for {device_id} written to {out} (one-time; give it to the device)"
        )
    else:
        typer.echo(secret)
