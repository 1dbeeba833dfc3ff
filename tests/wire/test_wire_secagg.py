"""Secure aggregation over the real Mosquitto, signed both ways, on the real PostgreSQL.

A coordinator (StudyService + signed StudyBridge) runs a secure-aggregation
study of 6 devices (cohorts of 4, threshold 3) to at least two merges. The
devices are the real device side (``SecAggParticipant`` over its file store)
behind an ordinary MQTT client that signs what it publishes with the device's
enrolled Ed25519 key. Then:

* THE privacy test: everything the coordinator stores, logs or sends (every
  PostgreSQL table, every file under its data dir -- blobs, snapshots, audit
  log --, /metrics, every frame it published and every log record) is searched
  for each device's individual update (its plain float32 bytes, a canary value
  pattern one device's update carries, in binary, hex, base64 and decimal) and
  for each device's masked words; the same search finds them in the devices'
  own forms (the positive control), and nowhere on the coordinator;
* attacks from outside with an ordinary MQTT client: an unsigned masked input,
  an enrolled non-member's signed masked input, a replayed frame, an old fill's
  session replayed into a new fill, a member publishing after being dropped:
  each refused, counted and audited (under the sender when it is authenticated).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import generate_latest

from fedward.coordinator.api.metrics import metrics_registry
from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.mqtt.security import WireSecurity
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.protocol.messages import (
    DeviceClass,
    Enrol,
    SecAggMessage,
    SecAggPhase,
    Task,
    decode_frame,
)
from fedward.protocol.signing import MemoryCounter, Role, SealContext, open_seal, seal, verify
from fedward.protocol.topics import TopicKind, device_topic
from tests.live.secagg_helpers import (
    CANARY,
    MAX,
    SECAGG_SPEC,
    Member,
    delta_for,
    frame,
    model_shapes,
)
from tests.services import require_module, unavailable
from tests.wire.wire_helpers import audit_records, wait_until

pytestmark = pytest.mark.postgres

SPEC = SECAGG_SPEC.model_copy(
    update={
        "secagg": SECAGG_SPEC.secagg.model_copy(update={"phase_timeout_s": 4.0}),
        "task_deadline_s": 120.0,
    }
)
DEVICES = 6


@pytest.fixture(scope="module")
def pg_url(postgres_server: tuple[str, int]) -> Iterator[str]:
    """A fresh PostgreSQL database for this module (dropped at the end)."""
    psycopg = require_module("psycopg", install="bash scripts/setup.sh (the dev extra)")
    server = "{}:{}".format(*postgres_server)
    try:
        admin = psycopg.connect(
            f"postgresql://postgres@{server}/postgres", autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL on {server} refused the admin login ({exc})", fix="see CI")
    name = f"fedward_secagg_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@{server}/{name}"
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


class Captured(logging.Handler):
    """Every log record of the process, formatted with its arguments."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is kept raw
            self.lines.append(repr(record.__dict__))


