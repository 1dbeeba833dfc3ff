"""``fedward pki``: the study CA, broker, coordinator and device credentials, the
broker configuration, and operator-issued enrolment secrets.

The credentials and the rendering live in :mod:`fedward.protocol.credentials`
(why a CA per study, the directory layout); this is the command line::

    fedward pki init --dir D [--broker-host H ...]     CA, broker and coordinator
    fedward pki device --dir D --device-id X           a device's certificate
    fedward pki broker-config --dir D --out O          mosquitto.conf + acl for D
    fedward pki enrolment-secret --api URL --study S --device-id X
                                                       ask the coordinator for a secret
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedward.protocol.credentials import (
    LOCAL_BROKER_NAMES,
    BrokerAuth,
    PkiError,
    init_study_pki,
    issue_device,
    pki_tls,
    render_broker_config,
)
from fedward.protocol.credentials import (
    write_file as _write,
)

__all__ = ["app", "pki_tls"]

app = typer.Typer(help="Credentials and broker configuration of a study.", no_args_is_help=True)
console = Console()


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
        names = tuple(broker_host or LOCAL_BROKER_NAMES)
        init_study_pki(directory, study=study, broker_names=names)
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
