"""``fedward up``: a live federation over MQTT in one process.

Starts an embedded amqtt broker (MQTT 3.1.1) on a free loopback port unless
``--broker`` names one, the coordinator service on SQLite in ``--data-dir`` (a
new temp dir by default, kept so the audit log can be verified afterwards),
its MQTT bridge, and one edge agent thread per device; runs the study until
the update budget and prints the held-out accuracy. See :mod:`fedward.live`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr
from rich.console import Console

from fedward.protocol.errors import TransportError
from fedward.protocol.mqtt_settings import MqttProtocol
from fedward.simulation.scenario import StrategyRun

from ..live import LiveError, LiveOptions, parse_broker_url, run_live
from ..progress import make_progress, tracker
from .pki import pki_tls
from .simulate import or_exit, resolve_study


def command(
    devices: Annotated[int, typer.Option(min=1, help="Edge agents to run (threads).")] = 20,
    broker: Annotated[
        str | None, typer.Option(help="mqtt://host:port of a broker; default: embedded amqtt.")
    ] = None,
    protocol: Annotated[
        MqttProtocol, typer.Option(help="MQTT version for --broker (embedded: 3.1.1).")
    ] = MqttProtocol.MQTT5,
    scenario: Annotated[
        str | None,
        typer.Option(
            help="Preset (tiny, quick, full) or a JSON/YAML scenario file (default tiny)."
        ),
    ] = None,
    study: Annotated[
        Path | None, typer.Option(help="A study file (YAML), as for fedward simulate.")
    ] = None,
    strategy: Annotated[
        StrategyRun | None, typer.Option(help="Strategy row (default: the study's, or ftte).")
    ] = None,
    updates: Annotated[
        int | None, typer.Option(min=1, help="Update budget (default: the scenario's).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Coordinator and device state (default: a new temp dir).")
    ] = None,
    time_scale: Annotated[
        float,
        typer.Option(
            min=0, help="Emulate device speeds: wait this x the simulated task time (0: off)."
        ),
    ] = 0.0,
    timeout: Annotated[float, typer.Option(min=1, help="Give up after this many seconds.")] = 1800,
    pki_dir: Annotated[
        Path | None,
        typer.Option(
            help="For an mqtts:// broker with client certificates: the dir of fedward pki "
            "init (study CA; each agent gets its own certificate, CN = device id)."
        ),
    ] = None,
    username: Annotated[str | None, typer.Option(help="Broker username.")] = None,
    password: Annotated[
        str | None, typer.Option(envvar="FEDWARD_MQTT_PASSWORD", hidden=True)
    ] = None,
    secagg: Annotated[
        bool,
        typer.Option(
            "--secagg",
            help="Secure aggregation: every merge is one SecAgg fill (the ftte+secagg row; "
            "with --strategy ftte+secagg+ddp, distributed DP too). The coordinator sees "
            "only each fill's sum.",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option(help="Log transport warnings.")] = False,
) -> None:
    """Run a live study: broker, coordinator, bridge and N agents, until the update budget."""
    logging.basicConfig(level=logging.WARNING if verbose else logging.ERROR)
    console = Console()
    sc, strategy = or_exit(
        console, lambda: resolve_study(study, None, None if study else scenario or "tiny", strategy)
    )
    if secagg and not strategy.secagg:
        if strategy is not StrategyRun.FTTE:
            console.print(
                f"[red]--secagg runs FTTE's secure-aggregation rows, not {strategy.value}:[/] "
                "use --strategy ftte+secagg or ftte+secagg+ddp"
            )
            raise typer.Exit(2)
        strategy = StrategyRun.FTTE_SECAGG
    if sc.data is None:
        sc = type(sc).model_validate({**sc.model_dump(), "devices": devices})
    budget = updates or sc.update_budget
    coordinator_tls, device_tls = (None, None) if pki_dir is None else pki_tls(pki_dir)
    options = LiveOptions(
        coordinator_tls=coordinator_tls,
        device_tls=device_tls,
        username=username,
        password=SecretStr(password) if password else None,
        scenario=sc,
        run=strategy,
        broker=None if broker is None else parse_broker_url(broker, protocol=protocol),
        data_dir=data_dir,
        time_scale=time_scale,
        update_budget=budget,
    )
    try:
        with make_progress() as progress:
            result = run_live(
                options,
                updates=budget,
                progress=tracker(progress)(strategy.value, budget),
                timeout_s=timeout,
            )
    except (LiveError, TransportError) as exc:  # a broker not reached or not started
        console.print(f"[red]live study failed:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"[bold]{strategy.value}[/] live on {result.broker_url}: final accuracy "
        f"{result.final_accuracy:.4f} (last model {result.last_accuracy:.4f}), "
        f"{result.updates} updates, {result.merges} merges, {result.duplicates} duplicate "
        f"deliveries absorbed, wall {result.wall_s:.1f} s"
    )
    d = result.data_dir
    if result.secagg:
        fills, dropouts = result.secagg["fills"], result.secagg["dropouts"]
        console.print(
            f"secure aggregation: {fills.get('opened', 0)} fills opened, "
            f"{fills.get('merged', 0)} merged, {fills.get('aborted', 0)} aborted; dropouts "
            f"{dict(dropouts) or 'none'}; {result.secagg['bytes_in']} bytes in, "
            f"{result.secagg['bytes_out']} out",
            highlight=False,
        )
    if result.stop_reason is not None:
        console.print(f"the coordinator ended the study: {result.stop_reason}", highlight=False)
    metrics = {
        "kind": "live",
        "study": result.study_id,
        "scenario": sc.model_dump(mode="json"),
        "result": {
            "run": options.run.value,
            "scenario": sc.name,
            "final_accuracy": result.final_accuracy,
            "updates": result.updates,
            "merges": result.merges,
            "wall_s": result.wall_s,
            "stop_reason": result.stop_reason,
            "by_class": result.by_class,
            "series": result.series,
            "epsilon_series": result.epsilon_series,
            "privacy": result.privacy,
            "secagg": result.secagg,
        },
    }
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    console.print(f"study id:  {result.study_id}", highlight=False)
    console.print(f"data dir:  {d}  (audit log: {result.audit_log})", highlight=False)
    console.print("look next:", highlight=False)
    console.print(f"  fedward audit verify --data-dir {d}", highlight=False, markup=False)
    if result.privacy:  # a DP study (sample- or patient-level)
        console.print(
            f"  fedward budget report --study {result.study_id} --data-dir {d}",
            highlight=False,
            markup=False,
        )
