"""``fedward edge run``: one edge agent against a broker, until interrupted.

The device is provisioned with what the wire contract does not carry: the
model architecture and momentum (they must equal the study's), its class
and training memory, and its dataset (``.npz`` with ``x`` float32 [n, C, L]
and ``y`` int64). Its key, outbox and held model live in ``--state-dir``.

Trust: the first run needs the operator-issued enrolment secret for this
device id (``--enrolment-secret-file``, or ``FEDWARD_ENROLMENT_SECRET``); the
agent then pins the coordinator's key in its state dir, signs everything it
sends and acts only on what the coordinator signed. The broker connection
speaks ``mqtts://`` with the study CA (``--ca-file``), a client certificate
(``--cert-file``/``--key-file``) and/or a username and password
(``--username``, ``FEDWARD_MQTT_PASSWORD``), as ``fedward pki`` issues them.
An agent the coordinator refuses (revoked, unknown, no valid secret) stops
with the coordinator's reason and exit code 1.
"""

from __future__ import annotations

import logging
import random
import secrets
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr
from rich.console import Console

from fedward.edge.agent import AgentError, EdgeAgent
from fedward.edge.dataset import DatasetError, load_dataset
from fedward.edge.identity import KeyFileError, load_or_create_identity
from fedward.edge.settings import AgentSettings
from fedward.privacy.accounting import Accountant
from fedward.protocol.errors import ProtocolError, TransportError
from fedward.protocol.messages import DeviceClass
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttProtocol, MqttSettings, TlsSettings
from fedward.tinytrain.models import ModelKind

from ..live import LiveError, parse_broker_url

app = typer.Typer(help="Run an edge device agent.", no_args_is_help=True)