class Client:
    """An ordinary paho client; records every message it sees."""

    def __init__(self, broker: tuple[str, int], client_id: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.seen: list[tuple[str, bytes]] = []
        self.handlers: list = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.connect(*broker)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("no broker connection")

    def _on_message(self, client, userdata, message) -> None:
        item = (message.topic, bytes(message.payload))
        with self._lock:
            self.seen.append(item)
        for handler in self.handlers:
            handler(*item)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes, *, wait: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1)
        if wait:  # never from a message callback: the network thread would wait on itself
            info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Device:
    """A device: its enrolled key, its fill members (one per task), an MQTT client."""

    device_id: str
    study_id: str
    root: Path
    coordinator_key: bytes
    client: Client
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    counter: MemoryCounter = field(default_factory=MemoryCounter)
    members: dict[str, Member] = field(default_factory=dict)  # task id -> member
    canary: bool = False
    silent_task: str | None = None  # the task it goes silent in (from MASKED_INPUT on)
    silence: dict | None = None  # shared: the first device to get a task goes silent in it
    errors: list[str] = field(default_factory=list)
    seed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sealed(self, raw: bytes) -> bytes:
        context = SealContext(Role.DEVICE, self.study_id, self.device_id)
        return seal(raw, key=self.key, context=context, counter=self.counter.next())

    def publish(self, raw: bytes, *, wait: bool = True) -> None:
        topic = device_topic(TopicKind.SECAGG, self.study_id, self.device_id)
        self.client.publish(topic, self.sealed(raw), wait=wait)

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            self._on_message(topic, payload)
        except Exception as exc:  # recorded: the test asserts there were none
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _on_message(self, topic: str, payload: bytes) -> None:
        kind = topic.split("/")[3]
        if kind not in ("task", "fill"):
            return
        context = SealContext(Role.COORDINATOR, self.study_id, self.device_id)
        inner = verify(open_seal(payload), public_key=self.coordinator_key, context=context)
        message, _ = decode_frame(inner, max_bytes=MAX)
        with self.lock:
            if isinstance(message, Task):
                if message.task_id in self.members or message.secagg is None:
                    return
                self.seed += 1
                delta = delta_for(
                    message,
                    model_shapes(SPEC),
                    seed=1000 * int(self.device_id.split("-")[1]) + self.seed,
                    canary=self.canary,
                )
                member = Member.for_task(
                    message, root=self.root, spec=SPEC, delta=delta, signing_key=self.key
                )
                silence = self.silence
                # setdefault is atomic: of the devices racing for it, exactly one wins
                if (
                    silence is not None
                    and silence.setdefault("device", self.device_id) == (self.device_id)
                    and self.silent_task is None
                    and "won" not in silence
                ):
                    silence["won"] = True
                    self.silent_task = message.task_id
                    member.silent_from = SecAggPhase.MASKED_INPUT
                self.members[message.task_id] = member
                out = member.start()
            elif isinstance(message, SecAggMessage):
                member = self.members.get(message.task_id)
                if member is None or member.aborted:
                    return
                out = member.on_frame(inner)
            else:
                return
        for raw in out:
            self.publish(raw, wait=False)


