"""The edge agent against a hand-driven coordinator on the in-memory broker."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from fedward.edge import agent as edge_agent
from fedward.edge.agent import EdgeAgent
from fedward.edge.dataset import LocalDataset
from fedward.edge.identity import load_or_create_identity
from fedward.edge.settings import AgentSettings
from fedward.protocol.messages import (
    Ack,
    AckStatus,
    DeviceClass,
    Enrol,
    EnrolAck,
    Heartbeat,
    ModelDownload,
    Task,
    Update,
    decode_frame,
    encode_frame,
)
from fedward.protocol.topics import TopicKind, device_filter, device_topic, model_topic
from fedward.protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport
from fedward.tinytrain.models import ModelConfig, build_model, get_params

STUDY = "s1"
DEVICE = "d1"
MODEL = ModelConfig(window=128, width=4)


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


class FakeCoordinator:
    """Records uplink messages; the test decides what to send down."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.transport = InMemoryTransport(broker, client_id="coord", error_policy=ErrorPolicy.LOG)
        self.received: list[tuple[str, object, dict]] = []
        self.threads: set[str] = set()
        self._cv = threading.Condition()
        for kind in (TopicKind.ENROL, TopicKind.UPDATE, TopicKind.HEARTBEAT):
            self.transport.subscribe(device_filter(kind, STUDY), self._on)
        self.transport.connect()

    def _on(self, topic, payload):
        message, tensors = decode_frame(payload, max_bytes=1 << 24)
        with self._cv:
            self.received.append((topic, message, tensors))
            self._cv.notify_all()

    def of(self, kind):
        with self._cv:
            return [(m, t) for _, m, t in self.received if isinstance(m, kind)]

    def wait(self, kind, n, timeout=20.0):
        with self._cv:
            self._cv.wait_for(lambda: len(self.of(kind)) >= n, timeout)
        return self.of(kind)

    def send(self, kind, frame, device=DEVICE):
        self.transport.publish(device_topic(kind, STUDY, device), frame)

    def send_model(self, version, subset_id, tensors):
        header = ModelDownload(model_version=version, subset_id=subset_id, names=tuple(tensors))
        self.transport.publish(
            model_topic(STUDY, version, subset_id), encode_frame(header, tensors or None)
        )

    def send_task(self, task_id, version, names):
        task = Task(
            task_id=task_id,
            study_id=STUDY,
            device_id=DEVICE,
            model_version=version,
            subset_id="sub",
            subset_names=tuple(names),
            local_epochs=1,
            batch_size=8,
            lr=0.05,
            deadline_s=30.0,
        )
        self.send(TopicKind.TASK, encode_frame(task))

    def ack(self, task_id, status=AckStatus.MERGED):
        self.send(TopicKind.ACK, encode_frame(Ack(task_id=task_id, status=status)))


@pytest.fixture
def params():
    return get_params(build_model(MODEL, seed=0))


@pytest.fixture
def world(tmp_path):
    broker = InMemoryBroker()
    coordinator = FakeCoordinator(broker)
    agents = []

    def make_agent(state="state"):
        settings = AgentSettings(
            device_id=DEVICE,
            study_id=STUDY,
            device_class=DeviceClass.WEARABLE,
            memory_bytes=1 << 20,
            data_path=tmp_path / "data.npz",
            state_dir=tmp_path / state,
            window=MODEL.window,
            width=MODEL.width,
            heartbeat_interval_s=0.2,
            poll_interval_s=0.02,
            resend_after_s=60.0,
            model_wait_s=5.0,
        )
        rng = np.random.default_rng(1)
        dataset = LocalDataset(
            x=rng.standard_normal((16, 3, MODEL.window)).astype(np.float32),
            y=rng.integers(0, 4, 16).astype(np.int64),
        )
        agent = EdgeAgent(
            settings,
            transport=InMemoryTransport(broker, client_id=DEVICE, error_policy=ErrorPolicy.LOG),
            identity=load_or_create_identity(settings.state_dir, device_id=DEVICE),
            dataset=dataset,
            rng=random.Random(0),
        )
        agents.append(agent)
        return agent

    yield broker, coordinator, make_agent
    for agent in agents:
        agent.stop()


def test_enrols_with_its_public_key_and_waits_for_the_ack(world):
    # Prepare
    _, coordinator, make_agent = world
    agent = make_agent()
    # Execute
    agent.start()
    enrols = coordinator.wait(Enrol, 1)
    coordinator.send(TopicKind.ACK, encode_frame(EnrolAck(accepted=True)))
    agent.wait_enrolled(5)
    # Assert
    assert enrols[0][0].public_key == agent.identity.public_key
    assert enrols[0][0].device_class is DeviceClass.WEARABLE
    assert coordinator.wait(Heartbeat, 1)