@app.command()
def run(
    broker: Annotated[str, typer.Option(help="mqtt://host:port")],
    study: Annotated[str, typer.Option(help="Study id to join.")],
    device_id: Annotated[str, typer.Option(help="This device's id (also its MQTT client id).")],
    data: Annotated[
        Path,
        typer.Option(
            help=".npz with x float32 \\[n, channels, length] and y int64 \\[n] (class labels)."
        ),
    ],
    device_class: Annotated[
        DeviceClass, typer.Option("--class", help="Device class.")
    ] = DeviceClass.WEARABLE,
    memory_bytes: Annotated[int, typer.Option(min=1, help="Memory for training.")] = 640 * 1024,
    state_dir: Annotated[
        Path | None, typer.Option(help="Key, outbox, held model (default: ~/.fedward/edge/ID).")
    ] = None,
    protocol: Annotated[MqttProtocol, typer.Option(help="MQTT version.")] = MqttProtocol.MQTT5,
    model_kind: Annotated[ModelKind, typer.Option(help="Study model.")] = ModelKind.CNN,
    in_channels: Annotated[int, typer.Option(min=1)] = 3,
    window: Annotated[int, typer.Option(min=1)] = 500,
    num_classes: Annotated[int, typer.Option(min=2)] = 4,
    width: Annotated[int, typer.Option(min=1)] = 24,
    momentum: Annotated[float, typer.Option(min=0, max=0.999)] = 0.9,
    heartbeat: Annotated[float, typer.Option(min=0.1, help="Heartbeat interval (s).")] = 10.0,
    seed: Annotated[int | None, typer.Option(help="Training seed (default: random).")] = None,
    dp_epsilon: Annotated[
        float | None,
        typer.Option(
            help="This device's own privacy budget (epsilon at --dp-delta over all its "
            "DP tasks); without it the agent declines DP tasks.",
        ),
    ] = None,
    dp_delta: Annotated[float, typer.Option(help="In (0, 1); checked by the settings.")] = 1e-5,
    dp_accountant: Annotated[Accountant, typer.Option(help="How epsilon is composed.")] = (
        Accountant.RDP
    ),
    dp_max_physical_batch: Annotated[
        int, typer.Option(min=1, help="Largest DP-SGD micro-batch the device's memory allows.")
    ] = 16,
    enrolment_secret_file: Annotated[
        Path | None, typer.Option(help="File holding this device's one-time enrolment secret.")
    ] = None,
    enrolment_secret: Annotated[
        str | None,
        typer.Option(
            envvar="FEDWARD_ENROLMENT_SECRET", hidden=True, help="The secret itself (env only)."
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(help="Run unsigned, without a secret or pinned key (test brokers only)."),
    ] = False,
    username: Annotated[str | None, typer.Option(help="Broker username.")] = None,
    password: Annotated[
        str | None, typer.Option(envvar="FEDWARD_MQTT_PASSWORD", hidden=True)
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="Study CA (PEM) for mqtts://.")] = None,
    cert_file: Annotated[Path | None, typer.Option(help="Client certificate (PEM).")] = None,
    key_file: Annotated[Path | None, typer.Option(help="Client key (PEM).")] = None,
    audit_public_key: Annotated[
        str | None,
        typer.Option(
            help="The coordinator's audit-log public key (64 hex, from the operator, not from "
            "the coordinator): SecAgg peers' identity keys are then checked against its signed "
            "enrolment records. Without it the device warns that peer keys are unchecked."
        ),
    ] = None,
) -> None:
    """Enrol, train on tasks, deliver updates exactly once; Ctrl-C to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    console = Console()
    try:
        address = parse_broker_url(broker, protocol=protocol)
        if enrolment_secret_file is not None:
            enrolment_secret = enrolment_secret_file.read_text(encoding="ascii").strip()
        tls = None
        if address.tls or ca_file or cert_file:
            tls = TlsSettings(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        home = state_dir or Path.home() / ".fedward" / "edge" / device_id
        if enrolment_secret is None and not insecure and not (home / "coordinator.pub").exists():
            raise ValueError(
                "this device has no enrolment secret and no pinned coordinator key: ask the "
                "operator for one (fedward pki enrolment-secret) and pass "
                "--enrolment-secret-file, or --insecure for an unauthenticated test broker"
            )
        settings = AgentSettings(
            device_id=device_id,
            study_id=study,
            device_class=device_class,
            memory_bytes=memory_bytes,
            data_path=data,
            state_dir=home,
            enrolment_secret=SecretStr(enrolment_secret) if enrolment_secret else None,
            model_kind=model_kind,
            in_channels=in_channels,
            window=window,
            num_classes=num_classes,
            width=width,
            momentum=momentum,
            heartbeat_interval_s=heartbeat,
            dp_epsilon=dp_epsilon,
            dp_delta=dp_delta,
            dp_accountant=dp_accountant,
            dp_max_physical_batch_size=dp_max_physical_batch,
            audit_public_key=audit_public_key,
        )
        dataset = load_dataset(data, channels=in_channels, window=window, num_classes=num_classes)
        identity = load_or_create_identity(settings.state_dir, device_id=device_id)
        transport = MqttTransport(
            MqttSettings(
                host=address.host,
                port=address.port,
                client_id=device_id,
                protocol=address.protocol,
                clean_start=False,
                username=username,
                password=SecretStr(password) if password else None,
                tls=tls,
            )
        )
        agent = EdgeAgent(
            settings,
            transport=transport,
            identity=identity,
            dataset=dataset,
            rng=random.Random(seed if seed is not None else secrets.randbits(62)),
        )
    except (LiveError, DatasetError, KeyFileError, ValueError, OSError, ProtocolError) as exc:
        console.print(f"[red]cannot start:[/] {exc}")
        raise typer.Exit(2) from exc
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        agent.start(wait_enrolled_s=60)
        console.print(f"{device_id} enrolled in {study} on {address.url}; Ctrl-C to stop")
        while not stop.wait(1.0):
            if agent.refused is not None:
                raise AgentError(f"the coordinator refused this device: {agent.refused}")
    except KeyboardInterrupt:
        pass
    except (AgentError, TransportError) as exc:  # TransportError: the broker not reached
        console.print(f"[red]agent stopped:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        agent.stop()
        s = agent.stats
        console.print(
            f"tasks {s.tasks_completed}, updates {s.updates_published} (+{s.republished} resent), "
            f"pending in outbox {len(agent.outbox)}"
        )
