"""EdgeAgents in secure-aggregation fills over the in-memory broker, with the real
coordinator (StudyService + StudyBridge, SecAggPolicy): the device side of issue 11.

What travels from a device in a secagg study is only the SecAgg steps (advertise,
shares, masked words, unmask response) on its ``secagg`` topic; no plain Update.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest

from fedward.coordinator.mqtt.bridge import StudyBridge
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from fedward.edge.agent import EdgeAgent
from fedward.edge.budget import DeviceBudget
from fedward.edge.dataset import LocalDataset
from fedward.edge.identity import load_or_create_identity
from fedward.edge.secagg import SecAggParticipant
from fedward.edge.secagg_store import SecAggStore
from fedward.edge.settings import AgentSettings
from fedward.privacy.secagg import (
    KeyAdvertisement,
    MaskedInput,
    SecAggConfig,
    SecAggServer,
    SecAggSession,
    ShareBundle,
    UnmaskRequest,
    UnmaskResponse,
    wire,
)
from fedward.protocol.messages import (
    SECAGG_WORDS,
    DeviceClass,
    DpParams,
    EnrolAck,
    ErrorCode,
    ErrorMessage,
    ModelDownload,
    SecAggMessage,
    SecAggPhase,
    Task,
    Update,
    decode_frame,
    encode_frame,
    secagg_body,
    secagg_frame_tensors,
)
from fedward.protocol.topics import TopicKind, device_filter, device_topic, model_topic
from fedward.protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport
from fedward.tinytrain.models import ModelConfig, build_model, get_params
from tests.edge.secagg_helpers import make_params
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


# -- one agent in a hand-driven fill: restart mid-fill ------------------------------------

HAND_STUDY = "s1"
AGENT = "d1"
PEERS = ("p1", "p2", "p3")
HAND_MODEL = ModelConfig(window=128, width=4)
HAND_SUBSET = ("head.bias", "head.weight")


class HandCoordinator:
    """Records the agent's uplink frames; the test relays SecAgg steps by hand."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.transport = InMemoryTransport(broker, client_id="coord", error_policy=ErrorPolicy.LOG)
        self.received: list[tuple[object, dict]] = []
        self._cv = threading.Condition()
        for kind in (TopicKind.ENROL, TopicKind.UPDATE, TopicKind.HEARTBEAT, TopicKind.SECAGG):
            self.transport.subscribe(device_filter(kind, HAND_STUDY), self._on)
        self.transport.connect()

    def _on(self, topic, payload) -> None:
        message, tensors = decode_frame(payload, max_bytes=1 << 24)
        with self._cv:
            self.received.append((message, tensors))
            self._cv.notify_all()

    def steps(self, phase: SecAggPhase) -> list[tuple[SecAggMessage, dict]]:
        with self._cv:
            return [
                (m, t)
                for m, t in self.received
                if isinstance(m, SecAggMessage) and m.phase is phase
            ]

    def wait_step(self, phase: SecAggPhase, n: int = 1, timeout: float = 30.0):
        with self._cv:
            self._cv.wait_for(lambda: len(self.steps(phase)) >= n, timeout)
        found = self.steps(phase)
        kinds = [getattr(m, "phase", m.kind) for m, _ in self.received]
        assert len(found) >= n, f"no {phase.value} from the agent; it sent {kinds[:20]}"
        return found[n - 1]

    def send(self, kind: TopicKind, frame: bytes) -> None:
        self.transport.publish(device_topic(kind, HAND_STUDY, AGENT), frame)

    def send_step(self, task: Task, phase: SecAggPhase, msg: object) -> None:
        header = SecAggMessage(
            study_id=HAND_STUDY,
            device_id=AGENT,
            task_id=task.task_id,
            fill_id=task.secagg.fill_id,
            phase=phase,
        )
        tensors = secagg_frame_tensors(phase, body=wire.encode_message(msg))
        self.send(TopicKind.FILL, encode_frame(header, tensors))


