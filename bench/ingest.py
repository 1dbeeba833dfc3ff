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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.mqtt.security import RateLimits, WireSecurity
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.strategies import StrategyName
from fedward.coordinator.study_spec import StudySpec, build_planner
from fedward.errors import SimulationError
from fedward.live import BrokerAddress, parse_broker_url
from fedward.protocol.credentials import issue_device, pki_tls
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttProtocol, MqttSettings
from fedward.protocol.signing import MemoryCounter
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


@dataclass(frozen=True, kw_only=True)
class PublisherArgs:
    """What one publisher process needs (picklable: it is spawned)."""

    broker: tuple[str, int, str]
    study_id: str
    device_ids: tuple[str, ...]
    memory: int
    shapes: dict[str, tuple[int, ...]]
    target: int | None = None
    """Stop after this many acks (throughput runs); ``None``: run for ``duration_s``."""
    duration_s: float | None = None
    secrets: tuple[str, ...] | None = None
    """One enrolment secret per device: sign everything, verify everything (trust on)."""
    tls_dir: str | None = None
    """Connect with mqtts: the study CA and each device's own certificate from here."""


def _publisher_main(args: PublisherArgs, results: Any) -> None:
    """Devices that answer every task at once with a precomputed update (no training).

    With ``secrets`` each device enrols with its operator-issued secret, pins the
    coordinator key from the proven EnrolAck, verifies every task and ack, and signs
    every message it sends, exactly as :mod:`fedward.edge.trust` does.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedward.protocol.enrolment import ack_proof, enrol_proof, parse_secret
    from fedward.protocol.messages import (
        Ack,
        DeviceClass,
        Enrol,
        EnrolAck,
        EnrolTicket,
        Task,
        Update,
        decode_frame,
        encode_frame,
        update_energy,
    )
    from fedward.protocol.mqtt_settings import TlsSettings
    from fedward.protocol.signing import ReplayGuard, Role, SealContext, open_seal, seal, verify
    from fedward.protocol.topics import TopicKind, device_topic

    study_id = args.study_id
    rng = np.random.default_rng(0)
    deltas = {
        n: (0.001 * rng.standard_normal(s)).astype(np.float32) for n, s in args.shapes.items()
    }
    lock = threading.Lock()
    sent: dict[str, float] = {}
    acks: list[tuple[float, float, str]] = []  # (ack time, latency, status)
    counts = {"sent": 0, "refused_downlink": 0}
    done = threading.Event()
    stopping = threading.Event()
    enrolled = threading.Semaphore(0)
    transports = []
    replay = ReplayGuard()

    def make_device(i: int, device_id: str) -> None:
        tls = None
        if args.tls_dir is not None:
            root = Path(args.tls_dir)
            tls = TlsSettings(
                ca_file=root / "ca.crt",
                cert_file=root / "devices" / f"{device_id}.crt",
                key_file=root / "devices" / f"{device_id}.key",
            )
        transport = MqttTransport(
            MqttSettings(
                host=args.broker[0],
                port=args.broker[1],
                protocol=MqttProtocol(args.broker[2]),
                client_id=f"{study_id}.{device_id}"[-64:],
                clean_start=True,
                max_inflight=100,
                tls=tls,
                connect_timeout_s=60,
            )
        )
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes_raw()
        secret = parse_secret(args.secrets[i]) if args.secrets else None
        state: dict[str, Any] = {"pinned": None, "counter": 0}
        send_lock = threading.Lock()
        up = SealContext(Role.DEVICE, study_id, device_id)
        down = SealContext(Role.COORDINATOR, study_id, device_id)

        def send(kind: TopicKind, frame: bytes) -> None:
            with send_lock:  # counter order is wire order
                if secret is not None:
                    state["counter"] += 1
                    frame = seal(frame, key=key, context=up, counter=state["counter"])
                transport.publish(device_topic(kind, study_id, device_id), frame)

        def open_downlink(payload: bytes) -> Any:
            if secret is None:
                return decode_frame(payload, max_bytes=1 << 24)[0]
            sealed = open_seal(payload)
            if state["pinned"] is None:  # only a proven EnrolAck pins the key
                message = decode_frame(sealed.frame, max_bytes=1 << 24)[0]
                if not isinstance(message, EnrolAck) or message.coordinator_key is None:
                    raise ValueError("only an EnrolAck can pin the coordinator key")
                coordinator = bytes(message.coordinator_key)
                verify(sealed, public_key=coordinator, context=down)
                expected = ack_proof(
                    secret.mac, study_id=study_id, device_id=device_id, public_key=public,
                    coordinator_key=coordinator, accepted=message.accepted,
                )  # fmt: skip
                if expected != message.proof:
                    raise ValueError("unproven EnrolAck")
                state["pinned"] = coordinator
                replay.check(device_id, sealed.counter)
                return message
            frame = verify(sealed, public_key=state["pinned"], context=down)
            replay.check(device_id, sealed.counter)
            return decode_frame(frame, max_bytes=1 << 24)[0]

        def on_task(topic: str, payload: bytes) -> None:
            try:
                task = open_downlink(payload)
            except Exception:  # noqa: BLE001 - counted: a refused downlink message
                counts["refused_downlink"] += 1
                return
            if not isinstance(task, Task) or stopping.is_set():
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
                counts["sent"] += 1
            send(TopicKind.UPDATE, frame)

        def on_ack(topic: str, payload: bytes) -> None:
            try:
                message = open_downlink(payload)
            except Exception:  # noqa: BLE001 - counted: a refused downlink message
                counts["refused_downlink"] += 1
                return
            now = time.perf_counter()
            if isinstance(message, EnrolAck):
                enrolled.release()
            elif isinstance(message, Ack):
                with lock:
                    started = sent.pop(message.task_id, None)
                    if started is not None:
                        acks.append((now, now - started, message.status.value))
                        if args.target is not None and len(acks) >= args.target:
                            done.set()

        transport.subscribe(device_topic(TopicKind.TASK, study_id, device_id), on_task)
        transport.subscribe(device_topic(TopicKind.ACK, study_id, device_id), on_ack)
        transport.connect()
        transports.append(transport)
        ticket = None
        if secret is not None:
            proof = enrol_proof(
                secret.mac, study_id=study_id, device_id=device_id, public_key=public
            )
            ticket = EnrolTicket(expires_at=secret.expires_at, nonce=secret.nonce, proof=proof)
        enrol = Enrol(
            device_id=device_id,
            study_id=study_id,
            device_class=DeviceClass.GATEWAY,
            memory_bytes=args.memory,
            public_key=public,
            ticket=ticket,
        )
        send(TopicKind.ENROL, encode_frame(enrol))

    for i, device_id in enumerate(args.device_ids):
        make_device(i, device_id)
    got = sum(enrolled.acquire(timeout=120) for _ in args.device_ids)
    results.put(("enrolled", got))
    if args.target is not None:
        done.wait(timeout=3600)
    else:
        stopping.wait(timeout=args.duration_s)
        stopping.set()  # answer no new task; wait for the acks of what was sent
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if not sent:
                    break
            time.sleep(0.2)
    with lock:
        results.put(
            (
                "acks",
                {
                    "acks": list(acks),
                    "sent": counts["sent"],
                    "unacked": len(sent),
                    "refused_downlink": counts["refused_downlink"],
                },
            )  # fmt: skip
        )
    for transport in transports:
        try:
            transport.close()
        except Exception:  # noqa: S110 - best-effort shutdown of a benchmark process
            pass


# -- coordinator side ---------------------------------------------------------------


def run_ingest(
    config: IngestConfig,
    *,
    database_url: str | None,
    label: str,
    trust: Trust | None = None,
) -> dict[str, Any]:
    """Throughput and latency of ``config.updates`` acks after ``config.warmup``."""
    spec, memory, numel = bench_spec(config)
    with _Coordinator(config, spec, database_url=database_url, trust=trust) as coordinator:
        target = config.warmup + config.updates
        args = coordinator.publisher_args(memory=memory, devices=range(config.devices))
        (report,) = coordinator.run([replace(args, target=target)], timeout_s=config.timeout_s)
        status = coordinator.service.status(coordinator.study_id)
        bridge_rejected = dict(coordinator.bridge.stats.rejected)
    acks = sorted((t, lat) for t, lat, _ in report["acks"])
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
        "bridge_rejected": bridge_rejected,
    }


@dataclass(frozen=True, kw_only=True)
class Trust:
    """Trust on the wire for a run: signatures both ways, and (``tls_dir``) mqtts with
    client certificates from that credentials directory (fedward.protocol.credentials)."""

    tls_dir: Path | None = None


class _Coordinator:
    """The coordinator of a benchmark run: service, bridge and its MQTT connection."""

    def __init__(
        self,
        config: IngestConfig,
        spec: StudySpec,
        *,
        database_url: str | None,
        trust: Trust | None,
    ) -> None:
        self.config = config
        self.trust = trust
        self.data_dir = Path(tempfile.mkdtemp(prefix="fedward-bench-ingest-"))
        settings = CoordinatorSettings(
            database_url=database_url or f"sqlite:///{self.data_dir / 'coordinator.db'}",
            data_dir=self.data_dir,
            operator_token=SecretStr(secrets.token_urlsafe(32)),
        )
        self.service = StudyService.open(settings, seed=0)
        self.study_id = f"bench-{secrets.token_hex(4)}"
        self.service.create_study(spec, study_id=self.study_id)
        self.service.start(self.study_id)
        self.shapes = param_shapes(build_model(spec.model_settings(), seed=0))
        tls = None
        if trust is not None and trust.tls_dir is not None:
            tls, _ = pki_tls(trust.tls_dir)
        self.transport = MqttTransport(
            MqttSettings(
                host=config.broker.host,
                port=config.broker.port,
                protocol=config.broker.protocol,
                client_id=f"coord.{self.study_id}",
                clean_start=True,
                max_inflight=100,
                tls=tls,
            )
        )
        security = None
        if trust is not None:
            # Enrolment is rate-limited (20/s by default); a benchmark enrols its whole
            # fleet at once, so the limit is raised here, and only here.
            limits = RateLimits(total_rate=10_000, total_burst=10_000)
            security = WireSecurity(
                signing_key=Ed25519PrivateKey.generate(), counter=MemoryCounter(), limits=limits
            )
        self.bridge = StudyBridge(
            self.service,
            self.transport,
            study_id=self.study_id,
            dispatch_interval_s=0.2,
            security=security,
        )
        self.bridge.start()
        self.transport.connect()

    def publisher_args(self, *, memory: int, devices: range) -> PublisherArgs:
        ids = tuple(f"p{i:04d}" for i in devices)
        issued = None
        if self.trust is not None:
            issued = tuple(self.service.issue_enrolment_secret(self.study_id, d) for d in ids)
            if self.trust.tls_dir is not None:
                for device_id in ids:
                    if not (self.trust.tls_dir / "devices" / f"{device_id}.crt").exists():
                        issue_device(self.trust.tls_dir, device_id)
        broker = self.config.broker
        return PublisherArgs(
            broker=(broker.host, broker.port, broker.protocol.value),
            study_id=self.study_id,
            device_ids=ids,
            memory=memory,
            shapes=self.shapes,
            secrets=issued,
            tls_dir=None
            if self.trust is None or self.trust.tls_dir is None
            else str(self.trust.tls_dir),
        )

    def run(self, publishers: list[PublisherArgs], *, timeout_s: float) -> list[dict[str, Any]]:
        """Start one process per publisher, wait for all to enrol, then for their reports."""
        ctx = mp.get_context("spawn")
        queues = [ctx.Queue() for _ in publishers]
        processes = [
            ctx.Process(target=_publisher_main, args=(a, q), daemon=True)
            for a, q in zip(publishers, queues, strict=True)
        ]
        try:
            for process in processes:
                process.start()
            for q in queues:
                q.get(timeout=300)  # ("enrolled", n)
            self.started = time.monotonic()
            self.cpu_at_start = time.process_time()
            reports = [q.get(timeout=timeout_s)[1] for q in queues]
            for process in processes:
                process.join(timeout=30)
            return reports
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()

    def __enter__(self) -> _Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bridge.stop()
        self.transport.close()
        self.service.close()


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
