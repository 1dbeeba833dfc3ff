"""EdgeAgents in secure-aggregation fills over the in-memory broker, with the real
coordinator (StudyService + StudyBridge, SecAggPolicy): the device side of issue 11.

What travels from a device in a secagg study is only the SecAgg steps (advertise,
shares, masked words, unmask response) on its ``secagg`` topic; no plain Update.
"""

from __future__ import annotations

import pytest

from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.protocol.messages import SecAggMessage, SecAggPhase, decode_frame
from fedward.protocol.topics import TopicKind, device_filter
from fedward.protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport
from tests.live.live_helpers import make_agent, random_dataset, wait_until
from tests.live.secagg_helpers import SECAGG_SPEC

STUDY = "s-secagg"


class Tap:
    def __init__(self, broker: InMemoryBroker, topic_filter: str) -> None:
        self.frames: list[tuple[str, bytes]] = []
        self.transport = InMemoryTransport(broker, client_id="tap", error_policy=ErrorPolicy.LOG)
        self.transport.subscribe(topic_filter, lambda t, p: self.frames.append((t, p)))
        self.transport.connect()


@pytest.fixture
def live(tmp_path):
    broker = InMemoryBroker()
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{tmp_path / 'coordinator.db'}",
        data_dir=tmp_path / "coordinator",
        operator_token="secagg-agent-tests-5e4d3c2b1a",
    )
    service = StudyService.open(settings, seed=0)
    service.create_study(SECAGG_SPEC, study_id=STUDY)
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
    updates = Tap(broker, device_filter(TopicKind.UPDATE, STUDY))
    steps = Tap(broker, device_filter(TopicKind.SECAGG, STUDY))
    bridge.start()
    coord.connect()
    agents = []

    def add_agents(n: int):
        for i in range(n):
            device = f"dev{i:02d}"
            agent = make_agent(
                transport=InMemoryTransport(broker, client_id=device, error_policy=ErrorPolicy.LOG),
                study_id=STUDY,
                device_id=device,
                state_dir=tmp_path / device,
                spec=SECAGG_SPEC,
                dataset=random_dataset(SECAGG_SPEC, seed=i),
                seed=i,
            )
            agent.start()
            agents.append(agent)
        for agent in agents:
            agent.wait_enrolled(10)
        return agents

    yield service, bridge, add_agents, updates, steps
    for agent in agents:
        agent.stop()
    bridge.stop()
    service.close()


@pytest.mark.slow
def test_agents_complete_fills_and_never_publish_a_plain_update(live) -> None:
    # Prepare
    service, bridge, add_agents, updates, steps = live
    # Execute: eight devices; fills of four (buffer 3 plus expected dropouts)
    agents = add_agents(8)
    merged = wait_until(lambda: service.status(STUDY).merges >= 2, timeout=120)
    bridge.drain()
    # Assert: fills merged; devices sent every SecAgg step and never a plain Update
    status = service.status(STUDY)
    assert merged, (service.secagg_stats(STUDY), [a.stats for a in agents])
    assert status.merges >= 2 and status.model_version >= 2
    assert updates.frames == []
    phases = {decode_frame(raw, max_bytes=1 << 24)[0].phase for _, raw in steps.frames}
    assert phases == {
        SecAggPhase.ADVERTISE,
        SecAggPhase.SHARES,
        SecAggPhase.MASKED_INPUT,
        SecAggPhase.UNMASK_RESPONSE,
    }
    assert all(
        isinstance(decode_frame(raw, max_bytes=1 << 24)[0], SecAggMessage)
        for _, raw in steps.frames
    )
    assert sum(a.stats.secagg_sent["masked_input"] for a in agents) >= 2 * 3
    assert all(sum(a.stats.rejected.values()) == 0 for a in agents), [a.stats for a in agents]
    assert bridge.stats.rejected == {}