def hand_agent(broker: InMemoryBroker, tmp_path: Path, **overrides) -> EdgeAgent:
    settings = AgentSettings(
        **overrides,
        device_id=AGENT,
        study_id=HAND_STUDY,
        device_class=DeviceClass.WEARABLE,
        memory_bytes=1 << 20,
        data_path=tmp_path / "data.npz",
        state_dir=tmp_path / "state",
        window=HAND_MODEL.window,
        width=HAND_MODEL.width,
        heartbeat_interval_s=0.2,
        poll_interval_s=0.02,
        resend_after_s=60.0,
        model_wait_s=5.0,
    )
    rng = np.random.default_rng(1)  # test data only
    dataset = LocalDataset(
        x=rng.standard_normal((16, 3, HAND_MODEL.window)).astype(np.float32),
        y=rng.integers(0, 4, 16).astype(np.int64),
    )
    return EdgeAgent(
        settings,
        transport=InMemoryTransport(broker, client_id=AGENT, error_policy=ErrorPolicy.LOG),
        identity=load_or_create_identity(settings.state_dir, device_id=AGENT),
        dataset=dataset,
        rng=random.Random(0),
    )


def test_an_agent_restarted_mid_fill_resends_its_masked_words_and_answers_once(tmp_path) -> None:
    # Prepare: a fill of the agent and three in-process peers; the agent trains the head
    broker = InMemoryBroker()
    coordinator = HandCoordinator(broker)
    model_params = get_params(build_model(HAND_MODEL, seed=0))
    shapes = {n: tuple(v.shape) for n, v in model_params.items()}
    params = make_params((AGENT, *PEERS), threshold=3, shapes=shapes, subset=HAND_SUBSET)
    server = SecAggServer(
        config=SecAggConfig.from_plain(params.config),
        session=SecAggSession.from_plain(params.session),
    )
    peers = {
        d: SecAggParticipant(
            params=params,
            task_id=f"task-{d}",
            device_id=d,
            subset_names=HAND_SUBSET,
            model_shapes=shapes,
            store=SecAggStore(tmp_path / d, device_id=d),
        )
        for d in PEERS
    }
    task = Task(
        task_id="t1",
        study_id=HAND_STUDY,
        device_id=AGENT,
        model_version=0,
        subset_id="sub",
        subset_names=HAND_SUBSET,
        local_epochs=1,
        batch_size=8,
        lr=0.05,
        deadline_s=30.0,
        secagg=params,
    )
    agent = hand_agent(broker, tmp_path)
    agent.start()
    coordinator.send(TopicKind.ACK, encode_frame(EnrolAck(accepted=True)))
    agent.wait_enrolled(5)
    coordinator.transport.publish(
        model_topic(HAND_STUDY, 0, "sub"),
        encode_frame(
            ModelDownload(model_version=0, subset_id="sub", names=tuple(model_params)),
            model_params,
        ),
    )
    coordinator.send(TopicKind.TASK, encode_frame(task))

    def body(phase, kind, n=1):
        _, tensors = coordinator.wait_step(phase, n)
        return wire.decode_message(secagg_body(tensors), kind)

    server.receive_advertisement(body(SecAggPhase.ADVERTISE, KeyAdvertisement))
    for p in peers.values():
        server.receive_advertisement(p.advertise())
    roster = server.close_advertisements()
    coordinator.send_step(task, SecAggPhase.ROSTER, roster)
    server.receive_share_bundle(body(SecAggPhase.SHARES, ShareBundle))
    for p in peers.values():
        server.receive_share_bundle(p.on_roster(roster))
    deliveries = server.close_shares()
    coordinator.send_step(task, SecAggPhase.DELIVERY, deliveries[AGENT])
    header, tensors = coordinator.wait_step(SecAggPhase.MASKED_INPUT)
    first_words = np.asarray(tensors[SECAGG_WORDS]).copy()
    # Execute: the agent stops after masking and a new one starts on the same state dir
    agent.stop()
    agent = hand_agent(broker, tmp_path)
    agent.start()
    _, again = coordinator.wait_step(SecAggPhase.MASKED_INPUT, 2)
    # Assert: the same words re-sent from disk, never a second masking
    np.testing.assert_array_equal(np.asarray(again[SECAGG_WORDS]), first_words)
    server.receive_masked_input(
        MaskedInput(
            session_id=server.session.session_id,
            round_index=server.session.round_index,
            device_id=AGENT,
            data=first_words.astype("<u4").tobytes(),
        )
    )
    rng = np.random.default_rng(2)  # test data only
    for d, p in peers.items():
        p.on_delivery(deliveries[d])
        delta = {n: rng.uniform(-0.1, 0.1, shapes[n]).astype(np.float32) for n in HAND_SUBSET}
        server.receive_masked_input(p.mask(delta, energy=0.01))
    request = server.close_masked_inputs()
    coordinator.send_step(task, SecAggPhase.UNMASK_REQUEST, request)
    server.receive_unmask_response(body(SecAggPhase.UNMASK_RESPONSE, UnmaskResponse))
    for p in peers.values():
        server.receive_unmask_response(p.on_unmask(request))
    result = server.finalize()
    assert result.survivors == (AGENT, *PEERS)
    assert result.weight_sum == pytest.approx(4.0, abs=1e-3)  # weight 1: no reference yet
    assert result.count_sums == (4,)
    # a second, different request (the agent named as dropped) is refused, nothing sent
    other = UnmaskRequest(
        request.session_id, request.round_index, survivors=PEERS, dropped=(AGENT,)
    )
    coordinator.send_step(task, SecAggPhase.UNMASK_REQUEST, other)
    assert wait_until(lambda: sum(agent.stats.rejected.values()) == 1)
    assert len(coordinator.steps(SecAggPhase.UNMASK_RESPONSE)) == 1
    assert not any(isinstance(m, Update) for m, _ in coordinator.received)
    agent.stop()


