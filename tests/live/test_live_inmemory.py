"""Bridge + service + agents over the in-memory broker: the live path without a network."""

from __future__ import annotations

import threading
import time

import pytest
from live_helpers import (
    TINY_SPEC,
    assert_merged_exactly_once,
    audit_entries,
    make_agent,
    random_dataset,
    wait_until,
)

from fedward.coordinator.errors import RejectReason
from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.protocol.messages import (
    DeviceClass,
    DeviceStatus,
    Enrol,
    ErrorCode,
    ErrorMessage,
    Heartbeat,
    Update,
    decode_frame,
    encode_frame,
)
from fedward.protocol.topics import TopicKind, device_filter, device_topic
from fedward.protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport

STUDY = "s-live"


def audit_path(tmp_path):
    return tmp_path / "coordinator" / "audit" / "coordinator.jsonl"


class Tap:
    """A passive subscriber that records every frame on a filter."""

    def __init__(self, broker, topic_filter):
        self.frames: list[tuple[str, bytes]] = []
        self.transport = InMemoryTransport(broker, client_id="tap", error_policy=ErrorPolicy.LOG)
        self.transport.subscribe(topic_filter, lambda t, p: self.frames.append((t, p)))
        self.transport.connect()

    def messages(self):
        return [(t, decode_frame(p, max_bytes=1 << 24)[0]) for t, p in self.frames]


@pytest.fixture
def live(tmp_path):
    broker = InMemoryBroker()
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{tmp_path / 'coordinator.db'}",
        data_dir=tmp_path / "coordinator",
        operator_token="live-tests-9f8e7d6c5b4a",
    )
    service = StudyService.open(settings, seed=0)
    service.create_study(TINY_SPEC, study_id=STUDY)
    service.start(STUDY)
    coord = InMemoryTransport(broker, client_id="coordinator", error_policy=ErrorPolicy.LOG)
    bridge = StudyBridge(
        service,
        coord,
        study_id=STUDY,
        dispatch_interval_s=0.1,
        timeout_interval_s=0.5,
        on_reject=service.transport_rejected,
    )
    bridge.start()
    coord.connect()
    agents = []

    def add_agents(n):
        for i in range(len(agents), len(agents) + n):
            device = f"dev{i:02d}"
            agent = make_agent(
                transport=InMemoryTransport(broker, client_id=device, error_policy=ErrorPolicy.LOG),
                study_id=STUDY,
                device_id=device,
                state_dir=tmp_path / device,
                spec=TINY_SPEC,
                dataset=random_dataset(TINY_SPEC, seed=i),
                seed=i,
            )
            agent.start()
            agents.append(agent)
        for agent in agents:
            agent.wait_enrolled(10)
        return agents

    yield broker, service, bridge, add_agents
    for agent in agents:
        agent.stop()
    bridge.stop()
    service.close()


def accepted(service):
    return service.status(STUDY).updates_accepted


def test_agents_enrol_train_and_the_model_advances(live):
    # Prepare
    _, service, bridge, add_agents = live
    # Execute
    agents = add_agents(5)
    assert wait_until(lambda: accepted(service) >= 12, timeout=60)
    # Assert: merges happened, every accepted update was acked and left its outbox
    status = service.status(STUDY)
    assert status.merges >= 5 and status.model_version >= 5
    assert sum(status.devices_by_state.values()) == 5
    assert sum(a.stats.tasks_completed for a in agents) >= 12
    bridge.drain()
    assert wait_until(lambda: all(len(a.outbox) <= 1 for a in agents))
    assert bridge.stats.rejected == {}
    assert all(sum(a.stats.rejected.values()) == 0 for a in agents)