def test_trains_off_the_callback_thread_and_keeps_the_update_until_acked(
    world, params, monkeypatch
):
    # Prepare
    _, coordinator, make_agent = world
    agent = make_agent()
    agent.start()
    coordinator.send(TopicKind.ACK, encode_frame(EnrolAck(accepted=True)))
    trained_on = []
    real_run = edge_agent.run_local_task

    def spy(*args, **kwargs):
        trained_on.append(threading.current_thread().name)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(edge_agent, "run_local_task", spy)
    # Execute: the task comes before its model frame
    coordinator.send_task("t1", 0, ["head.weight", "head.bias"])
    coordinator.send_model(0, "sub", params)
    updates = coordinator.wait(Update, 1)
    # Assert: a sparse update of exactly the subset, still in the outbox
    header, tensors = updates[0]
    assert header.task_id == "t1" and header.base_model_version == 0
    assert set(tensors) == {"head.weight", "head.bias"}
    assert "t1" in agent.outbox
    assert trained_on == [f"{DEVICE}-worker"]  # never on the transport's delivery thread
    coordinator.ack("t1")
    assert wait_until(lambda: "t1" not in agent.outbox)
    assert agent.stats.acks == {"merged": 1}


def test_partial_download_is_applied_on_the_held_model(world, params):
    # Prepare: the device trained on version 0, the coordinator then changed the head
    _, coordinator, make_agent = world
    agent = make_agent()
    agent.start()
    coordinator.send_model(0, "sub", params)
    coordinator.send_task("t1", 0, ["head.bias"])
    coordinator.wait(Update, 1)
    new_head = {"head.bias": params["head.bias"] + 1.0}
    # Execute: version 1 ships only the tensor that changed
    coordinator.send_model(1, "sub", new_head)
    coordinator.send_task("t2", 1, ["head.bias"])
    coordinator.wait(Update, 2)
    # Assert: the device now holds version 1 = old tensors + the new head
    assert agent.held.version == 1
    np.testing.assert_array_equal(agent.held.params["head.bias"], new_head["head.bias"])
    np.testing.assert_array_equal(agent.held.params["stem.conv.weight"], params["stem.conv.weight"])


def test_update_survives_an_outage_and_is_republished_on_reconnect(world, params):
    # Prepare: the device goes offline right after taking its task
    _, coordinator, make_agent = world
    agent = make_agent()
    agent.start()
    coordinator.send_model(0, "sub", params)
    gate = threading.Event()
    real_put = agent.outbox.put

    def put_then_drop(task_id, frame):
        real_put(task_id, frame)
        agent.transport.close()  # the network goes away between write and publish
        gate.set()

    agent.outbox.put = put_then_drop
    coordinator.send_task("t1", 0, ["head.bias"])
    assert gate.wait(10)
    assert coordinator.of(Update) == []
    # Execute: the network comes back
    agent.transport.connect()
    updates = coordinator.wait(Update, 1)
    # Assert
    assert [h.task_id for h, _ in updates] == ["t1"]
    assert agent.stats.republished >= 1
    coordinator.ack("t1")
    assert wait_until(lambda: len(agent.outbox) == 0)


def test_a_restarted_agent_delivers_what_its_outbox_still_holds(world, params):
    # Prepare: an agent trains, its update is never acknowledged, it stops
    _, coordinator, make_agent = world
    first = make_agent()
    first.start()
    coordinator.send_model(0, "sub", params)
    coordinator.send_task("t1", 0, ["head.bias"])
    coordinator.wait(Update, 1)
    first.stop()
    # Execute: a new process on the same state directory
    second = make_agent()
    second.start()
    # Assert: the update is sent again and the held model is still version 0
    updates = coordinator.wait(Update, 2)
    assert [h.task_id for h, _ in updates] == ["t1", "t1"]
    assert second.held.version == 0


def test_duplicate_tasks_are_trained_once(world, params):
    _, coordinator, make_agent = world
    agent = make_agent()
    agent.start()
    coordinator.send_model(0, "sub", params)
    coordinator.send_task("t1", 0, ["head.bias"])
    coordinator.send_task("t1", 0, ["head.bias"])
    coordinator.wait(Update, 1)
    time.sleep(0.3)
    assert len(coordinator.of(Update)) == 1
    assert agent.stats.tasks_received == 1


def test_bad_messages_are_counted_and_the_agent_keeps_working(world, params):
    # Prepare
    _, coordinator, make_agent = world
    agent = make_agent()
    agent.start()
    # Execute: garbage, a task for another device on our topic, a model frame with a wrong shape
    coordinator.send(TopicKind.TASK, b"not a frame")
    other = Task(
        task_id="tx",
        study_id=STUDY,
        device_id="d2",
        model_version=0,
        subset_id="sub",
        subset_names=("head.bias",),
        local_epochs=1,
        batch_size=8,
        lr=0.05,
        deadline_s=30.0,
    )
    coordinator.send(TopicKind.TASK, encode_frame(other))
    coordinator.send_model(0, "sub", {"head.bias": np.zeros(99, np.float32)})
    coordinator.send_task("t9", 0, ["no.such.tensor"])
    coordinator.send_model(0, "sub", params)
    coordinator.send_task("t1", 0, ["head.bias"])
    # Assert
    assert coordinator.wait(Update, 1)[0][0].task_id == "t1"
    assert sum(agent.stats.rejected.values()) == 4
    assert agent.stats.rejected["DecodeError"] == 1
    assert agent.stats.rejected["RouteError"] == 1


def test_refused_enrolment_is_reported(world):
    from fedward.edge.agent import EnrolmentRefused

    _, coordinator, make_agent = world
    agent = make_agent()
    agent.start()
    coordinator.wait(Enrol, 1)
    coordinator.send(TopicKind.ACK, encode_frame(EnrolAck(accepted=False, reason="key mismatch")))
    with pytest.raises(EnrolmentRefused, match="key mismatch"):
        agent.wait_enrolled(5)
