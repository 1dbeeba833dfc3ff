"""The real ``EdgeAgent`` declines a DP task its own budget cannot afford, over the wire.

In-memory transport, real service and bridge. One agent's own budget (epsilon
1.0) is smaller than one task's cost (about 3.2) and smaller than the study's
(8.0): it refuses its first task with ``ErrorMessage(BUDGET_EXHAUSTED)`` on its
heartbeat topic, never trains, and the coordinator marks it EXHAUSTED at once
(well before the task's deadline) and audits TASK_REFUSED with the device as
actor. The other agent's budget is ample: it trains with DP-SGD, keeps its
spend on disk before its update leaves, and its update is accepted.
"""

from __future__ import annotations

import json

from budget_helpers import PRIVACY

from fedward.coordinator.engine import DeviceState
from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.service import ServiceError, StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.coordinator.study_spec import StudySpec
from fedward.edge.agent import EdgeAgent
from fedward.edge.budget import DeviceBudget
from fedward.edge.settings import AgentSettings
from fedward.protocol.messages import ErrorCode
from fedward.protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport
from tests.live.live_helpers import make_agent, random_dataset, wait_until

SPEC = StudySpec(
    name="dp-refusal",
    window=128,
    width=4,
    epochs=1,
    batch_size=8,
    concurrency=2,
    buffer_size=2,
    task_deadline_s=600.0,  # a refusal must not wait for this
    privacy=PRIVACY,
)


def _agent(broker, tmp_path, study_id: str, device_id: str, *, epsilon: float) -> EdgeAgent:
    return make_agent(
        transport=InMemoryTransport(broker, client_id=device_id, error_policy=ErrorPolicy.LOG),
        study_id=study_id,
        device_id=device_id,
        state_dir=tmp_path / device_id,
        spec=SPEC,
        dataset=random_dataset(SPEC, seed=len(device_id)),
        seed=1,
        resend_after_s=AgentSettings.model_fields["resend_after_s"].default,
        dp_epsilon=epsilon,
        dp_delta=PRIVACY.delta,
        dp_max_physical_batch_size=4,
    )


def test_an_agent_over_its_own_budget_refuses_and_is_stopped_at_once(tmp_path) -> None:
    # Prepare
    study_id = "dp-refusal"
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        data_dir=tmp_path / "data",
        operator_token="dp-refusal-9f8e7d6c5b4a",
    )
    service = StudyService.open(settings, seed=0)
    service.create_study(SPEC, study_id=study_id)
    service.start(study_id)
    broker = InMemoryBroker()
    coordinator = InMemoryTransport(broker, client_id="coord", error_policy=ErrorPolicy.LOG)
    bridge = StudyBridge(
        service,
        coordinator,
        study_id=study_id,
        dispatch_interval_s=0.1,
        refuse=lambda exc: ErrorCode.UNAUTHORIZED if isinstance(exc, ServiceError) else None,
        on_reject=service.transport_rejected,
    )
    bridge.start()
    coordinator.connect()
    frugal = _agent(broker, tmp_path, study_id, "frugal", epsilon=1.0)
    ample = _agent(broker, tmp_path, study_id, "ample", epsilon=PRIVACY.epsilon)

    def state(device_id: str) -> DeviceState:
        return next(d.state for d in service.list_devices(study_id) if d.device_id == device_id)

    # Execute
    try:
        frugal.start(wait_enrolled_s=10)
        ample.start(wait_enrolled_s=10)
        refused = wait_until(lambda: state("frugal") is DeviceState.EXHAUSTED, timeout=30)
        trained = wait_until(lambda: service.status(study_id).updates_accepted >= 1, timeout=60)
        bridge.drain()
    finally:
        frugal.stop()
        ample.stop()
        bridge.stop()
        coordinator.close()
        service.close()
    # Assert: the frugal device refused without training or spending
    assert refused and trained
    assert frugal.stats.tasks_refused >= 1 and frugal.stats.updates_published == 0
    assert frugal.budget.spent() == 0.0
    entries = [json.loads(line) for line in settings.audit_log_path.read_text().splitlines()]
    refusals = [e for e in entries if e["action"] == "task_refused"]
    assert refusals and refusals[0]["actor"] == {"kind": "device", "id": "frugal"}
    assert not [e for e in entries if e["action"] == "task_failed"]  # refused, not timed out
    # ... and the ample one trained with DP and kept its spend on disk
    assert ample.stats.updates_published >= 1 and ample.budget.spent() > 0.0
    saved = DeviceBudget.load(ample.budget_path, policy=ample.settings.budget_policy())
    assert saved.spent() > 0.0
