"""Coordinator ingest throughput over MQTT with persistence on.

What is measured: how many updates per second the live coordinator
(``StudyService`` + ``StudyBridge`` over a real broker) decodes, judges,
persists (SQLite file, or PostgreSQL) and acknowledges, and the latency from
an update's publish to its Ack (the Ack is sent after the database commit, so
"acked" means durably accepted, buffered or merged).

How: ``--devices`` publisher devices run in a separate process (so they do not
share the coordinator's GIL), each with its own MQTT connection. They enrol
with a real Ed25519 key, and answer every Task at once with a precomputed
sparse update of the task's subset (FTTE's global subset, about 10,000
parameters, encoded as a real update frame): no training, so the coordinator
is the bottleneck. Every device has a task in flight (concurrency = devices),
so devices publish as fast as the service hands out tasks and accepts updates.
The first ``--warmup`` acks are not measured.

Usage::

    python -m fedward.bench.ingest                         # SQLite, Mosquitto on 127.0.0.1:1883
    python -m fedward.bench.ingest --postgres              # also PostgreSQL on 127.0.0.1:5432
    python -m fedward.bench.ingest --updates 5000 --devices 64 --out bench-results/ingest.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import SecretStr

from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.strategies import StrategyName
from fedward.coordinator.study_spec import StudySpec, build_planner
from fedward.errors import SimulationError
from fedward.live import BrokerAddress, parse_broker_url
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttProtocol, MqttSettings
from fedward.tinytrain.models import build_model, param_shapes

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


class TooFewAcks(SimulationError):
    """The run ended with fewer than two measured acks: no rate can be computed."""


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    broker: BrokerAddress
    devices: int
    updates: int
    warmup: int
    width: int
    buffer_size: int
    timeout_s: float


def bench_spec(config: IngestConfig) -> tuple[StudySpec, int, int]:
    """The study, the device memory that gives FTTE's tier-4 subset, and its size."""
    spec = StudySpec(
        name="bench-ingest",
        strategy=StrategyName.FTTE,
        width=config.width,
        concurrency=config.devices,
        buffer_size=config.buffer_size,
        task_deadline_s=600.0,
    )
    planner = build_planner(spec)
    tier = planner.ladder.tier(4)
    shapes = param_shapes(build_model(spec.model_settings(), seed=0))
    return spec, planner.tier_bytes[3], tier.numel(shapes)


# -- publisher process (imports only the protocol floor) ----------------------------


