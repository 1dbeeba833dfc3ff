"""Issue 9 item 2: a device with a DP budget refuses a task that carries no DP.

A coordinator (played here by a client of the same broker, as a hostile or
buggy one would be) sends a real ``EdgeAgent`` with a DP budget a task with
``dp = None`` and the model frame it needs. Before the fix the agent trained
without noise and published an update no accountant covered; now it refuses
on its heartbeat topic with ``ErrorCode.DP_REQUIRED`` and sends no update.
The device's owner can allow plain tasks (``allow_plain_tasks``).
"""

from __future__ import annotations

import time

import pytest

from fedward.coordinator.study_spec import StudySpec
from fedward.protocol.messages import (
    ErrorCode,
    ErrorMessage,
    ModelDownload,
    Task,
    Update,
    decode_frame,
    encode_frame,
)
from fedward.protocol.topics import TopicKind, device_topic, model_topic
from fedward.protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport
from fedward.tinytrain.models import build_model, get_params
from tests.live.live_helpers import make_agent, random_dataset, wait_until

SPEC = StudySpec(name="dp-plain", window=64, width=4, epochs=1, batch_size=8)
STUDY, DEVICE = "dp-plain", "dev-plain"


def _run(tmp_path, **agent_settings) -> tuple[list[object], object]:
    broker = InMemoryBroker()
    heard: list[object] = []
    coordinator = InMemoryTransport(broker, client_id="coord", error_policy=ErrorPolicy.LOG)
    for kind in (TopicKind.HEARTBEAT, TopicKind.UPDATE):
        coordinator.subscribe(
            device_topic(kind, STUDY, DEVICE),
            lambda topic, payload: heard.append(decode_frame(payload, max_bytes=1 << 24)[0]),
        )
    coordinator.connect()
    agent = make_agent(
        transport=InMemoryTransport(broker, client_id=DEVICE, error_policy=ErrorPolicy.LOG),
        study_id=STUDY,
        device_id=DEVICE,
        state_dir=tmp_path / DEVICE,
        spec=SPEC,
        dataset=random_dataset(SPEC, seed=3),
        seed=1,
        dp_delta=1e-5,
        **agent_settings,
    )
    agent.start()
    params = get_params(build_model(agent.settings.model_settings(), seed=0))
    names = tuple(params)
    coordinator.publish(
        model_topic(STUDY, 0, "full"),
        encode_frame(ModelDownload(model_version=0, subset_id="full", names=names), params),
    )
    task = Task(
        task_id="t-plain-1",
        study_id=STUDY,
        device_id=DEVICE,
        model_version=0,
        subset_id="full",
        subset_names=names[-2:],
        local_epochs=1,
        batch_size=8,
        lr=0.05,
        deadline_s=60.0,
        dp=None,  # the bypass: no DP parameters at all
    )
    coordinator.publish(device_topic(TopicKind.TASK, STUDY, DEVICE), encode_frame(task))
    return heard, agent


def test_a_device_with_a_dp_budget_refuses_a_task_without_dp(tmp_path):
    # Prepare / Execute
    heard, agent = _run(tmp_path, dp_epsilon=8.0)
    try:
        refused = wait_until(lambda: agent.stats.tasks_refused == 1, timeout=30.0)
        time.sleep(0.3)  # an update would have been published by now
        # Assert
        assert refused
        errors = [m for m in heard if isinstance(m, ErrorMessage)]
        assert [e.code for e in errors] == [ErrorCode.DP_REQUIRED]
        assert errors[0].detail.startswith("t-plain-1 ")
        assert not any(isinstance(m, Update) for m in heard)
        assert agent.stats.tasks_completed == 0
    finally:
        agent.stop()


@pytest.mark.parametrize("settings", [{"dp_epsilon": 8.0, "allow_plain_tasks": True}, {}])
def test_plain_tasks_run_when_the_owner_allows_them_or_the_device_has_no_budget(tmp_path, settings):
    # Prepare / Execute
    heard, agent = _run(tmp_path, **settings)
    try:
        published = wait_until(lambda: any(isinstance(m, Update) for m in heard), timeout=30.0)
        # Assert
        assert published and agent.stats.tasks_refused == 0
    finally:
        agent.stop()