def start_hand_fill(tmp_path: Path, *, dp: DpParams | None = None, **agent_settings):
    """A running agent holding model v0, its fill's server and peers, and the sent task."""
    broker = InMemoryBroker()
    coordinator = HandCoordinator(broker)
    model_params = get_params(build_model(HAND_MODEL, seed=0))
    shapes = {n: tuple(v.shape) for n, v in model_params.items()}
    params = make_params((AGENT, *PEERS), threshold=3, shapes=shapes, subset=HAND_SUBSET)
    server = SecAggServer(
        config=SecAggConfig.from_plain(params.config),
        session=SecAggSession.from_plain(params.session),
    )
    task = Task(
        task_id="t1",
        study_id=HAND_STUDY,
        device_id=AGENT,
        model_version=0,
        subset_id="sub",
        subset_names=HAND_SUBSET,
        local_epochs=1,
        batch_size=8,
        lr=0.05,
        deadline_s=30.0,
        dp=dp,
        secagg=params,
    )
    agent = hand_agent(broker, tmp_path, **agent_settings)
    agent.start()
    coordinator.send(TopicKind.ACK, encode_frame(EnrolAck(accepted=True)))
    agent.wait_enrolled(5)
    coordinator.transport.publish(
        model_topic(HAND_STUDY, 0, "sub"),
        encode_frame(
            ModelDownload(model_version=0, subset_id="sub", names=tuple(model_params)),
            model_params,
        ),
    )
    coordinator.send(TopicKind.TASK, encode_frame(task))
    return agent, coordinator, server, task


DP = DpParams(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5, delta=1e-5, max_steps=4)


def test_a_dp_task_in_a_fill_is_charged_to_the_devices_accountant_before_it_masks(
    tmp_path,
) -> None:
    # Prepare: a device with its own budget; the fill's task trains with DP-SGD
    agent, coordinator, server, task = start_hand_fill(tmp_path, dp=DP, dp_epsilon=50.0)
    try:
        _, tensors = coordinator.wait_step(SecAggPhase.ADVERTISE)
        server.receive_advertisement(wire.decode_message(secagg_body(tensors), KeyAdvertisement))
        # Execute: the agent trains while the fill waits (no roster yet: nothing masked)
        assert wait_until(lambda: agent.stats.tasks_completed == 1, timeout=60)
        # Assert: charged and saved to disk, though nothing but the advertisement left
        assert agent.budget is not None and agent.budget.spent() > 0
        saved = DeviceBudget.load(agent.budget_path, policy=agent.settings.budget_policy())
        assert saved.spent() == pytest.approx(agent.budget.spent())
        assert coordinator.steps(SecAggPhase.MASKED_INPUT) == []
        assert not any(isinstance(m, Update) for m, _ in coordinator.received)
    finally:
        agent.stop()


