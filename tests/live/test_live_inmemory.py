"""Bridge + service + agents over the in-memory broker: the live path without a network."""

from __future__ import annotations

import numpy as np
import pytest
from live_helpers import TINY_SPEC, make_agent, random_dataset, wait_until
from live_standin import EngineService

from coordinator.bridge import StudyBridge
from protocol.messages import (
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
from protocol.topics import TopicKind, device_filter, device_topic
from protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport

STUDY = "s-live"


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
    service = EngineService(seed=0)
    service.create_study(STUDY, TINY_SPEC)
    coord = InMemoryTransport(broker, client_id="coordinator", error_policy=ErrorPolicy.LOG)
    bridge = StudyBridge(
        service,
        coord,
        study_id=STUDY,
        dispatch_interval_s=0.1,
        timeout_interval_s=0.5,
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


def engine(service):
    return service.studies[STUDY].engine


def test_agents_enrol_train_and_the_model_advances(live):
    # Prepare
    _, service, bridge, add_agents = live
    # Execute
    agents = add_agents(5)
    assert wait_until(lambda: engine(service).stats.accepted >= 12, timeout=60)
    # Assert: merges happened, every accepted update was acked and left its outbox
    eng = engine(service)
    assert eng.stats.merges >= 5 and eng.version >= 5
    assert len(eng.devices) == 5
    assert sum(a.stats.tasks_completed for a in agents) >= 12
    bridge.drain()
    assert wait_until(lambda: all(len(a.outbox) <= 1 for a in agents))
    assert bridge.stats.rejected == {}
    assert all(sum(a.stats.rejected.values()) == 0 for a in agents)


def test_a_replayed_update_is_merged_exactly_once(live):
    # Prepare: record the updates that travel
    broker, service, bridge, add_agents = live
    tap = Tap(broker, device_filter(TopicKind.UPDATE, STUDY))
    add_agents(3)
    assert wait_until(lambda: engine(service).stats.accepted >= 4, timeout=60)
    topic, frame = tap.frames[0]
    task_id = decode_frame(frame, max_bytes=1 << 24)[0].task_id
    accepted = engine(service).stats.accepted
    # Execute: the same frame arrives twice more (QoS-1 duplicate, outbox resend)
    tap.transport.publish(topic, frame)
    tap.transport.publish(topic, frame)
    bridge.drain()
    # Assert: the duplicates were answered but not counted again
    accepted_ids = [t for t, ack in service.studies[STUDY].acks.items() if ack.status != "rejected"]
    assert len(accepted_ids) == len(set(accepted_ids))
    assert task_id in service.studies[STUDY].acks
    assert engine(service).stats.accepted - accepted <= 3  # only new tasks, no replay counted
    assert bridge.stats.rejected == {}


def test_outage_mid_study_updates_delivered_once(live):
    # Prepare
    _, service, bridge, add_agents = live
    agents = add_agents(3)
    victim = agents[0]
    assert wait_until(lambda: victim.stats.tasks_received >= 1, timeout=30)
    # Execute: the victim loses its network for a while, then comes back
    victim.transport.close()
    before = victim.stats.tasks_completed
    assert wait_until(lambda: victim.stats.tasks_completed > before or len(victim.outbox), 30)
    victim.transport.connect()
    assert wait_until(lambda: engine(service).stats.accepted >= 10, timeout=60)
    # Assert: its update reached the coordinator, once
    assert wait_until(lambda: len(victim.outbox) == 0, timeout=20)
    acks = service.studies[STUDY].acks
    assert service.studies[STUDY].submissions >= len(acks)
    assert engine(service).stats.accepted == sum(1 for a in acks.values() if a.status != "rejected")


def test_bad_uplink_messages_are_counted_answered_and_survived(live):
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
        update_sq_norm=0.0,
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
    assert service.studies[STUDY].submissions >= 1
    start = engine(service).stats.accepted
    assert wait_until(lambda: engine(service).stats.accepted >= start + 3, timeout=60)
    assert all(np.isfinite(v).all() for v in engine(service).params.values())
    assert len(agents) == 2
