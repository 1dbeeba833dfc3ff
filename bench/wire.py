"""What trust on the wire costs, and a fleet-sized load over the hardened broker.

Two measurements, each on Mosquitto processes this module starts itself from the
shipped configuration (``deploy/mosquitto`` rendered by
:func:`fedward.protocol.credentials.render_broker_config`), so nothing else
shares them:

* ``ratio``: ingest throughput and p50/p99 latency (publish to the Ack sent after
  the database commit) with signatures + TLS + ACL on, as a ratio to both off, in
  one run, same study, same devices, same update frames. "Off" is the same broker
  configuration with TLS, client certificates and the ACL lines removed, and the
  bridge without :class:`~fedward.coordinator.mqtt.security.WireSecurity`.
* ``load``: ``--agents`` (>= 500) signed agents over TLS with client certificates
  and the ACL, in ``--processes`` publisher processes, answering every task at
  once for ``--duration`` seconds; then no new answers and up to 60 s for the
  last acks. Reported: updates sent, merged, buffered, rejected, lost (sent but
  never acknowledged, must be 0), and the coordinator process's CPU seconds and
  memory (peak RSS) over the run. Agents do not train (the coordinator is what is
  measured); their enrolment uses the operator-issued secrets like any device.

Usage (niced: it saturates a small machine)::

    nice -n 10 python -m fedward.bench.wire ratio --updates 1500 --devices 32 --rounds 2
    nice -n 10 python -m fedward.bench.wire load --agents 500 --processes 4 --duration 60
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedward.bench.ingest import IngestConfig, Trust, _Coordinator, bench_spec, run_ingest
from fedward.live import BrokerAddress, free_port
from fedward.protocol.credentials import init_study_pki, render_broker_config
from fedward.protocol.mqtt_settings import MqttProtocol

_TLS_LINES = (
    "cafile", "certfile", "keyfile", "tls_version", "require_certificate",
    "use_identity_as_username", "acl_file",
)  # fmt: skip


def credentials(root: Path) -> Path:
    """A study CA, the broker's and the coordinator's certificates under ``root``."""
    creds = root / "creds"
    init_study_pki(creds, study="bench")
    return creds


@contextmanager
def own_broker(root: Path, creds: Path, *, hardened: bool) -> Iterator[BrokerAddress]:
    """Mosquitto from deploy/mosquitto on a free port; ``hardened=False`` drops TLS and ACL."""
    if shutil.which("mosquitto") is None:
        raise SystemExit("the wire benchmarks need the mosquitto binary")
    port = free_port()
    config = root / ("hardened" if hardened else "plain")
    (config / "data").mkdir(parents=True)
    conf, acl = render_broker_config(
        tls_dir=creds, config_dir=config, data_dir=config / "data", port=port,
        run_as="root" if os.geteuid() == 0 else None,
    )  # fmt: skip
    if not hardened:
        kept = [line for line in conf.splitlines() if line.split(" ")[0] not in _TLS_LINES]
        conf = "\n".join(kept).replace("allow_anonymous false", "allow_anonymous true") + "\n"
    conf = conf.replace("persistence true", "persistence false")
    (config / "mosquitto.conf").write_text(conf)
    (config / "acl").write_text(acl)
    log = (config / "mosquitto.log").open("wb")
    process = subprocess.Popen(
        ["mosquitto", "-c", str(config / "mosquitto.conf")], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((config / "mosquitto.log").read_text())
            time.sleep(0.05)
        yield BrokerAddress("127.0.0.1", port, MqttProtocol.MQTT5, tls=hardened)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def run_ratio(
    *, devices: int, updates: int, warmup: int, width: int, buffer_size: int, rounds: int = 2
) -> dict[str, Any]:
    """Trust off and on, alternated ``rounds`` times (a shared machine's load drifts);
    the ratios of the medians over rounds, and every run's row."""
    root = Path(tempfile.mkdtemp(prefix="fedward-bench-wire-"))
    creds = credentials(root)
    rows: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for round_no in range(rounds):
        for hardened in (False, True) if round_no % 2 == 0 else (True, False):
            with own_broker(root / f"r{round_no}", creds, hardened=hardened) as broker:
                config = IngestConfig(
                    broker=broker, devices=devices, updates=updates, warmup=warmup,
                    width=width, buffer_size=buffer_size, timeout_s=1800,
                )  # fmt: skip
                trust = Trust(tls_dir=creds) if hardened else None
                label = "signed + TLS + ACL" if hardened else "unsigned, plain TCP"
                rows[hardened].append(
                    run_ingest(config, database_url=None, label=label, trust=trust)
                )

    def median(key: str, hardened: bool) -> float:
        return float(statistics.median(r[key] for r in rows[hardened]))

    summary = {
        key: {"off": median(key, False), "on": median(key, True)}
        for key in ("updates_per_s", "p50_ms", "p99_ms")
    }
    return {
        "rounds": rounds,
        "median": summary,
        "throughput_ratio": summary["updates_per_s"]["on"] / summary["updates_per_s"]["off"],
        "p50_ratio": summary["p50_ms"]["on"] / summary["p50_ms"]["off"],
        "p99_ratio": summary["p99_ms"]["on"] / summary["p99_ms"]["off"],
        "rows": rows[False] + rows[True],
    }


def run_load(
    *, agents: int, processes: int, duration_s: float, width: int, buffer_size: int
) -> dict[str, Any]:
    """``agents`` signed agents over the hardened broker for ``duration_s``."""
    root = Path(tempfile.mkdtemp(prefix="fedward-bench-load-"))
    creds = credentials(root)
    with own_broker(root, creds, hardened=True) as broker:
        config = IngestConfig(
            broker=broker, devices=agents, updates=0, warmup=0, width=width,
            buffer_size=buffer_size, timeout_s=duration_s + 600,
        )  # fmt: skip
        spec, memory, numel = bench_spec(config)
        with _Coordinator(
            config, spec, database_url=None, trust=Trust(tls_dir=creds)
        ) as coordinator:
            share = -(-agents // processes)
            publishers = [
                replace(
                    coordinator.publisher_args(
                        memory=memory, devices=range(p * share, min(agents, (p + 1) * share))
                    ),
                    duration_s=duration_s,
                )
                for p in range(processes)
            ]
            reports = coordinator.run(publishers, timeout_s=duration_s + 600)
            wall = time.monotonic() - coordinator.started
            cpu = time.process_time() - coordinator.cpu_at_start
            coordinator.bridge.drain(30)
            status = coordinator.service.status(coordinator.study_id)
            wire = coordinator.service.wire_refusals(coordinator.study_id)
            bridge_rejected = dict(coordinator.bridge.stats.rejected)
    statuses: dict[str, int] = {}
    for report in reports:
        for _, _, st in report["acks"]:
            statuses[st] = statuses.get(st, 0) + 1
    sent = sum(r["sent"] for r in reports)
    acked = sum(statuses.values())
    return {
        "agents": agents,
        "processes": processes,
        "duration_s": duration_s,
        "wall_s": wall,
        "params_per_update": numel,
        "sent": sent,
        "acked": acked,
        "merged": statuses.get("merged", 0),
        "buffered": statuses.get("buffered", 0),
        "rejected": statuses.get("rejected", 0),
        "lost": sent - acked,
        "unacked_at_end": sum(r["unacked"] for r in reports),
        "refused_downlink": sum(r["refused_downlink"] for r in reports),
        "accepted_by_coordinator": status.updates_accepted,
        "merges": status.merges,
        "coordinator_cpu_s": cpu,
        "coordinator_cpu_share": cpu / wall,
        "coordinator_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wire_refusals": wire,
        "bridge_rejected": bridge_rejected,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ratio = sub.add_parser("ratio", help="ingest with trust on vs off, one run")
    ratio.add_argument("--devices", type=int, default=32)
    ratio.add_argument("--updates", type=int, default=1500)
    ratio.add_argument("--warmup", type=int, default=200)
    ratio.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternated")
    load = sub.add_parser("load", help=">= 500 signed agents over TLS + ACL")
    load.add_argument("--agents", type=int, default=500)
    load.add_argument("--processes", type=int, default=4)
    load.add_argument("--duration", type=float, default=60.0)
    for p in (ratio, load):
        p.add_argument("--width", type=int, default=20)
        p.add_argument("--buffer-size", type=int, default=10)
        p.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.what == "ratio":
        result = run_ratio(
            devices=args.devices, updates=args.updates, warmup=args.warmup,
            width=args.width, buffer_size=args.buffer_size, rounds=args.rounds,
        )  # fmt: skip
    else:
        result = run_load(
            agents=args.agents, processes=args.processes, duration_s=args.duration,
            width=args.width, buffer_size=args.buffer_size,
        )  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    out = args.out or Path(f"bench-results/wire-{args.what}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