def _byte_patterns(data: bytes, *, window: int = 24) -> list[bytes]:
    """Binary, hex and base64 windows of ``data`` (base64 at 3-byte-aligned offsets)."""
    patterns: list[bytes] = []
    step = max(window, len(data) // 8)
    for offset in range(0, max(1, len(data) - window), step):
        offset -= offset % 3
        chunk = data[offset : offset + window]
        if len(chunk) < window:
            continue
        patterns += [chunk, chunk.hex().encode(), base64.b64encode(chunk)]
        patterns.append(base64.urlsafe_b64encode(chunk))
    return patterns


def _canary_patterns() -> list[bytes]:
    value = np.float32(CANARY)
    return [
        value.tobytes() * 1,  # the float32 itself
        np.float64(value).tobytes(),
        repr(float(value))[:9].encode(),  # 0.1234567 (decimal, in JSON or text)
        value.tobytes().hex().encode(),
    ]


def _found(patterns: list[bytes], haystacks: dict[str, bytes]) -> list[str]:
    return [
        f"{where}: {p[:16]!r}" for where, hay in haystacks.items() for p in patterns if p in hay
    ]


def _database_dump(url: str) -> dict[str, bytes]:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    out: dict[str, bytes] = {}
    with psycopg.connect(plain) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        ]
        for table in tables:
            parts: list[bytes] = []
            for row in conn.execute(f'SELECT * FROM "{table}"').fetchall():
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        parts.append(bytes(value))
                    elif isinstance(value, dict | list):
                        parts.append(json.dumps(value).encode())
                    else:
                        parts.append(str(value).encode())
            out[f"table {table}"] = b"\n".join(parts)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {f"file {p}": p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def secagg_study(tmp_path: Path, pg_url: str, mqtt_broker: tuple[str, int]):
    """The coordinator of a signed secagg study on the broker, devices enrolled."""
    study_id = f"sa-{secrets.token_hex(4)}"
    settings = CoordinatorSettings(
        database_url=pg_url,
        data_dir=tmp_path / "coordinator",
        operator_token="secagg-wire-tests-4f3e2d1c",
    )
    log_capture = Captured()
    logging.getLogger().addHandler(log_capture)
    previous_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    service = StudyService.open(settings, seed=0)
    service.create_study(SPEC, study_id=study_id)
    sniffer = Client(mqtt_broker, f"sniff-{study_id}")
    sniffer.subscribe(f"fedward/v1/{study_id}/#")
    from fedward.protocol.mqtt import MqttTransport
    from fedward.protocol.mqtt_settings import MqttSettings

    transport = MqttTransport(
        MqttSettings(host=mqtt_broker[0], port=mqtt_broker[1], client_id=f"coord.{study_id}")
    )
    security = WireSecurity.from_settings(settings)
    bridge = StudyBridge(
        service,
        transport,
        study_id=study_id,
        dispatch_interval_s=0.2,
        on_reject=service.transport_rejected,
        security=security,
    )
    transport.set_error_hook(bridge.on_transport_error)
    devices: list[Device] = []
    for i in range(DEVICES):
        device_id = f"dev-{i}"
        client = Client(mqtt_broker, f"{study_id}.{device_id}")
        device = Device(
            device_id=device_id,
            study_id=study_id,
            root=tmp_path / "devices",
            coordinator_key=security.public_key,
            client=client,
            canary=(i == 0),
        )
        client.handlers.append(device.on_message)
        for kind in (TopicKind.TASK, TopicKind.FILL):
            client.subscribe(device_topic(kind, study_id, device_id))
        public = device.key.public_key().public_bytes_raw()
        ack = service.enrol(
            study_id,
            Enrol(
                device_id=device_id,
                study_id=study_id,
                device_class=DeviceClass.PHONE,
                memory_bytes=64 << 20,
                public_key=public,
            ),
            by="operator",
        )
        assert ack.accepted, ack.reason
        devices.append(device)
    time.sleep(0.5)  # subscriptions in place before the first task
    bridge.start()
    transport.connect()
    state = {
        "study_id": study_id,
        "service": service,
        "bridge": bridge,
        "settings": settings,
        "devices": devices,
        "sniffer": sniffer,
        "logs": log_capture,
        "security": security,
        "broker": mqtt_broker,
        "db_samples": [],
    }
    try:
        yield state
    finally:
        for device in devices:
            device.client.close()
        bridge.stop()
        transport.close()
        sniffer.close()
        service.close()
        logging.getLogger().removeHandler(log_capture)
        logging.getLogger().setLevel(previous_level)


def _run_to_merges(state: dict, merges: int, timeout: float = 90.0) -> None:
    """Start the study and wait for ``merges``, sampling the database mid-fill meanwhile
    (the engine snapshot of a fill in flight is overwritten by the next one)."""
    service, study_id = state["service"], state["study_id"]
    service.start(study_id)
    state["bridge"].request_dispatch()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            dump = _database_dump(state["settings"].database_url)
            state["db_samples"].append(b"\n".join(dump.values()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        ok = wait_until(
            lambda: service.status(study_id).merges >= merges, timeout=timeout, step=0.2
        )
    finally:
        done.set()
        sampler.join(10)
    errors = [e for d in state["devices"] for e in d.errors]
    assert ok, (
        f"{service.status(study_id).merges} merges; secagg {service.secagg_stats(study_id)}; "
        f"refused {service.wire_refusals(study_id)}; device errors {errors[:5]}"
    )


def test_a_secagg_study_merges_live_and_the_coordinator_holds_no_individual_update(
    secagg_study,
):
    # Prepare / Execute: the study runs to two merges over the broker
    state = secagg_study
    service, study_id, devices = state["service"], state["study_id"], state["devices"]
    _run_to_merges(state, 2)

    def canary_merged() -> bool:  # the canary device's update is in a merged fill
        pending = {o.task.task_id for o in service.pending_tasks(study_id)}
        return any(
            m.masked and not m.aborted and m.task.task_id not in pending
            for m in devices[0].members.values()
        )

    # cohorts are drawn at random: run on until the canary device was in a merge
    assert wait_until(canary_merged, timeout=90, step=0.2), service.secagg_stats(study_id)
    service.stop(study_id)
    time.sleep(0.5)  # the last frames reach the sniffer
    status = service.status(study_id)
    stats = service.secagg_stats(study_id)
    members = [m for d in devices for m in d.members.values()]
    contributed = [m for m in members if m.masked]
    canary_members = [m for m in devices[0].members.values() if m.masked]
    # what the coordinator stores, logs and sends
    coordinator: dict[str, bytes] = {}
    coordinator.update(_database_dump(state["settings"].database_url))
    coordinator.update(_files(state["settings"].data_dir))
    registry = metrics_registry(lambda: service)
    coordinator["/metrics"] = generate_latest(registry)
    downlink = [
        p
        for t, p in state["sniffer"].seen
        if t.split("/")[3] in ("task", "fill", "ack", "error", "model")
    ]
    coordinator["published frames"] = b"\n".join(downlink)
    coordinator["log records"] = "\n".join(state["logs"].lines).encode()
    for i, sample in enumerate(state["db_samples"]):
        coordinator[f"database mid-run sample {i}"] = sample
    # the devices' own forms (positive controls)
    plain_forms = {
        f"plain delta of {m.task.device_id}/{m.task.task_id}": b"".join(
            v.tobytes() for v in m.delta.values()
        )
        for m in contributed
    }
    uplink = {"uplink frames": b"\n".join(p for t, p in state["sniffer"].seen if "/secagg/" in t)}
    plain_patterns = [
        p
        for m in contributed
        for p in _byte_patterns(b"".join(v.tobytes() for v in m.delta.values()))
    ]
    masked_patterns = [p for m in contributed for p in _byte_patterns(m.masked)]
    # Assert: the study really ran secure aggregation to two merges
    assert status.merges >= 2 and stats["fills"]["merged"] >= 2
    assert len(contributed) >= 6 and canary_members
    assert not [e for d in devices for e in d.errors]
    metrics = coordinator["/metrics"].decode()
    assert f'fedward_secagg_fills_total{{outcome="merged",study="{study_id}"}}' in metrics
    assert 'fedward_secagg_bytes_total{direction="in"' in metrics
    # positive controls: the search finds each pattern where it really is
    assert _found(_canary_patterns(), plain_forms)
    assert len(_found(plain_patterns, plain_forms)) >= len(contributed)
    assert len(_found(masked_patterns, uplink)) >= len(contributed)
    # the search covered the real stores: tables with rows, blobs, the audit log, samples
    assert sum(1 for k, v in coordinator.items() if k.startswith("table ") and v) >= 5
    assert any("audit" in k for k in coordinator) and any("blobs" in k for k in coordinator)
    assert state["db_samples"] and b"fill" in b"".join(state["db_samples"])
    # nothing individual anywhere on the coordinator
    assert _found(_canary_patterns(), coordinator) == []
    assert _found(plain_patterns, coordinator) == []
    assert _found(masked_patterns, coordinator) == []


def _refused(state: dict) -> dict[str, int]:
    return state["service"].wire_refusals(state["study_id"])


def _entries(state: dict, reason_prefix: str) -> list[dict]:
    return [
        e
        for e in audit_records(state["settings"].audit_log_path)
        if str(e.get("details", {}).get("wire_reason", "")).startswith(reason_prefix)
    ]


def test_outsiders_replays_and_dropped_members_are_refused_and_audited(secagg_study):
    # Prepare: the first device goes silent at MASKED_INPUT in its first fill, which
    # then merges without it (phase timer); a second fill is then in flight
    state = secagg_study
    service, study_id, devices = state["service"], state["study_id"], state["devices"]
    silence: dict = {}
    for device in devices:
        device.silence = silence  # whoever gets the first task: a member of the first fill
    _run_to_merges(state, 1, timeout=60)
    late = next(d for d in devices if d.device_id == silence["device"])
    assert wait_until(lambda: len(service.pending_tasks(study_id)) > 0, timeout=30)
    in_flight = {o.device_id: o.task for o in service.pending_tasks(study_id)}
    victim_id, victim_task = next(iter(in_flight.items()))
    stranger = next(d for d in devices if d.device_id not in in_flight)
    earlier = next(
        (
            m
            for d in devices
            for m in d.members.values()
            if m.task.task_id not in {t.task_id for t in in_flight.values()}
            and m.sent
            and d.device_id in in_flight
        ),
        None,
    )
    late_members = [m for m in late.members.values() if m.withheld]
    header = SecAggMessage(
        study_id=study_id,
        device_id=victim_id,
        task_id=victim_task.task_id,
        fill_id=victim_task.secagg.fill_id,
        phase=SecAggPhase.MASKED_INPUT,
    )
    victim_topic = device_topic(TopicKind.SECAGG, study_id, victim_id)

    def genuine() -> list[bytes]:  # what the victim itself published so far
        return [p for t, p in state["sniffer"].seen if t == victim_topic]

    assert wait_until(lambda: len(genuine()) > 0, timeout=15)
    sent = genuine()
    before = dict(_refused(state))
    outsider = Client(state["broker"], f"outsider-{study_id}")
    try:
        # Execute 1: an outsider without a key publishes a masked input as the victim
        outsider.publish(victim_topic, frame(header, _fake_masked(victim_task)))
        # Execute 2: an enrolled device outside the fill signs one for the victim's task
        stranger.publish(
            frame(
                header.model_copy(update={"device_id": stranger.device_id}),
                _fake_masked(victim_task, stranger.device_id),
            )
        )
        # Execute 3: a frame the victim really sent, replayed byte for byte
        outsider.publish(victim_topic, sent[0])
        # Execute 4: a member re-signs a closed fill's step (its session is over)
        assert earlier is not None and late_members
        owner = next(d for d in devices if d.device_id == earlier.task.device_id)
        owner.publish(earlier.sent[0])
        # Execute 5: the member dropped from its fill publishes the masked input it held
        late.publish(late_members[0].withheld[0])
        ok = wait_until(
            lambda: sum(_refused(state).values()) >= sum(before.values()) + 5, timeout=15
        )
        after = _refused(state)
    finally:
        outsider.close()
    secagg_after = sum(v for k, v in after.items() if k.startswith("secagg_"))
    secagg_before = sum(v for k, v in before.items() if k.startswith("secagg_"))
    entries = _entries(state, "secagg_")
    # Assert: every one refused and counted; the authenticated ones audited under the sender
    assert ok, f"refusals before {before}, after {after}"
    assert after.get("unsigned", 0) == before.get("unsigned", 0) + 1
    assert after.get("replayed", 0) == before.get("replayed", 0) + 1
    assert secagg_after == secagg_before + 3
    for device_id in (stranger.device_id, owner.device_id, late.device_id):
        assert any(device_id in json.dumps(e.get("actor", e)) for e in entries), device_id
    assert _entries(state, "unsigned") and _entries(state, "replayed")
    assert service.status(study_id).merges >= 1  # the fill in flight was not disturbed


def _fake_masked(task: Task, device_id: str | None = None):
    """A masked input of the right length, words from os.urandom (a forger's)."""
    import os

    from fedward.privacy.secagg.config import SecAggConfig, SecAggSession
    from fedward.privacy.secagg.messages import MaskedInput

    assert task.secagg is not None
    config = SecAggConfig.from_plain(task.secagg.config)
    session = SecAggSession.from_plain(task.secagg.session)
    n = session.total_words(config)
    return MaskedInput(
        session_id=session.session_id,
        round_index=session.round_index,
        device_id=device_id or task.device_id,
        data=os.urandom(4 * n),
    )