def test_a_replayed_update_is_merged_exactly_once(live, tmp_path):
    # Prepare: record the updates that travel
    broker, service, bridge, add_agents = live
    tap = Tap(broker, device_filter(TopicKind.UPDATE, STUDY))
    agents = add_agents(3)
    assert wait_until(lambda: accepted(service) >= 4, timeout=60)
    topic, frame = tap.frames[0]
    duplicates = service.status(STUDY).duplicates
    # Execute: the same frame arrives twice more (QoS-1 duplicate, outbox resend)
    tap.transport.publish(topic, frame)
    tap.transport.publish(topic, frame)
    bridge.drain()
    # Assert: the duplicates were answered but neither accepted nor merged again
    assert service.status(STUDY).duplicates == duplicates + 2
    for agent in agents:  # then count with the study at rest (see the outage test)
        agent.stop()
    bridge.drain()
    assert wait_until(
        lambda: assert_merged_exactly_once(audit_path(tmp_path)) == accepted(service), timeout=10
    )
    assert bridge.stats.rejected == {}


def test_outage_mid_study_updates_delivered_once(live, tmp_path):
    # Prepare: the victim's network goes away right after its update is on disk
    _, service, bridge, add_agents = live
    agents = add_agents(3)
    victim = agents[0]
    dropped = threading.Event()
    real_put = victim.outbox.put

    def put_then_drop(task_id, frame):
        real_put(task_id, frame)
        if not dropped.is_set():
            victim.transport.close()
            dropped.set()

    victim.outbox.put = put_then_drop
    # Execute: the network comes back while the study goes on
    assert dropped.wait(30)
    time.sleep(0.2)
    victim.transport.connect()
    # Assert: its update reached the coordinator, and was merged once
    assert wait_until(lambda: len(victim.outbox) == 0, timeout=30)
    assert wait_until(lambda: accepted(service) >= 10, timeout=60)
    assert victim.stats.republished >= 1
    # the study goes on while we count: stop the agents first, or an update accepted
    # between reading the audit log and the status makes the counts differ (seen in CI)
    for agent in agents:
        agent.stop()
    bridge.drain()
    assert wait_until(
        lambda: assert_merged_exactly_once(audit_path(tmp_path)) == accepted(service), timeout=10
    )


def test_bad_uplink_messages_are_counted_answered_and_survived(live, tmp_path):
    # Prepare
    broker, service, bridge, add_agents = live
    agents = add_agents(2)
    errors = Tap(broker, device_topic(TopicKind.ERROR, STUDY, "dev00"))
    attacker = InMemoryTransport(broker, client_id="dev00", error_policy=ErrorPolicy.LOG)
    attacker.connect()
    spoofed = Update(
        task_id="t0000001",
        device_id="dev01",  # claims to be another device
        base_model_version=0,
        subset_id="x",
        num_samples=1,
        update_energy=0.0,
        train_loss=0.0,
    )
    heartbeat = Heartbeat(device_id="ghost", status=DeviceStatus.IDLE)
    enrol = Enrol(
        device_id="dev00",
        study_id=STUDY,
        device_class=DeviceClass.WEARABLE,
        memory_bytes=1,
        public_key=b"k" * 32,
    )
    # Execute
    attacker.publish(device_topic(TopicKind.UPDATE, STUDY, "dev00"), b"\x00garbage")
    attacker.publish(device_topic(TopicKind.UPDATE, STUDY, "dev00"), encode_frame(spoofed))
    attacker.publish(device_topic(TopicKind.UPDATE, STUDY, "dev00"), encode_frame(enrol))
    attacker.publish(
        device_topic(TopicKind.HEARTBEAT, STUDY, "ghost"),
        encode_frame(heartbeat),
    )
    bridge.drain()
    # Assert: counted, the sender told why, and the study goes on
    assert bridge.stats.rejected["malformed"] == 1  # handed to the service, which audits it
    assert bridge.stats.rejected["route"] == 2
    assert bridge.stats.rejected["refused"] == 1  # the ghost's heartbeat
    codes = [m.code for _, m in errors.messages() if isinstance(m, ErrorMessage)]
    assert codes == [ErrorCode.UNAUTHORIZED, ErrorCode.UNAUTHORIZED]
    assert service.status(STUDY).rejections == {RejectReason.MALFORMED: 1}  # audited there
    auth_failures = audit_entries(audit_path(tmp_path), "device_auth_failed")
    assert [d["transport_reason"] for d in auth_failures] == ["route", "route"]
    start = accepted(service)
    assert wait_until(lambda: accepted(service) >= start + 3, timeout=60)
    assert len(agents) == 2
