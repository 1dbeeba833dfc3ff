"""A device whose own SecAgg floors refuse the study's fills says so before it
advertises (``SECAGG_REFUSED``): its task fails at once, it goes DECLINED for
the study, and its fill merges without it instead of waiting for its timer.

The real coordinator (StudyService + StudyBridge) and real EdgeAgents over the
in-memory broker; SECAGG_SPEC's cohorts are 4 with threshold 3.
"""

from __future__ import annotations

import json

from fedward.coordinator.engine import DeviceState
from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.edge.secagg import SecAggFloors
from fedward.protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport
from tests.live.live_helpers import make_agent, random_dataset, wait_until
from tests.live.secagg_helpers import SECAGG_SPEC

STUDY = "s-refuse"


def test_a_device_refusing_on_its_floors_is_declined_and_its_fill_goes_on(tmp_path) -> None:
    # Prepare: four agents; dev00 joins no cohort below 10
    broker = InMemoryBroker()
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        data_dir=tmp_path / "coordinator",
        operator_token="secagg-refused-tests-0a9b8c",
    )
    service = StudyService.open(settings, seed=0)
    service.create_study(SECAGG_SPEC, study_id=STUDY)
    service.start(STUDY)
    coord = InMemoryTransport(broker, client_id="coordinator", error_policy=ErrorPolicy.LOG)
    bridge = StudyBridge(service, coord, study_id=STUDY, dispatch_interval_s=0.1)
    bridge.start()
    coord.connect()
    agents = []
    try:
        for i in range(4):
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
            if i == 0:
                agent.secagg_floors = SecAggFloors(min_cohort=10)
            agent.start()
            agents.append(agent)
        # Execute: the first fill forms; dev00 refuses it
        merged = wait_until(lambda: service.status(STUDY).merges >= 1, timeout=60)
        bridge.drain()
        states = {d.device_id: d.state for d in service.list_devices(STUDY)}
        stats = service.secagg_stats(STUDY)
    finally:
        for agent in agents:
            agent.stop()
        bridge.stop()
        service.close()
    entries = [json.loads(x) for x in settings.audit_log_path.read_text().splitlines()]
    # Assert: refused on the wire, declined by the coordinator, and the fill merged
    # with the other three before its ADVERTISE timer (20 s) could have dropped dev00
    assert agents[0].stats.fills_refused >= 1
    assert states["dev00"] is DeviceState.DECLINED
    assert merged and stats["fills"].get("merged", 0) >= 1
    assert stats["dropouts"].get("advertise", 0) == 0
    refusals = [e for e in entries if e["action"] == "task_refused"]
    assert [(e["actor"]["id"], e["details"]["reason"]) for e in refusals] == [
        ("dev00", "secagg_refused")
    ]