def _publisher_main(
    broker: tuple[str, int, str],
    study_id: str,
    devices: int,
    memory: int,
    shapes: dict[str, tuple[int, ...]],
    target: int,
    results: Any,
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from fedward.protocol.messages import (
        Ack,
        DeviceClass,
        Enrol,
        EnrolAck,
        Task,
        Update,
        decode_frame,
        encode_frame,
        update_energy,
    )
    from fedward.protocol.topics import TopicKind, device_topic

    rng = np.random.default_rng(0)
    deltas = {n: (0.001 * rng.standard_normal(s)).astype(np.float32) for n, s in shapes.items()}
    lock = threading.Lock()
    sent: dict[str, float] = {}
    acks: list[tuple[float, float]] = []  # (ack time, latency)
    done = threading.Event()
    enrolled = threading.Semaphore(0)
    transports = []

    def make_device(i: int) -> None:
        device_id = f"p{i:04d}"
        transport = MqttTransport(
            MqttSettings(
                host=broker[0],
                port=broker[1],
                protocol=MqttProtocol(broker[2]),
                client_id=f"{study_id}.{device_id}"[-64:],
                clean_start=True,
                max_inflight=100,
            )
        )

        def on_task(topic: str, payload: bytes) -> None:
            task, _ = decode_frame(payload, max_bytes=1 << 24)
            if not isinstance(task, Task):
                return
            sent_deltas = {n: deltas[n] for n in task.subset_names}
            header = Update(
                task_id=task.task_id,
                device_id=device_id,
                base_model_version=task.model_version,
                subset_id=task.subset_id,
                num_samples=32,
                # the coordinator checks this against the tensors
                update_energy=update_energy(sent_deltas),
                train_loss=0.5,
            )
            frame = encode_frame(header, sent_deltas)
            with lock:
                sent[task.task_id] = time.perf_counter()
            transport.publish(device_topic(TopicKind.UPDATE, study_id, device_id), frame)

        def on_ack(topic: str, payload: bytes) -> None:
            message, _ = decode_frame(payload, max_bytes=1 << 24)
            now = time.perf_counter()
            if isinstance(message, EnrolAck):
                enrolled.release()
            elif isinstance(message, Ack):
                with lock:
                    started = sent.pop(message.task_id, None)
                    if started is not None and message.status.value != "rejected":
                        acks.append((now, now - started))
                        if len(acks) >= target:
                            done.set()

        transport.subscribe(device_topic(TopicKind.TASK, study_id, device_id), on_task)
        transport.subscribe(device_topic(TopicKind.ACK, study_id, device_id), on_ack)
        transport.connect()
        transports.append(transport)
        key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        enrol = Enrol(
            device_id=device_id,
            study_id=study_id,
            device_class=DeviceClass.GATEWAY,
            memory_bytes=memory,
            public_key=key,
        )
        transport.publish(device_topic(TopicKind.ENROL, study_id, device_id), encode_frame(enrol))

    for i in range(devices):
        make_device(i)
    for _ in range(devices):
        enrolled.acquire(timeout=30)
    results.put(("enrolled", devices))
    done.wait(timeout=3600)
    with lock:
        results.put(("acks", list(acks)))
    for transport in transports:
        try:
            transport.close()
        except Exception:  # noqa: S110 - best-effort shutdown of a benchmark process
            pass


# -- coordinator side ---------------------------------------------------------------


def run_ingest(config: IngestConfig, *, database_url: str | None, label: str) -> dict[str, Any]:
    spec, memory, numel = bench_spec(config)
    shapes = param_shapes(build_model(spec.model_settings(), seed=0))
    data_dir = Path(tempfile.mkdtemp(prefix="fedward-bench-ingest-"))
    settings = CoordinatorSettings(
        database_url=database_url or f"sqlite:///{data_dir / 'coordinator.db'}",
        data_dir=data_dir,
        operator_token=SecretStr(secrets.token_urlsafe(32)),
    )
    service = StudyService.open(settings, seed=0)
    study_id = f"bench-{secrets.token_hex(4)}"
    service.create_study(spec, study_id=study_id)
    service.start(study_id)
    transport = MqttTransport(
        MqttSettings(
            host=config.broker.host,
            port=config.broker.port,
            protocol=config.broker.protocol,
            client_id=f"coord.{study_id}",
            clean_start=True,
            max_inflight=100,
        )
    )
    bridge = StudyBridge(service, transport, study_id=study_id, dispatch_interval_s=0.2)
    bridge.start()
    transport.connect()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    target = config.warmup + config.updates
    broker = (config.broker.host, config.broker.port, config.broker.protocol.value)
    publisher = ctx.Process(
        target=_publisher_main,
        args=(broker, study_id, config.devices, memory, shapes, target, results),
        daemon=True,
    )
    try:
        publisher.start()
        kind, _ = results.get(timeout=120)
        kind, acks = results.get(timeout=config.timeout_s)
        publisher.join(timeout=30)
        status = service.status(study_id)
    finally:
        if publisher.is_alive():
            publisher.terminate()
        bridge.stop()
        transport.close()
        service.close()
    acks.sort()
    measured = acks[config.warmup :]
    if len(measured) < 2:
        raise TooFewAcks(
            f"only {len(acks)} acks received, {len(measured)} after the {config.warmup} "
            "warm-up ones: a rate needs at least 2 measured acks; run with --updates 2 or more"
        )
    wall = (
        measured[-1][0] - acks[config.warmup - 1][0]
        if config.warmup
        else measured[-1][0] - measured[0][0]
    )
    latencies = np.array([lat for _, lat in measured]) * 1000.0
    return {
        "backend": label,
        "updates": len(measured),
        "params_per_update": numel,
        "devices": config.devices,
        "buffer_size": config.buffer_size,
        "wall_s": wall,
        "updates_per_s": len(measured) / wall,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "mean_ms": float(latencies.mean()),
        "merges": status.merges,
        "duplicates": status.duplicates,
        "rejections": {k.value: v for k, v in status.rejections.items()},
        "bridge_rejected": dict(bridge.stats.rejected),
    }


def _postgres_database() -> tuple[str, Any]:
    import psycopg

    admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    name = f"fedward_bench_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | updates | params/update | devices | updates/s | p50 ms | p99 ms | merges |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['updates']} | {r['params_per_update']:,} | {r['devices']} | "
            f"{r['updates_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['merges']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--protocol", default="5", choices=[p.value for p in MqttProtocol])
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--width", type=int, default=20, help="CNN width (20: ~10k-param subset)")
    parser.add_argument("--buffer-size", type=int, default=10)
    parser.add_argument("--postgres", action="store_true", help="also run on PostgreSQL")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/ingest.json"))
    args = parser.parse_args(argv)
    config = IngestConfig(
        broker=parse_broker_url(args.broker, protocol=MqttProtocol(args.protocol)),
        devices=args.devices,
        updates=args.updates,
        warmup=args.warmup,
        width=args.width,
        buffer_size=args.buffer_size,
        timeout_s=args.timeout,
    )
    rows = [run_ingest(config, database_url=None, label="sqlite (file)")]
    if args.postgres:
        url, drop = _postgres_database()
        try:
            rows.append(run_ingest(config, database_url=url, label="postgresql"))
        finally:
            drop()
    table = markdown(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {**vars(args), "out": str(args.out), "cpus": os.cpu_count()},
        "results": rows,
        "markdown": table,
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
