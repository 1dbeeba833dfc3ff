"""A device at its budget never trains again: the live path (service + bridge + transport).

The real ``StudyService`` (SQLite, audit log) and ``StudyBridge`` serve a DP
study over the in-memory broker and over the local Mosquitto (skipped if none
answers, failed under CI: tests/services.py). The devices are a small DP
stand-in for the agent: they hold the tensors they are sent and train every
task with ``fedward.edge.budget.run_dp_task`` (their own accountant, their own
budget, their own epsilon claim). The budget buys two tasks per device; the
coordinator must stop scheduling each device after its second, say so in the
audit log, and keep the ledger across a restart (read back by ``fedward
budget report`` from the database).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections import Counter

import numpy as np
import pytest
from budget_helpers import DELTA, PRIVACY
from typer.testing import CliRunner

from fedward.commands.budget import app as budget_app
from fedward.compliance.events import AuditAction
from fedward.coordinator.engine import DeviceState
from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.privacy.settings import StudyPrivacy
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.study_spec import StudySpec
from fedward.edge.budget import DeviceBudget, TaskRefused, run_dp_task
from fedward.edge.updates import encode_update, update_header
from fedward.privacy.budget import BudgetPolicy
from fedward.protocol.messages import (
    Ack,
    DeviceClass,
    Enrol,
    ModelDownload,
    Task,
    decode_frame,
    encode_frame,
)
from fedward.protocol.mqtt import MqttTransport
from fedward.protocol.mqtt_settings import MqttSettings
from fedward.protocol.topics import TopicKind, device_topic, model_filter
from fedward.protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport
from fedward.tinytrain.models import build_model, get_params
from tests.live.live_helpers import wait_until

BUDGET = 4.5  # two tasks of (sigma 1.5, q 0.25, 8 steps): 3.22 then 4.29; a third: 5.1
SPEC = StudySpec(
    name="live-dp",
    window=128,
    width=4,
    epochs=1,
    batch_size=8,
    concurrency=3,
    buffer_size=2,
    task_deadline_s=30.0,
    privacy=StudyPrivacy(**{**PRIVACY.model_dump(), "epsilon": BUDGET}),
)
MAX_BYTES = 16 * 1024 * 1024


class DpDevice:
    """Enrols, holds the tensors it is sent, trains DP tasks on a worker thread."""

    def __init__(self, transport, *, study_id: str, device_id: str, seed: int) -> None:
        self.transport, self.study_id, self.device_id = transport, study_id, device_id
        self.budget = DeviceBudget(BudgetPolicy(epsilon=BUDGET, delta=DELTA))
        config = SPEC.model_settings()
        self.model = build_model(config, seed=SPEC.model_seed)
        self.held = get_params(self.model)  # refreshed by every model frame
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((16, config.in_channels, config.window)).astype(np.float32)
        self.y = rng.integers(0, config.num_classes, 16)
        self.tasks: list[Task] = []
        self.trained: list[str] = []
        self.refused: list[str] = []
        self.acks: list[Ack] = []
        self._inbox: queue.Queue[Task | None] = queue.Queue()
        self._seed = seed
        self._thread = threading.Thread(target=self._work, daemon=True)
        for kind in (TopicKind.TASK, TopicKind.ACK):
            transport.subscribe(device_topic(kind, study_id, device_id), self._on_message)
        transport.subscribe(model_filter(study_id), self._on_message)

    def start(self) -> None:
        self._thread.start()
        self.transport.connect()
        enrol = Enrol(
            device_id=self.device_id,
            study_id=self.study_id,
            device_class=DeviceClass.WEARABLE,
            memory_bytes=64 << 20,
            public_key=bytes([self._seed + 1]) * 32,
        )
        self.transport.publish(
            device_topic(TopicKind.ENROL, self.study_id, self.device_id), encode_frame(enrol)
        )

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)
        self.transport.close()

    def _on_message(self, topic: str, payload: bytes) -> None:
        message, tensors = decode_frame(payload, max_bytes=MAX_BYTES)
        if isinstance(message, ModelDownload):
            self._inbox.put(("model", tensors))  # type: ignore[arg-type]
        elif isinstance(message, Task):
            self.tasks.append(message)
            self._inbox.put(message)
        elif isinstance(message, Ack):
            self.acks.append(message)

    def _work(self) -> None:
        while (item := self._inbox.get()) is not None:
            if isinstance(item, tuple):
                self.held.update(item[1])
                continue
            self._train(item)

    def _train(self, task: Task) -> None:
        try:
            outcome, report = run_dp_task(
                self.budget,
                task,
                self.model,
                dict(self.held),
                self.x,
                self.y,
                momentum=SPEC.momentum,
                max_physical_batch_size=4,
                seed=self._seed * 1000 + len(self.trained),
            )
        except TaskRefused:
            self.refused.append(task.task_id)
            return
        header = update_header(
            outcome,
            device_id=self.device_id,
            subset_id=task.subset_id,
            base_version=task.model_version,
            privacy=report,
        )
        self.trained.append(task.task_id)
        self.transport.publish(
            device_topic(TopicKind.UPDATE, self.study_id, self.device_id),
            encode_update(header, outcome, max_bytes=MAX_BYTES),
        )


def _transports(kind: str, study_id: str, broker: tuple[str, int] | None = None):
    if kind == "inmemory":
        memory = InMemoryBroker()
        return lambda client_id: InMemoryTransport(
            memory, client_id=client_id, error_policy=ErrorPolicy.LOG
        )
    if broker is None:
        raise ValueError("MQTT transports need the broker's address (the mqtt_broker fixture)")
    host, port = broker
    return lambda client_id: MqttTransport(
        MqttSettings(
            host=host,
            port=port,
            client_id=f"{client_id}-{study_id[-8:]}",
            clean_start=True,
            session_expiry_s=0,
        )  # fmt: skip
    )


def _audit(path, action: AuditAction) -> list[dict]:
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [e["details"] for e in entries if e.get("action") == action.value]


@pytest.mark.parametrize("kind", ["inmemory", pytest.param("mqtt", marks=pytest.mark.mqtt)])
def test_a_device_at_its_budget_never_trains_again_live(kind, tmp_path, request):
    # Prepare
    study_id = "dp-" + uuid.uuid4().hex[:12]
    # Only the mqtt case asks for the broker: the in-memory case runs without one.
    broker = request.getfixturevalue("mqtt_broker") if kind == "mqtt" else None
    make_transport = _transports(kind, study_id, broker)
    db_url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    settings = CoordinatorSettings(
        database_url=db_url, data_dir=tmp_path / "data", operator_token="dp-live-9f8e7d6c5b4a"
    )
    service = StudyService.open(settings, seed=0)
    service.create_study(SPEC, study_id=study_id)
    service.start(study_id)
    coordinator = make_transport("coordinator")
    bridge = StudyBridge(
        service, coordinator, study_id=study_id, dispatch_interval_s=0.1, timeout_interval_s=1.0
    )
    bridge.start()
    coordinator.connect()
    devices = [
        DpDevice(make_transport(f"dpdev{i}"), study_id=study_id, device_id=f"dpdev{i}", seed=i)
        for i in range(2)
    ]

    # Execute: let both devices spend their budgets, then keep the coordinator ticking
    try:
        for device in devices:
            device.start()
        exhausted = wait_until(
            lambda: (
                service.status(study_id).devices_by_state.get(DeviceState.EXHAUSTED) == 2
                and service.status(study_id).in_flight == 0
            ),
            timeout=60.0,
        )
        time.sleep(1.0)  # ten more dispatch ticks: nothing may reach an exhausted device
        bridge.drain()
        status = service.status(study_id)
    finally:
        for device in devices:
            device.stop()
        bridge.stop()
        coordinator.close()
        service.close()

    # Assert: two tasks each, never a third; every spend and exhaustion audited
    assert exhausted, status
    assert [len(d.tasks) for d in devices] == [2, 2]
    assert [len(d.trained) for d in devices] == [2, 2] and not any(d.refused for d in devices)
    assert all(d.budget.spent() <= BUDGET and d.budget.would_exceed(SPEC.privacy.task_dp())
               for d in devices)  # fmt: skip
    assert status.updates_accepted == 4 and not status.rejections
    audit = tmp_path / "data" / "audit" / "coordinator.jsonl"
    spent = _audit(audit, AuditAction.PRIVACY_SPENT)
    assert Counter(d["device_id"] for d in spent) == {"dpdev0": 2, "dpdev1": 2}
    assert all(d["epsilon"] <= BUDGET for d in spent)
    assert sorted(d["device_id"] for d in _audit(audit, AuditAction.BUDGET_EXHAUSTED)) == [
        "dpdev0",
        "dpdev1",
    ]

    # Execute: the ledger survived the service's end: read it back from the database
    run = CliRunner().invoke(
        budget_app,
        ["report", "--study", study_id, "--data-dir", str(tmp_path), "--database-url", db_url],
    )

    # Assert
    assert run.exit_code == 0, run.output
    report = json.loads((tmp_path / f"budget-report-{study_id}.json").read_text())
    rows = {r["device_id"]: r for r in report["devices"]}
    assert set(rows) == {"dpdev0", "dpdev1"}
    for device in devices:
        row = rows[device.device_id]
        assert row["exhausted"] and row["tasks"] == 2
        assert row["epsilon_spent"] == pytest.approx(device.budget.spent(), abs=1e-9)


def test_a_restarted_service_keeps_budgets_and_never_reschedules(tmp_path):
    # Prepare: a study whose devices spent their budgets, then a coordinator restart
    study_id = "dp-" + uuid.uuid4().hex[:12]
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{tmp_path / 'coordinator.db'}",
        data_dir=tmp_path / "data",
        operator_token="dp-live-9f8e7d6c5b4a",
    )
    make_transport = _transports("inmemory", study_id)
    service = StudyService.open(settings, seed=0)
    service.create_study(SPEC, study_id=study_id)
    service.start(study_id)
    coordinator = make_transport("coordinator")
    bridge = StudyBridge(service, coordinator, study_id=study_id, dispatch_interval_s=0.1)
    bridge.start()
    coordinator.connect()
    device = DpDevice(make_transport("dpdev0"), study_id=study_id, device_id="dpdev0", seed=0)
    try:
        device.start()
        assert wait_until(
            lambda: (
                service.status(study_id).devices_by_state.get(DeviceState.EXHAUSTED) == 1
                and service.status(study_id).in_flight == 0
            ),
            timeout=60.0,
        )
    finally:
        device.stop()
        bridge.stop()
        coordinator.close()
        service.close()

    # Execute
    reopened = StudyService.open(settings, seed=0)
    try:
        after = reopened.dispatch(study_id)
        status = reopened.status(study_id)
    finally:
        reopened.close()

    # Assert
    assert after == []
    assert status.devices_by_state == {DeviceState.EXHAUSTED: 1}