def test_a_fill_task_the_devices_dp_rules_refuse_is_declined_before_advertising(tmp_path) -> None:
    # Prepare / Execute: a device with a DP budget gets a fill task without DP
    agent, coordinator, _, task = start_hand_fill(tmp_path, dp=None, dp_epsilon=50.0)
    try:
        assert wait_until(lambda: agent.stats.tasks_refused == 1)
        # Assert: declined with DP_REQUIRED on the heartbeat topic; no SecAgg step sent
        refusals = [m for m, _ in coordinator.received if isinstance(m, ErrorMessage)]
        assert refusals and refusals[0].code is ErrorCode.DP_REQUIRED
        assert refusals[0].detail.startswith(task.task_id)
        assert coordinator.steps(SecAggPhase.ADVERTISE) == []
        assert agent.fill(task.secagg.fill_id) is None
    finally:
        agent.stop()


def test_an_agent_restarted_after_a_torn_step_burns_that_fill_and_starts(tmp_path) -> None:
    # Prepare: on the agent's disk, a fill whose MASKED step reached the journal but not
    # the state file (killed in between): nothing of that step was ever released
    model_params = get_params(build_model(HAND_MODEL, seed=0))
    shapes = {n: tuple(v.shape) for n, v in model_params.items()}
    params = make_params((AGENT, *PEERS), threshold=3, shapes=shapes, subset=HAND_SUBSET)
    server = SecAggServer(
        config=SecAggConfig.from_plain(params.config),
        session=SecAggSession.from_plain(params.session),
    )
    stores = {AGENT: SecAggStore(tmp_path / "state" / "secagg", device_id=AGENT)}
    stores.update({d: SecAggStore(tmp_path / d, device_id=d) for d in PEERS})
    members = {
        d: SecAggParticipant(
            params=params,
            task_id=f"task-{d}",
            device_id=d,
            subset_names=HAND_SUBSET,
            model_shapes=shapes,
            store=stores[d],
        )
        for d in (AGENT, *PEERS)
    }
    for p in members.values():
        server.receive_advertisement(p.advertise())
    roster = server.close_advertisements()
    for p in members.values():
        server.receive_share_bundle(p.on_roster(roster))
    deliveries = server.close_shares()
    real_save = stores[AGENT].save_state

    def torn(session_id, state, *, stage):
        if stage == "MASKED":
            raise OSError("killed")
        real_save(session_id, state, stage=stage)

    stores[AGENT].save_state = torn  # type: ignore[method-assign]
    members[AGENT].on_delivery(deliveries[AGENT])
    delta = {n: np.zeros(shapes[n], dtype=np.float32) for n in HAND_SUBSET}
    with pytest.raises(OSError):
        members[AGENT].mask(delta, energy=0.0)
    broker = InMemoryBroker()
    coordinator = HandCoordinator(broker)
    # Execute: the agent starts on that disk
    agent = hand_agent(broker, tmp_path)
    try:
        agent.start()
        coordinator.send(TopicKind.ACK, encode_frame(EnrolAck(accepted=True)))
        agent.wait_enrolled(5)
        # Assert: the fill is burnt (journal ABORTED, secrets gone), nothing re-sent
        journal = SecAggStore(tmp_path / "state" / "secagg", device_id=AGENT).journal
        assert journal.get(server.session.session_id).stage == "ABORTED"
        assert agent.fill(params.fill_id) is None
        assert not [m for m, _ in coordinator.received if isinstance(m, SecAggMessage)]
    finally:
        agent.stop()
