"""Attacks from outside over the real Mosquitto on 127.0.0.1:1883 (no ACL on it: the
attacker may publish and read every topic, as on a hostile broker). Each attack once
succeeded (issue 10); each must now be refused, counted and audited as anonymous."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import generate_latest
from pydantic import SecretStr

from fedward.coordinator.api.metrics import metrics_registry
from fedward.edge.agent import EdgeAgent, EnrolmentRefused
from fedward.protocol.enrolment import issue_secret
from fedward.protocol.errors import EnrolmentDenied
from fedward.protocol.messages import (
    Ack,
    AckStatus,
    DeviceClass,
    Enrol,
    EnrolTicket,
    ModelDownload,
    Task,
    decode_frame,
    encode_frame,
)
from fedward.protocol.signing import Role, SealContext, open_seal, seal
from fedward.protocol.topics import TopicKind, device_topic, model_topic
from fedward.tinytrain.models import build_model, param_shapes
from tests.wire.update_frames import update_frame
from tests.wire.wire_helpers import Attacker, SignedStudy, wait_until

pytestmark = pytest.mark.mqtt


@pytest.fixture
def study(mqtt_broker, study_id, tmp_path):
    signed = SignedStudy(mqtt_broker, study_id, tmp_path)
    yield signed
    signed.close()


@pytest.fixture
def attacker(mqtt_broker, study_id):
    client = Attacker(*mqtt_broker, client_id=f"attacker-{study_id}")
    yield client
    client.close()


def _inner(payload: bytes):
    return decode_frame(open_seal(payload).frame, max_bytes=1 << 24)


def _anonymous_refusals(study: SignedStudy, reason: str, device: str) -> list[dict]:
    # callers wait for it: the refusal is counted before its audit entry is written
    return [
        r
        for r in study.audit()
        if r["action"] == "device_auth_failed"
        and r["actor"]["kind"] == "anonymous"
        and r["details"].get("wire_reason") == reason
        and r["details"].get("claimed_device_id") == device
    ]


def _denied_in_name_of(study: SignedStudy, device: str) -> list[dict]:
    return [r for r in study.audit() if r["actor"]["id"] == device and r["outcome"] == "denied"]


def _forged_update(study: SignedStudy, task: Task) -> bytes:
    shapes = param_shapes(build_model(study.spec.model_settings(), seed=0))
    tensors = {n: np.full(shapes[n], 5.0, dtype=np.float32) for n in task.subset_names}
    return update_frame(task, tensors, train_loss=0.1)


def _slow(seconds: float):
    return lambda task, size: seconds


def test_task_hijack_by_another_client_is_refused(study, attacker):
    # Prepare: the attacker watches the genuine device's task topic; the device is slow
    victim = "victim"
    attacker.subscribe(device_topic(TopicKind.TASK, study.study_id, victim))
    agent = study.agent(victim, pace=_slow(2.0))
    agent.start(wait_enrolled_s=15)
    seen = attacker.wait_for(lambda s: len(s) >= 1, timeout=15)
    task, _ = _inner(seen[0][1])
    forged = _forged_update(study, task)
    topic = device_topic(TopicKind.UPDATE, study.study_id, victim)
    # Execute: answer the victim's task first, unsigned and signed with the attacker's key
    attacker.publish(topic, forged)
    context = SealContext(Role.DEVICE, study.study_id, victim)
    attacker.publish(
        topic, seal(forged, key=Ed25519PrivateKey.generate(), context=context, counter=10**9)
    )
    # Assert: the genuine update is the one accepted (no duplicate refusal for it)
    assert wait_until(lambda: study.service.status(study.study_id).updates_accepted >= 1, 20)
    accepted = [r for r in study.audit() if r["action"] == "update_accepted"]
    assert accepted[0]["details"]["task_id"] == task.task_id
    assert accepted[0]["actor"]["id"] == victim
    assert "duplicate" not in {k.value for k in study.service.status(study.study_id).rejections}
    assert study.bridge.stats.rejected["unsigned"] >= 1
    assert study.bridge.stats.rejected["bad_signature"] >= 1
    # audited as anonymous, the claimed id a detail, never an entry in the victim's name
    assert wait_until(lambda: _anonymous_refusals(study, "unsigned", victim), 10)
    assert wait_until(lambda: _anonymous_refusals(study, "bad_signature", victim), 10)
    assert _denied_in_name_of(study, victim) == []
    assert study.service.wire_refusals(study.study_id)["bad_signature"] >= 1
    scraped = generate_latest(metrics_registry(lambda: study.service)).decode()
    assert f'fedward_wire_refused_total{{reason="unsigned",study="{study.study_id}"}}' in scraped


def test_mass_fake_enrolment_is_refused_and_rate_limited(study, attacker):
    # Prepare: the genuine device enrols with its operator-issued secret
    agent = study.agent("genuine")
    agent.start(wait_enrolled_s=15)
    fakes = [f"fake-{i}" for i in range(24)]

    def enrol(device: str, key: Ed25519PrivateKey) -> bytes:
        public = key.public_key().public_bytes_raw()
        message = Enrol(
            device_id=device,
            study_id=study.study_id,
            device_class=DeviceClass.WEARABLE,
            memory_bytes=64 << 20,
            public_key=public,
            ticket=EnrolTicket(expires_at=2**40, nonce=os.urandom(16), proof=os.urandom(32)),
        )
        context = SealContext(Role.DEVICE, study.study_id, device)
        return seal(encode_frame(message), key=key, context=context, counter=1)

    # Execute: 24 fake devices with random keys and made-up secrets (proof of key
    # possession is valid: only the operator's secret is missing), one unsigned, and
    # a burst of 12 attempts on one id; and one taking the genuine id with its own key
    for device in fakes:
        attacker.publish(
            device_topic(TopicKind.ENROL, study.study_id, device),
            enrol(device, Ed25519PrivateKey.generate()),
        )
    attacker.publish(
        device_topic(TopicKind.ENROL, study.study_id, "fake-plain"),
        open_seal(enrol("fake-plain", Ed25519PrivateKey.generate())).frame,
    )
    for _ in range(12):
        attacker.publish(
            device_topic(TopicKind.ENROL, study.study_id, "fake-burst"),
            enrol("fake-burst", Ed25519PrivateKey.generate()),
        )
    attacker.publish(
        device_topic(TopicKind.ENROL, study.study_id, "genuine"),
        enrol("genuine", Ed25519PrivateKey.generate()),
    )
    refused = lambda: sum(study.service.wire_refusals(study.study_id).values())  # noqa: E731
    assert wait_until(lambda: refused() >= 24 + 1 + 12 + 1, 20)
    # Assert: nobody but the genuine device is enrolled, every attempt refused and audited
    devices = [d.device_id for d in study.service.list_devices(study.study_id)]
    assert devices == ["genuine"]
    counts = study.service.wire_refusals(study.study_id)
    assert counts["enrolment_denied"] >= 24 and counts["unsigned"] >= 1
    assert counts["enrol_rate_limited"] >= 12 - 3  # a burst of 3 per id, then 1 per 5 s
    assert wait_until(lambda: _anonymous_refusals(study, "enrolment_denied", "fake-0"), 10)
    assert _denied_in_name_of(study, "genuine") == []
    assert not any(
        r["action"] == "device_enrolled"
        and r["outcome"] == "success"
        and r["actor"]["id"] != "genuine"
        for r in study.audit()
        if r["actor"]["kind"] == "device"
    )


def test_forged_task_model_and_ack_frames_are_refused_by_the_agent(study, attacker):
    # Prepare: a genuine agent that trained once (it holds a model) with an update
    # still waiting for its Ack in the outbox
    attacker.subscribe(device_topic(TopicKind.TASK, study.study_id, "dev"))
    agent = study.agent("dev")
    agent.start(wait_enrolled_s=15)
    assert wait_until(lambda: agent.stats.acks.total() >= 1, 20)
    study.service.pause(study.study_id)  # no genuine traffic from now on
    genuine_task = attacker.wait_for(lambda s: len(s) >= 1)[0][1]
    held = {n: v.copy() for n, v in agent.held.params.items()}
    agent.outbox.put("t-pending", b"an update still waiting for its ack")
    rejected_before = agent.stats.rejected.total()
    shapes = param_shapes(build_model(study.spec.model_settings(), seed=0))
    names = tuple(shapes)
    version = agent.held.version + 1
    task = Task(
        task_id="t-forged", study_id=study.study_id, device_id="dev", model_version=version,
        subset_id="full", subset_names=names, local_epochs=1, batch_size=8, lr=0.1,
        deadline_s=60.0,
    )  # fmt: skip
    zeros = {n: np.zeros(shapes[n], np.float32) for n in names}
    model = encode_frame(ModelDownload(model_version=version, subset_id="full", names=names), zeros)
    ack = encode_frame(Ack(task_id="t-pending", status=AckStatus.MERGED))
    fake_key = Ed25519PrivateKey.generate()
    frames = [
        (device_topic(TopicKind.TASK, study.study_id, "dev"), encode_frame(task), "dev"),
        (model_topic(study.study_id, version, "full"), model, ""),
        (device_topic(TopicKind.ACK, study.study_id, "dev"), ack, "dev"),
    ]
    # Execute: every forged frame unsigned and signed by a fake coordinator, and the
    # genuine (signed) task replayed
    for topic, frame, device in frames:
        attacker.publish(topic, frame)
        context = SealContext(Role.COORDINATOR, study.study_id, device)
        attacker.publish(topic, seal(frame, key=fake_key, context=context, counter=2**60))
    attacker.publish(device_topic(TopicKind.TASK, study.study_id, "dev"), genuine_task)
    # Assert: all seven refused; the held model, the outbox and the schedule untouched
    assert wait_until(lambda: agent.stats.rejected.total() - rejected_before >= 7, 10)
    assert agent.stats.rejected["Replayed"] >= 1
    assert agent.stats.rejected["Unsigned"] >= 3 and agent.stats.rejected["BadSignature"] >= 3
    assert "t-pending" in agent.outbox
    assert "t-forged" not in agent._seen and version not in agent.held.frames
    assert all(np.array_equal(agent.held.params[n], held[n]) for n in held)


def test_replayed_update_is_refused_and_audited(study, attacker):
    # Prepare: the attacker records the genuine device's signed update
    attacker.subscribe(device_topic(TopicKind.UPDATE, study.study_id, "dev"))
    agent = study.agent("dev")
    agent.start(wait_enrolled_s=15)
    captured = attacker.wait_for(lambda s: len(s) >= 1, timeout=20)[0][1]
    assert wait_until(lambda: study.service.status(study.study_id).updates_accepted >= 1, 20)
    # Execute: replay it
    attacker.publish(device_topic(TopicKind.UPDATE, study.study_id, "dev"), captured)
    # Assert: refused as a replay, counted, audited as anonymous
    assert wait_until(lambda: study.bridge.stats.rejected["replayed"] >= 1, 10)
    assert wait_until(lambda: _anonymous_refusals(study, "replayed", "dev"), 10)
    assert study.service.wire_refusals(study.study_id)["replayed"] >= 1


def test_revoked_agent_stops_with_the_coordinators_reason(study):
    # Prepare
    agent = study.agent("dev")
    agent.start(wait_enrolled_s=15)
    # Execute: the operator revokes the device
    study.service.revoke(study.study_id, "dev")
    # Assert: the agent hears it (signed), stops, and sends nothing more
    assert wait_until(lambda: agent.refused is not None, 15)
    assert "revoked" in agent.refused
    beats = agent.stats.heartbeats
    assert not wait_until(lambda: agent.stats.heartbeats > beats, 2.5)
    assert study.bridge.stats.rejected["heartbeat_refused"] >= 1


def test_agent_without_a_valid_secret_is_refused_and_stops(study):
    # Prepare: a secret minted with another master key (not this coordinator's operator)
    made_up = issue_secret(
        os.urandom(32), study_id=study.study_id, device_id="intruder", expires_at=2**40
    ).text()
    agent = study.agent("intruder", secret=False)
    agent = EdgeAgent(
        agent.settings.model_copy(update={"enrolment_secret": SecretStr(made_up)}),
        transport=agent.transport,
        identity=agent.identity,
        dataset=agent.dataset,
        rng=agent.rng,
    )
    study.agents[-1] = agent
    # Execute / Assert: refused with a clear reason, not enrolled, retrying no more
    with pytest.raises(EnrolmentRefused, match="no valid enrolment secret"):
        agent.start(wait_enrolled_s=15)
    assert [d.device_id for d in study.service.list_devices(study.study_id)] == []
    assert wait_until(lambda: _anonymous_refusals(study, "enrolment_denied", "intruder"), 10)


def test_secret_for_another_device_is_refused_before_anything_is_sent(study):
    # Prepare
    other = study.service.issue_enrolment_secret(study.study_id, "other")
    agent = study.agent("dev", secret=False)
    # Execute / Assert
    with pytest.raises(EnrolmentDenied, match="for device other"):
        EdgeAgent(
            agent.settings.model_copy(update={"enrolment_secret": SecretStr(other)}),
            transport=agent.transport,
            identity=agent.identity,
            dataset=agent.dataset,
            rng=agent.rng,
        )


def test_restarted_agent_frees_its_lost_task_at_once(study):
    # Prepare: the agent takes a task and is stopped before delivering it (slow device)
    agent = study.agent("dev", pace=_slow(60.0))
    agent.start(wait_enrolled_s=15)
    assert wait_until(lambda: agent.stats.tasks_received >= 1, 15)
    agent.stop()
    study.agents.remove(agent)
    failed = study.service.status(study.study_id).tasks_failed
    # Execute: the same device restarts (its key is pinned: no secret needed)
    again = study.agent("dev", secret=False)
    again.start(wait_enrolled_s=15)
    # Assert: the lost task is freed within seconds, long before its 30 s deadline
    assert wait_until(lambda: study.service.status(study.study_id).tasks_failed > failed, 12)


def test_bad_chunks_are_counted_and_audited_as_anonymous(study, attacker):
    # Prepare: chunks that fail their CRC, and one announcing more than any message may hold
    from fedward.protocol.chunking import split_message

    good = split_message(os.urandom(4000), max_chunk_bytes=1000)
    corrupt = bytearray(good[1])
    corrupt[-1] ^= 0xFF
    huge = split_message(b"x" * (17 << 20), max_chunk_bytes=2000)[0]
    topic = device_topic(TopicKind.UPDATE, study.study_id, "someone")
    # Execute
    attacker.publish(topic, bytes(corrupt))
    attacker.publish(topic, huge)
    # Assert
    assert wait_until(lambda: study.bridge.stats.rejected["chunk"] >= 2, 10)
    assert wait_until(lambda: len(_anonymous_refusals(study, "chunk", "someone")) >= 2, 10)
    assert study.service.wire_refusals(study.study_id)["chunk"] >= 2
