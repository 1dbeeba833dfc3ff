"""``fedward coordinator``: run the coordinator (REST API + MQTT bridge), or migrate its database.

``serve`` runs both sides of a deployment in one process: the operator API
(uvicorn) and, unless ``--no-bridge``, one MQTT connection to the broker of
``FEDWARD_MQTT__*`` with a bridge per running study (see
:class:`fedward.coordinator.mqtt.supervisor.BridgeSupervisor`), sharing one ``StudyService``
so every decision goes through the same lock and transaction. The bridges are
stopped after uvicorn returns (SIGINT/SIGTERM), then the service is closed.

Why the signal handling (:func:`graceful_signals`): Kubernetes stops a pod with
SIGTERM. uvicorn shuts down on it and then re-raises the signal, which under
the default handler killed the process (exit 143) before the service was
closed, so no final tree head was signed over the audit log's tail. Our
handler records the signal instead: uvicorn returns, the bridges stop, the
service closes (log fsynced, final head signed) and the process exits 0.

The database defaults inside ``--data-dir`` (``<data-dir>/coordinator.db``).

Settings come from ``FEDWARD_*`` environment variables (see
:class:`fedward.coordinator.settings.CoordinatorSettings`); the options below override
them. The operator token is required and is best passed as a file
(``--operator-token-file``) or ``FEDWARD_OPERATOR_TOKEN``, not on the command
line, where it would land in the shell history and the process list.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from fedward.coordinator.settings import (
    DEFAULT_DATA_DIR,
    CoordinatorSettings,
    sqlite_url_in,
)
from fedward.protocol.errors import TransportError

app = typer.Typer(help="Run or maintain the live coordinator.", no_args_is_help=True)
console = Console(stderr=True)


def _settings(**overrides: Any) -> CoordinatorSettings:
    token_file: Path | None = overrides.pop("operator_token_file", None)
    values = {k: v for k, v in overrides.items() if v is not None}
    if token_file is not None:
        values["operator_token"] = token_file.read_text(encoding="utf-8").strip()
    try:
        return CoordinatorSettings(**values)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            console.print(f"[red]{where}[/red]: {err['msg']}")
        raise typer.Exit(code=2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="TCP port.")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="sqlite:///path.db or postgresql+psycopg://user@host/db")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Model blobs, audit log and its signing key.")
    ] = None,
    operator_token_file: Annotated[
        Path | None, typer.Option(help="File holding the operator API token.", exists=True)
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    bridge: Annotated[
        bool, typer.Option("--bridge/--no-bridge", help="Also run the MQTT bridge (default).")
    ] = True,
    holdout: Annotated[
        list[str] | None,
        typer.Option(
            help="STUDY=FILE.npz (x, y as for edge run): evaluate each new model of that "
            "existing study on it at the coordinator; its accuracy feeds the stop rule's target."
        ),
    ] = None,
) -> None:
    """Migrate the database to head; serve the operator API and the studies' MQTT bridge."""
    import uvicorn

    from fedward.coordinator.api import create_app
    from fedward.coordinator.service import StudyService

    settings = _settings(
        api_host=host,
        api_port=port,
        database_url=database_url,
        data_dir=data_dir,
        operator_token_file=operator_token_file,
    )
    with graceful_signals() as received:
        service = StudyService.open(settings)
        try:
            _attach_holdouts(service, holdout or [])
            if not received:  # a stop asked for while starting: close without serving
                with serving_bridges(service, settings, enabled=bridge):
                    uvicorn.run(
                        create_app(settings, service=service),
                        host=settings.api_host,
                        port=settings.api_port,
                        log_level=log_level,
                    )
        except TransportError as exc:  # the broker was not reached: say so, no traceback
            console.print(
                f"[red]MQTT broker {settings.mqtt.host}:{settings.mqtt.port}:[/] {exc}\n"
                "Start the broker, fix FEDWARD_MQTT__HOST/PORT, or run with --no-bridge."
            )
            raise typer.Exit(code=1) from None
        finally:
            service.close()
    if received:
        console.print(f"stopped on {signal.Signals(received[0]).name}; audit log signed and closed")


def _attach_holdouts(service: Any, pairs: list[str]) -> None:
    """``STUDY=FILE.npz`` held-out sets, checked against each study's model (exit 2 if not)."""
    from fedward.coordinator.service import InvalidHoldout, StudyNotFound
    from fedward.edge.dataset import DatasetError, load_dataset

    for pair in pairs:
        study_id, sep, file = pair.partition("=")
        try:
            if not sep or not study_id or not file:
                raise InvalidHoldout(f"--holdout {pair!r}: write STUDY=FILE.npz")
            data = load_dataset(Path(file))
            service.attach_holdout(study_id, data.x, data.y)
        except (InvalidHoldout, StudyNotFound, DatasetError) as exc:
            console.print(f"[red]--holdout:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(code=2) from None
        console.print(f"held-out evaluation for {study_id}: {len(data.y)} samples from {file}")


@contextmanager
def graceful_signals() -> Iterator[list[int]]:
    """While serving, SIGTERM and SIGINT only record themselves (see module doc).

    Yields the list of signals received. uvicorn installs its own handlers while
    it runs and, on its way out, re-raises what it caught into these.
    """
    received: list[int] = []

    def record(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def serving_bridges(
    service: Any, settings: CoordinatorSettings, *, enabled: bool = True
) -> Iterator[Any]:
    """The serve-time MQTT side: a supervisor on one broker connection, stopped on exit.

    Yields the :class:`~fedward.coordinator.mqtt.supervisor.BridgeSupervisor` (``None`` if not
    ``enabled``). Why a context manager: the API server blocks until shutdown,
    and the bridges must stop (and the connection close) however it ends.
    """
    if not enabled:
        yield None
        return
    from fedward.coordinator.mqtt.security import WireSecurity
    from fedward.coordinator.mqtt.supervisor import BridgeSupervisor
    from fedward.protocol.mqtt import MqttTransport

    transport = MqttTransport(settings.mqtt.client_settings())
    # Every device message is signed and checked; devices pin this coordinator's key.
    supervisor = BridgeSupervisor(
        service,
        transport,
        max_message_bytes=settings.max_message_bytes,
        security=WireSecurity.from_settings(settings),
    )
    try:
        supervisor.start()
        console.print(f"MQTT bridge on {settings.mqtt.host}:{settings.mqtt.port}")
        yield supervisor
    finally:
        supervisor.stop()
        transport.close()


@app.command()
def migrate(
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="FEDWARD_DATABASE_URL",
            help="Database to upgrade (default: <data-dir>/coordinator.db).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDWARD_DATA_DIR",
            help=f"Data dir of the default database ({DEFAULT_DATA_DIR}).",
        ),
    ] = None,
) -> None:
    """Upgrade the coordinator's database schema to the newest revision."""
    from fedward.coordinator.migrations import current_revision, head_revision, upgrade_to_head
    from fedward.coordinator.store import create_db_engine

    engine = create_db_engine(database_url or sqlite_url_in(data_dir or DEFAULT_DATA_DIR))
    try:
        before = current_revision(engine)
        upgrade_to_head(engine)
        console.print(f"database at revision {head_revision()} (was {before or 'empty'})")
    finally:
        engine.dispose()
